//! Where sessions are replicated ([`Replication`]): the addresses to
//! receive on and the peers to send to (unicast or multicast, the
//! multicast options read as uWSGI reads them), the cluster key and its
//! policy (plain datagrams accepted, clock skew, warm start and repair),
//! and the Redis servers (see [`super::redis`]).

use std::net::{Ipv4Addr, SocketAddr};

use super::cache::{option_name, CacheDef};
use super::redis::{redis_server, redis_tls, RedisServer};
use super::values::{err, flag, positive, ConfigError};
use super::{addr, RawOptions, RedisTls};

/// Default `ssl-sessions-max-skew`, seconds.
pub const DEFAULT_MAX_SKEW: u64 = 30;

/// How multicast datagrams are sent and received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multicast {
    /// Interface (its IPv4 address) to send from and join on; `None`: the
    /// kernel's choice (the default route when sending).
    pub interface: Option<Ipv4Addr>,
    /// IP_MULTICAST_TTL.
    pub ttl: u32,
    /// IP_MULTICAST_LOOP: deliver to receivers on this host too.
    pub loopback: bool,
}

impl Default for Multicast {
    fn default() -> Self {
        Multicast {
            interface: None,
            ttl: 1,
            loopback: true,
        }
    }
}

/// Where sessions are replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// Addresses to receive peers' sessions on.
    pub servers: Vec<SocketAddr>,
    /// Peers to send new sessions to.
    pub nodes: Vec<SocketAddr>,
    pub multicast: Multicast,
    /// The key file (and the option naming it): replication is sealed.
    pub key_file: Option<(String, String)>,
    /// With a key, still accept plain datagrams (a migration).
    pub accept_plain: bool,
    /// Clock skew tolerated on sealed datagrams, seconds.
    pub max_skew: u64,
    /// Warm start and repair with the unicast peers.
    pub peer_sync: bool,
    /// Redis servers carrying replication and holding the sessions.
    pub redis: Vec<RedisServer>,
    /// Seed nodes of one Redis Cluster doing the same.
    pub redis_cluster: Vec<RedisServer>,
    /// The CA and client certificate of `rediss://` servers, read at
    /// startup.
    pub redis_tls: RedisTls,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            servers: Vec::new(),
            nodes: Vec::new(),
            multicast: Multicast::default(),
            key_file: None,
            accept_plain: false,
            max_skew: DEFAULT_MAX_SKEW,
            peer_sync: true,
            redis: Vec::new(),
            redis_cluster: Vec::new(),
            redis_tls: RedisTls::default(),
        }
    }
}

impl Replication {
    pub fn is_enabled(&self) -> bool {
        !self.servers.is_empty() || !self.nodes.is_empty() || !self.redis.is_empty() || !self.redis_cluster.is_empty()
    }
}

pub(super) fn replication(raw: &RawOptions, cache: &CacheDef) -> Result<Replication, ConfigError> {
    let server_option = option_name(cache, "cache-udp-server", "udp");
    let node_option = option_name(cache, "cache-udp-node", "node");
    let servers = cache
        .udp_servers
        .iter()
        .map(|v| addr::parse(&server_option, v, true))
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = cache
        .nodes
        .iter()
        .map(|v| addr::parse(&node_option, v, false))
        .collect::<Result<Vec<_>, _>>()?;
    let mut multicast = Multicast::default();
    if let Some(v) = raw.multicast_if.as_deref().map(str::trim) {
        multicast.interface = Some(v.parse::<Ipv4Addr>().map_err(|_| {
            ConfigError(format!(
                "ssl-sessions-multicast-if = {v}: not the IPv4 address of an interface"
            ))
        })?);
    }
    if let Some(v) = &raw.multicast_ttl {
        // 0 is a valid TTL (this host only), as uWSGI accepts it.
        multicast.ttl = match v.trim() {
            "0" => 0,
            _ => positive("multicast-ttl", v, 255)? as u32,
        };
    }
    if let Some(v) = &raw.multicast_loop {
        // uWSGI reads a number here (`uwsgi_opt_set_int`): a word would
        // mean 0 to it, whatever it says.
        multicast.loopback = match v.trim().parse::<i64>() {
            Ok(n) => n != 0,
            Err(_) => return err(format!("multicast-loop = {v}: uWSGI reads a number here: 0 or 1")),
        };
    }
    let key_option = option_name(cache, "cache-udp-key", "udp_key");
    let key_file = cache
        .key_file
        .as_ref()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(|v| (key_option, v));
    let accept_plain = match &raw.accept_plain {
        Some(v) => flag("ssl-sessions-accept-plain", v)?,
        None => false,
    };
    let max_skew = match &raw.max_skew {
        Some(v) => positive("ssl-sessions-max-skew", v, 86_400)?,
        None => DEFAULT_MAX_SKEW,
    };
    let peer_sync = match &raw.peer_sync {
        Some(v) => flag("ssl-sessions-peer-sync", v)?,
        None => true,
    };
    let redis_servers = |values: &[String], option: String| {
        values
            .iter()
            .map(|v| redis_server(&option, v))
            .collect::<Result<Vec<_>, _>>()
    };
    let redis = redis_servers(&cache.redis, option_name(cache, "ssl-sessions-redis", "redis"))?;
    let redis_cluster = redis_servers(
        &cache.redis_cluster,
        option_name(cache, "ssl-sessions-redis-cluster", "redis_cluster"),
    )?;
    let redis_tls = redis_tls(cache, &redis, &redis_cluster)?;
    Ok(Replication {
        servers,
        nodes,
        multicast,
        key_file,
        accept_plain,
        max_skew,
        peer_sync,
        redis,
        redis_cluster,
        redis_tls,
    })
}
