//! Redis as a replication transport and the store of record, never on the
//! handshake path.
//!
//! - A router process hands each new session (a plain frame, the same as a
//!   UDP datagram's) to its master over a local datagram socket pair made
//!   before fork ([`HandOff`]): non-blocking; a full queue drops and counts.
//! - In the master, the [`Writer`] thread seals the frame (with a cluster
//!   key), `SET`s it under the session's name ([`Names`]) with the session's
//!   expiry (`PXAT`), and `PUBLISH`es it on the cache's channel, pipelined.
//!   While Redis is unreachable it keeps a bounded backlog and reconnects
//!   with back-off; sessions made meanwhile are written and published when
//!   it is back.
//! - Every master subscribes ([`RedisInbound`]) and applies what others
//!   publish like any datagram (sealed: authenticated, replay window). After
//!   each (re)connection it first reads the cache's sessions of record back
//!   (`SCAN` + `GET`, paced): a starting node, a node back from an outage
//!   or a whole fleet restarted gets every live session. Records are
//!   authenticated and must sit under their own session's name.
//!
//! Lookups stay in local shared memory: a Redis that is slow, down or back
//! changes nothing for handshakes.
//!
//! Here: [`links`] (what the settings ask for) and the startup summary;
//! `connect.rs` (targets, connections, back-off), `writer.rs` (the hand-off
//! and the writer), `inbound.rs` (the subscriber and the read-back).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use super::names::Names;
use super::transport::Links;
use crate::config::{self, RedisTls, Replication};

mod connect;
mod inbound;
mod writer;

use connect::{client, Target, TlsHints, IO_TIMEOUT};
pub use inbound::RedisInbound;
use writer::Link;
pub use writer::{HandOff, Writer};

/// Bytes of socket buffer for the hand-off from router processes.
const HANDOFF_BUFFER: usize = 4 << 20;

/// The Redis links the settings ask for: a hand-off from the router
/// processes, a writer in the master, a subscriber per server.
pub fn links(settings: &Replication, cache: &str, names: Arc<Names>) -> Result<Links, String> {
    let mut links = Links::default();
    let mut targets = Vec::new();
    for server in &settings.redis {
        let client = client(server, &settings.redis_tls)
            .map_err(|e| format!("cannot use {} for cache \"{cache}\": {e}", server.shown))?;
        targets.push(Target::Server {
            server: server.clone(),
            client,
            hints: TlsHints::new(server, &settings.redis_tls),
        });
    }
    if !settings.redis_cluster.is_empty() {
        let shown: Vec<&str> = settings.redis_cluster.iter().map(|s| s.shown.as_str()).collect();
        let shown = format!("the Redis Cluster of {}", shown.join(", "));
        let fail = |e: redis::RedisError| format!("cannot use {shown} for cache \"{cache}\": {e}");
        let cluster = redis::cluster::ClusterClient::builder(settings.redis_cluster.iter().map(|s| s.url.as_str()))
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            .build()
            .map_err(fail)?;
        let seeds = settings
            .redis_cluster
            .iter()
            // No CA or client certificate: they are refused with a
            // `rediss://` cluster (config), and plain seeds need none.
            .map(|s| client(s, &RedisTls::default()).map(|c| (s.url.clone(), c)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        targets.push(Target::Cluster { shown, cluster, seeds });
    }
    if targets.is_empty() {
        return Ok(links);
    }
    let (routers, master) =
        UnixDatagram::pair().map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    routers
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    let _ = socket2::SockRef::from(&routers).set_send_buffer_size(HANDOFF_BUFFER);
    let _ = socket2::SockRef::from(&master).set_recv_buffer_size(HANDOFF_BUFFER);
    // Sessions cross it in clear: not for application processes.
    for end in [&routers, &master] {
        crate::shm::scrub::register_fd(std::os::fd::AsRawFd::as_raw_fd(end));
    }
    let shown: Vec<&str> = targets.iter().map(Target::shown).collect();
    links.transports.push(Box::new(HandOff {
        socket: routers,
        shown: shown.join(", "),
    }));
    for target in &targets {
        links
            .inbounds
            .push(Box::new(RedisInbound::new(target.clone(), Arc::clone(&names))));
    }
    links.pumps.push(Box::new(Writer {
        socket: master,
        links: targets.into_iter().map(Link::new).collect(),
        names,
    }));
    Ok(links)
}

/// How the startup summary names what verifies the `rediss://` servers
/// (nothing when none is).
pub fn tls_summary(settings: &Replication) -> Option<String> {
    let tls = &settings.redis_tls;
    let verified: Vec<String> = settings
        .redis
        .iter()
        .chain(&settings.redis_cluster)
        .filter(|s| config::is_tls(s))
        .map(|s| {
            let by = if config::is_insecure(s) {
                "NOT verified (#insecure)".to_string()
            } else if let (Some(ca), false) = (&tls.ca, settings.redis_cluster.contains(s)) {
                format!("verified with the CA of {}", ca.shown())
            } else {
                "verified with the system's trust store".to_string()
            };
            format!("{} {by}", s.shown)
        })
        .collect();
    if verified.is_empty() {
        return None;
    }
    let mut out = format!("Redis TLS: {}", verified.join(", "));
    if let Some((cert, _)) = &tls.client {
        out += &format!(", client certificate {}", cert.shown());
    }
    Some(out)
}
