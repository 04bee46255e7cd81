//! Connecting to Redis: the client of a server (TCP_NODELAY; for
//! `rediss://` the CA and client certificate given), a [`Target`] (a server,
//! or a Redis Cluster through its seeds), connections that give up after
//! [`IO_TIMEOUT`], a [`Retry`] back-off that logs once per outage, and what
//! to look at when a `rediss://` server refuses the TLS handshake.

use std::time::{Duration, Instant};

use crate::config::{self, RedisServer, RedisTls};
use crate::replication::counters::ReplicationCounters;

/// Redis commands give up after this (the thread never hangs).
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const FIRST_RETRY: Duration = Duration::from_millis(100);
pub(super) const LAST_RETRY: Duration = Duration::from_secs(5);

/// A client for one server. TCP_NODELAY: a session published is a small
/// write that must not wait for the previous one's ACK. A `rediss://`
/// server is verified with the CA given (else the system's trust store)
/// and shown the client certificate given.
pub(super) fn client(server: &RedisServer, tls: &RedisTls) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(server.url.as_str())?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if !config::is_tls(server) || !tls.is_set() {
        return redis::Client::open(info);
    }
    let certificates = redis::TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.pem.clone(),
            client_key: key.pem.clone(),
        }),
        root_cert: tls.ca.as_ref().map(|ca| ca.pem.clone()),
    };
    redis::Client::build_with_tls(info, certificates)
}

/// Where a cache's sessions go: a Redis server, or a Redis Cluster.
#[derive(Clone)]
pub(super) enum Target {
    Server {
        server: RedisServer,
        client: redis::Client,
        hints: TlsHints,
    },
    Cluster {
        shown: String,
        cluster: redis::cluster::ClusterClient,
        /// The seed nodes given, by URL (credentials and scheme for the
        /// other nodes too).
        seeds: Vec<(String, redis::Client)>,
    },
}

impl Target {
    pub(super) fn shown(&self) -> &str {
        match self {
            Target::Server { server, .. } => &server.shown,
            Target::Cluster { shown, .. } => shown,
        }
    }

    /// A connection error as logged: with what to look at when a
    /// `rediss://` server refused the TLS handshake.
    pub(super) fn explain(&self, error: &redis::RedisError) -> String {
        match self {
            Target::Server { hints, .. } => hints.explain(error),
            Target::Cluster { .. } => error.to_string(),
        }
    }

    /// A connection to one node: the server, or the first seed that
    /// answers (a cluster delivers every PUBLISH to every node's
    /// subscribers).
    pub(super) fn any_node(&self) -> redis::RedisResult<redis::Connection> {
        match self {
            Target::Server { client, .. } => connect(client),
            Target::Cluster { seeds, .. } => {
                let mut last = None;
                for (_, seed) in seeds {
                    match connect(seed) {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("at least one seed"))
            }
        }
    }

    /// Connections to every node holding sessions: the server, or each
    /// master of the cluster (from `CLUSTER NODES`).
    pub(super) fn holders(&self) -> redis::RedisResult<Vec<redis::Connection>> {
        let Target::Cluster { seeds, .. } = self else {
            return Ok(vec![self.any_node()?]);
        };
        let mut any = self.any_node()?;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut any)?;
        let template = &seeds[0].0;
        let mut out = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let address = address.split(['@', ',']).next().unwrap_or_default();
            let url = with_address(template, address);
            out.push(connect(&redis::Client::open(url.as_str())?)?);
        }
        Ok(out)
    }
}

/// What to look at when a `rediss://` server refuses the TLS handshake:
/// its certificate not verified here, or this client's not accepted there
/// (in TLS 1.3 a server that verifies clients refuses after the client's
/// handshake is done: the first command then meets a TLS alert or a reset
/// connection). Only connection attempts are explained so.
#[derive(Clone, Default)]
pub(super) struct TlsHints {
    verify: Option<String>,
    auth: Option<String>,
}

impl TlsHints {
    pub(super) fn new(server: &RedisServer, tls: &RedisTls) -> TlsHints {
        if !config::is_tls(server) || config::is_insecure(server) {
            return TlsHints::default();
        }
        let verify = match &tls.ca {
            Some(ca) => format!(
                "the server's certificate is not signed by the CA of {}, or does not name this host",
                ca.shown()
            ),
            None => format!(
                "the server's certificate is not signed by a CA the system trusts, or does not name this host: \
                 name its CA with {}",
                tls.ca_option
            ),
        };
        let auth = match &tls.client {
            Some((cert, _)) => format!(
                "a server that verifies clients (tls-auth-clients) refuses the certificate of {}",
                cert.shown()
            ),
            None => format!(
                "a server that verifies clients (tls-auth-clients) refuses a client without a certificate: give \
                 one with {}",
                tls.cert_option
            ),
        };
        TlsHints {
            verify: Some(verify),
            auth: Some(auth),
        }
    }

    fn explain(&self, error: &redis::RedisError) -> String {
        let text = error.to_string();
        let hint = if text.contains("certificate verify failed") {
            self.verify.as_deref()
        } else if ["alert", "reset by peer", "Broken pipe", "end of file", "EOF"]
            .iter()
            .any(|w| text.contains(w))
        {
            self.auth.as_deref()
        } else {
            None
        };
        match hint {
            Some(hint) => format!("{text} ({hint})"),
            None => text,
        }
    }
}

/// `url` (a seed's) pointing at `address` instead: same scheme and
/// credentials.
fn with_address(url: &str, address: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let auth = rest.rfind('@').map_or("", |at| &rest[..=at]);
    format!("{}{auth}{address}", &url[..scheme_end])
}

/// Back-off between connection attempts, and whether one was ever made.
pub(super) struct Retry {
    next: Instant,
    wait: Duration,
    connected_once: bool,
    /// Whether the last failure was logged (once per outage).
    logged: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            next: Instant::now(),
            wait: FIRST_RETRY,
            connected_once: false,
            logged: false,
        }
    }
}

impl Retry {
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    pub(super) fn failed(
        &mut self,
        what: &str,
        shown: &str,
        error: &dyn std::fmt::Display,
        counters: &ReplicationCounters,
    ) {
        ReplicationCounters::bump(&counters.redis_errors);
        if !self.logged {
            log::error!("{what} {shown}: {error}; retrying, handshakes do not wait for it");
            self.logged = true;
        }
        self.next = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(LAST_RETRY);
    }

    pub(super) fn connected(&mut self, what: &str, shown: &str, counters: &ReplicationCounters) {
        if self.connected_once {
            ReplicationCounters::bump(&counters.redis_reconnects);
            log::info!("{what} {shown} again");
        }
        self.connected_once = true;
        self.logged = false;
        self.wait = FIRST_RETRY;
    }
}

pub(super) fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_keep_the_seed_scheme_and_credentials() {
        assert_eq!(
            with_address("redis://127.0.0.1:7000", "10.0.0.2:7001"),
            "redis://10.0.0.2:7001"
        );
        assert_eq!(
            with_address("rediss://user:p@ss@seed:7000/0", "10.0.0.2:7001"),
            "rediss://user:p@ss@10.0.0.2:7001"
        );
    }
}
