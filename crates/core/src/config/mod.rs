//! Typed settings from the raw option strings uWSGI collected.
//!
//! Everything here is plain Rust: the host layer gathers the strings (from
//! our own options and from `uwsgi.exported_opts`), this module turns them
//! into [`Settings`] or one [`ConfigError`] that names the offending option.

use std::net::{Ipv4Addr, SocketAddr};

use crate::store;

pub mod addr;
pub mod options;
pub mod redis_tls;
mod values;

pub use options::RawOptions;
pub use redis_tls::{PemFile, RedisTls};
pub use values::{boolean, flag, parse_kvlist, positive, uwsgi_true, ConfigError};
use values::{err, means_default, split_list};

/// Default `ssl-sessions-timeout`, seconds (as stock uWSGI).
pub const DEFAULT_TIMEOUT: u32 = 300;
/// Defaults of a stock uWSGI cache.
pub const DEFAULT_KEYSIZE: u32 = 2048;
pub const DEFAULT_BLOCKSIZE: u32 = 65535;
/// A TLS session id is up to 32 bytes (SSL_MAX_SSL_SESSION_ID_LENGTH).
pub const SESSION_ID_MAX: u32 = 32;
/// Below this, most DER sessions do not fit and are not cached.
pub const SMALL_BLOCKSIZE: u32 = 1024;

/// Where the session cache was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOrigin {
    /// `cache = N` (+ `cache-blocksize`, `cache-udp-*`).
    Default,
    /// The `cache2` line at this position among the `cache2` lines.
    Cache2 { index: usize },
}

/// The cache that becomes the session store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDef {
    /// As shown in the stats server (`default` for the default cache).
    pub name: String,
    pub origin: CacheOrigin,
    pub items: u64,
    pub keysize: u32,
    pub blocksize: u32,
    /// Peers to send updates to (`cache-udp-node`, `node=`/`nodes=`).
    pub nodes: Vec<String>,
    /// Addresses to receive updates on (`cache-udp-server`, `udp=`...).
    pub udp_servers: Vec<String>,
    /// Key file sealing replication (`cache-udp-key`, `udp_key=`).
    pub key_file: Option<String>,
    /// Redis servers carrying replication (`ssl-sessions-redis`, `redis=`).
    pub redis: Vec<String>,
    /// Seed nodes of a Redis Cluster (`ssl-sessions-redis-cluster`,
    /// `redis_cluster=`).
    pub redis_cluster: Vec<String>,
    /// CA file verifying `rediss://` servers (`ssl-sessions-redis-ca`,
    /// `redis_ca=`).
    pub redis_ca: Option<String>,
    /// Client certificate and key for `rediss://` (`ssl-sessions-redis-cert`
    /// and `-key`, `redis_cert=` and `redis_key=`).
    pub redis_cert: Option<String>,
    pub redis_key: Option<String>,
    /// File the store lives in (`cache-store`, `store=`), and the option
    /// that named it: the cache survives a stop and start.
    pub store: Option<(String, String)>,
    /// Seconds between write-backs of that file (`cache-store-sync`,
    /// `store_sync=`); `None`: at each reload and stop only.
    pub store_sync: Option<u64>,
    /// Stock keys given that mean nothing for a session store.
    pub ignored_keys: Vec<String>,
}

/// Default and largest `ssl-sessions-tls13-tickets`.
pub const DEFAULT_TLS13_TICKETS: u8 = 2;
pub const MAX_TLS13_TICKETS: u8 = 8;

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

/// A Redis server, as configured (`redis://` or `rediss://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisServer {
    /// The URL as given (it may hold a password: never logged whole).
    pub url: String,
    /// `host:port`, for logs.
    pub shown: String,
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

/// Everything the plugin needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cache: CacheDef,
    /// Session lifetime, seconds.
    pub timeout: u32,
    /// Session id context for the HTTPS router and https-socket contexts.
    pub https_session_context: Option<String>,
    /// Session id context for the SSL router contexts.
    pub sslrouter_session_context: Option<String>,
    pub replication: Replication,
    /// TLS 1.3 tickets (hence stored sessions) per full handshake.
    pub tls13_tickets: u8,
    /// Push the ACK of the client's Finished on resumed TLS 1.2 handshakes.
    pub quickack: bool,
    /// Log every session event (uWSGI's `ssl-verbose`).
    pub verbose: bool,
    /// Non-fatal remarks to log once at startup.
    pub warnings: Vec<String>,
}

/// Keys a stock uWSGI cache2 accepts, by what they mean here.
const KEYS_USED: &[&str] = &[
    "name",
    "max_items",
    "maxitems",
    "items",
    "blocksize",
    "keysize",
    "key_size",
    "node",
    "nodes",
    "udp",
    "udp_servers",
    "udp_server",
    "udpservers",
    "udpserver",
    "udp_key",
    "udpkey",
    "redis",
    "redis_cluster",
    "redis_ca",
    "redis_cert",
    "redis_key",
    "store",
    "store_sync",
    "storesync",
    // The session store always evicts the least recently used entry.
    "purge_lru",
    "lru",
];
const KEYS_IGNORED: &[&str] = &[
    "blocks",
    "hash",
    "hashsize",
    "hash_size",
    "store_delete",
    "storedelete",
    "sync",
    "bitmap",
    "lastmod",
    "math_initial",
    "ignore_full",
    "lazy_expire",
    "lazy",
    "sweep_on_full",
    "clear_on_full",
    "no_expire",
];

fn cache2_name(value: &str) -> Option<String> {
    parse_kvlist(value)
        .into_iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v)
}

fn parse_cache2(index: usize, value: &str) -> Result<CacheDef, ConfigError> {
    let kv = parse_kvlist(value);
    let get = |names: &[&str]| {
        kv.iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let name = get(&["name"]).unwrap_or_default();
    let what = |key: &str| format!("cache2 \"{name}\" {key}");
    let items = match get(&["max_items", "maxitems", "items"]) {
        // Bounded with the other sizes (see store_size).
        Some(v) => positive(&what("items"), &v, u64::MAX)?,
        None => {
            return err(format!(
                "cache2 \"{name}\" needs items=N (the number of sessions to keep)"
            ))
        }
    };
    let keysize = match get(&["keysize", "key_size"]) {
        Some(v) => positive(&what("keysize"), &v, u16::MAX as u64 - 1)? as u32,
        None => DEFAULT_KEYSIZE,
    };
    let blocksize = match get(&["blocksize"]) {
        Some(v) => positive(&what("blocksize"), &v, u32::MAX as u64 / 2)? as u32,
        None => DEFAULT_BLOCKSIZE,
    };
    let mut nodes = Vec::new();
    let mut udp_servers = Vec::new();
    let mut redis = Vec::new();
    let mut redis_cluster = Vec::new();
    let key_file = get(&["udp_key", "udpkey"]);
    let store = get(&["store"])
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(|v| (what("store"), v));
    let store_sync = match get(&["store_sync", "storesync"]) {
        Some(v) => Some(positive(&what("store_sync"), &v, 86_400)?),
        None => None,
    };
    let mut ignored_keys = Vec::new();
    for (k, v) in &kv {
        match k.as_str() {
            "node" | "nodes" => nodes.extend(split_list(v)),
            "udp" | "udp_servers" | "udp_server" | "udpservers" | "udpserver" => udp_servers.extend(split_list(v)),
            "redis" => redis.extend(split_list(v)),
            "redis_cluster" => redis_cluster.extend(split_list(v)),
            k if KEYS_USED.contains(&k) => {}
            k if KEYS_IGNORED.contains(&k) => ignored_keys.push(k.to_string()),
            k => ignored_keys.push(format!("{k} (unknown)")),
        }
    }
    Ok(CacheDef {
        name,
        origin: CacheOrigin::Cache2 { index },
        items,
        keysize,
        blocksize,
        nodes,
        udp_servers,
        key_file,
        redis,
        redis_cluster,
        redis_ca: get(&["redis_ca"]),
        redis_cert: get(&["redis_cert"]),
        redis_key: get(&["redis_key"]),
        store,
        store_sync,
        ignored_keys,
    })
}

fn default_cache(raw: &RawOptions, items: &str) -> Result<CacheDef, ConfigError> {
    let items = positive("cache", items, u64::MAX)?;
    let blocksize = match &raw.cache_blocksize {
        Some(v) => positive("cache-blocksize", v, u32::MAX as u64 / 2)? as u32,
        None => DEFAULT_BLOCKSIZE,
    };
    Ok(CacheDef {
        name: "default".into(),
        origin: CacheOrigin::Default,
        items,
        keysize: DEFAULT_KEYSIZE,
        blocksize,
        nodes: raw.cache_udp_node.clone(),
        udp_servers: raw.cache_udp_server.clone(),
        key_file: raw.cache_udp_key.clone(),
        redis: raw.redis.clone(),
        redis_cluster: raw.redis_cluster.clone(),
        redis_ca: raw.redis_ca.clone(),
        redis_cert: raw.redis_cert.clone(),
        redis_key: raw.redis_key.clone(),
        store: raw
            .cache_store
            .as_ref()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| ("cache-store".to_string(), v)),
        store_sync: match &raw.cache_store_sync {
            Some(v) => Some(positive("cache-store-sync", v, 86_400)?),
            None => None,
        },
        ignored_keys: Vec::new(),
    })
}

/// Longest session id context OpenSSL takes (SSL_MAX_SID_CTX_LENGTH).
pub const MAX_SESSION_CONTEXT: usize = 32;

fn session_context(option: &str, value: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(v) = value.as_ref().map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if v.len() > MAX_SESSION_CONTEXT {
        return err(format!(
            "{option} = {v} is {} bytes long; OpenSSL takes at most {MAX_SESSION_CONTEXT}",
            v.len()
        ));
    }
    Ok(Some(v.to_string()))
}

/// How errors name a setting of `cache`: the option of the default cache,
/// or the key of its `cache2` line.
fn option_name(cache: &CacheDef, default_option: &str, cache2_key: &str) -> String {
    match cache.origin {
        CacheOrigin::Default => default_option.to_string(),
        CacheOrigin::Cache2 { .. } => format!("cache2 \"{}\" {cache2_key}", cache.name),
    }
}

/// The store's bounds ([`store::MAX_ITEMS`] sessions,
/// [`store::MAX_RESERVED`] bytes reserved): past them, an error naming the
/// cache's `items` (and `blocksize`) setting.
fn store_size(cache: &CacheDef) -> Result<(), ConfigError> {
    let items = option_name(cache, "cache", "items");
    if cache.items > store::MAX_ITEMS {
        return err(format!(
            "{items} = {} is too large (at most {} sessions)",
            cache.items,
            store::MAX_ITEMS
        ));
    }
    let blocksize = option_name(cache, "cache-blocksize", "blocksize");
    let limits = store::Limits {
        capacity: cache.items,
        keysize: cache.keysize,
        blocksize: cache.blocksize,
    };
    let shown = format!("{items} = {} with {blocksize} = {}", cache.items, cache.blocksize);
    match limits.reserved_bytes() {
        Ok(bytes) if bytes > store::MAX_RESERVED => err(format!(
            "{shown} would reserve {} GiB for the store (at most {} GiB): lower either",
            bytes.div_ceil(1 << 30),
            store::MAX_RESERVED >> 30
        )),
        Err(why) => err(format!("{shown}: {why}")),
        Ok(_) => match limits.refusal() {
            Some(why) => err(format!("{shown}: {why}")),
            None => Ok(()),
        },
    }
}

fn replication(raw: &RawOptions, cache: &CacheDef) -> Result<Replication, ConfigError> {
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

/// Whether a Redis URL asks for TLS.
pub fn is_tls(server: &RedisServer) -> bool {
    server.url.starts_with("rediss://")
}

/// Whether a `rediss://` URL turns certificate verification off (the
/// client library's `#insecure` fragment).
pub fn is_insecure(server: &RedisServer) -> bool {
    is_tls(server) && server.url.split_once('#').is_some_and(|(_, f)| f == "insecure")
}

/// Reads the CA and client certificate files of `cache`'s `rediss://`
/// servers, if given, and checks that they apply.
fn redis_tls(cache: &CacheDef, redis: &[RedisServer], redis_cluster: &[RedisServer]) -> Result<RedisTls, ConfigError> {
    let ca_option = option_name(cache, "ssl-sessions-redis-ca", "redis_ca");
    let cert_option = option_name(cache, "ssl-sessions-redis-cert", "redis_cert");
    let key_option = option_name(cache, "ssl-sessions-redis-key", "redis_key");
    let tls = redis_tls::load(
        redis_tls::Given {
            ca: (ca_option, cache.redis_ca.as_deref()),
            cert: (cert_option, cache.redis_cert.as_deref()),
            key: (key_option, cache.redis_key.as_deref()),
        },
        crate::os::effective_uid(),
    )?;
    let Some(given) = tls.ca.as_ref().or(tls.client.as_ref().map(|(cert, _)| cert)) else {
        return Ok(tls);
    };
    let given = given.option.clone();
    let redis_option = option_name(cache, "ssl-sessions-redis", "redis");
    let cluster_option = option_name(cache, "ssl-sessions-redis-cluster", "redis_cluster");
    if let Some(seed) = redis_cluster.iter().find(|s| is_tls(s)) {
        // The cluster client of the redis crate takes certificates only
        // when built with rustls; this build uses the host's OpenSSL.
        return err(format!(
            "{given} cannot apply to {cluster_option} = {}: the Redis Cluster client takes no CA or client \
             certificate (only the system's trust store); use {redis_option} for a Redis with a private CA",
            seed.shown
        ));
    }
    if let Some(server) = redis.iter().find(|s| is_insecure(s)) {
        return err(format!(
            "{given} is given, but {redis_option} = {}/#insecure turns certificate verification off (and \
             sends no client certificate): remove #insecure",
            server.shown
        ));
    }
    if !redis.iter().any(is_tls) {
        return err(format!(
            "{given} is given, but no {redis_option} is a rediss:// URL (TLS): it would apply to nothing"
        ));
    }
    Ok(tls)
}

/// Checks a Redis URL: `redis://[user:password@]host[:port][/db]` or
/// `rediss://...` (TLS). The password never appears in errors.
fn redis_server(option: &str, value: &str) -> Result<RedisServer, ConfigError> {
    let url = value.trim();
    let scheme_end = url.find("://").unwrap_or(0);
    let shown_value = match url.rfind('@') {
        Some(at) if scheme_end > 0 => format!("{}://…@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_string(),
    };
    let fail = |why: &str| {
        ConfigError(format!(
            "{option} = {shown_value}: {why} (expected redis://[user:password@]host:port[/db] or rediss://...)"
        ))
    };
    let rest = match &url[..scheme_end] {
        "redis" | "rediss" => &url[scheme_end + 3..],
        _ => return Err(fail("not a redis:// or rediss:// URL")),
    };
    // Query parameters and the fragment (`#insecure`: no certificate
    // check with rediss) are the client library's.
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (authority, db) = host_part.split_once('/').unwrap_or((host_part, ""));
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(fail("the database is not a number"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (
                h,
                p.strip_prefix(':').unwrap_or(if p.is_empty() { "6379" } else { "x" }),
            ),
            None => return Err(fail("unclosed [")),
        },
        None => authority.rsplit_once(':').unwrap_or((authority, "6379")),
    };
    if host.is_empty() {
        return Err(fail("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(fail("the port is not a number from 1 to 65535")),
    }
    Ok(RedisServer {
        url: url.to_string(),
        shown: format!("{}://{authority}", &url[..scheme_end]),
    })
}

/// The udprepeater's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeaterSettings {
    /// `udprepeater`: where it receives cache datagrams.
    pub data: SocketAddr,
    /// `udprepeater-subscription-server`.
    pub subscription: SocketAddr,
    /// `udprepeater-stats`.
    pub stats: Option<SocketAddr>,
    /// uWSGI's `subscriptions-sign-check` (`ALGO:DIR`).
    pub sign_check: Option<String>,
    pub max_subscribers: usize,
    pub max_clusters: usize,
    /// uWSGI's `subscription-tolerance`, seconds.
    pub tolerance_secs: u64,
    /// `udprepeater-rate`: datagrams a second forwarded from one source IP.
    pub per_source_per_sec: u64,
}

/// uWSGI's default `subscription-tolerance`.
pub const SUBSCRIPTION_TOLERANCE_SECS: u64 = 17;

/// Resolves the udprepeater's options; `Ok(None)` without `udprepeater`.
pub fn repeater(raw: &RawOptions) -> Result<Option<RepeaterSettings>, ConfigError> {
    let Some(data) = &raw.udprepeater else {
        for (name, given) in [
            ("udprepeater-subscription-server", &raw.udprepeater_subscription_server),
            ("udprepeater-stats", &raw.udprepeater_stats),
            ("udprepeater-max-subscribers", &raw.udprepeater_max_subscribers),
            ("udprepeater-max-clusters", &raw.udprepeater_max_clusters),
            ("udprepeater-rate", &raw.udprepeater_rate),
        ] {
            if given.is_some() {
                return err(format!("{name} is set but udprepeater is not: no repeater runs"));
            }
        }
        return Ok(None);
    };
    let data = addr::parse("udprepeater", data, true)?;
    let Some(subscription) = &raw.udprepeater_subscription_server else {
        return err(
            "udprepeater needs udprepeater-subscription-server = IP:PORT: the nodes subscribe there \
             (subscribe2 = server=IP:PORT,key=CLUSTER,addr=NODE_UDP_ADDRESS)",
        );
    };
    let subscription = addr::parse("udprepeater-subscription-server", subscription, true)?;
    if subscription == data {
        return err("udprepeater-subscription-server must differ from udprepeater: subscriptions are not forwarded");
    }
    let stats = raw
        .udprepeater_stats
        .as_deref()
        .map(|v| addr::parse("udprepeater-stats", v, true))
        .transpose()?;
    let number = |name: &str, value: &Option<String>, default: u64, max: u64| match value {
        Some(v) => positive(name, v, max),
        None => Ok(default),
    };
    let sign_check = match raw.subscriptions_sign_check.as_deref().map(str::trim) {
        Some("") => return err("subscriptions-sign-check needs ALGO:DIR (for example sha256:/etc/uwsgi/keys)"),
        other => other.map(str::to_string),
    };
    Ok(Some(RepeaterSettings {
        data,
        subscription,
        stats,
        sign_check,
        max_subscribers: number(
            "udprepeater-max-subscribers",
            &raw.udprepeater_max_subscribers,
            64,
            4096,
        )? as usize,
        max_clusters: number("udprepeater-max-clusters", &raw.udprepeater_max_clusters, 64, 4096)? as usize,
        tolerance_secs: number(
            "subscription-tolerance",
            &raw.subscription_tolerance,
            SUBSCRIPTION_TOLERANCE_SECS,
            86_400,
        )?,
        per_source_per_sec: number("udprepeater-rate", &raw.udprepeater_rate, 100_000, 100_000_000)?,
    }))
}

/// Resolves the raw options; `Ok(None)` when `ssl-sessions-use-cache` is not
/// set (the plugin then stays out of the way).
pub fn resolve(raw: &RawOptions) -> Result<Option<Settings>, ConfigError> {
    let Some(use_cache) = &raw.use_cache else {
        return Ok(None);
    };
    let has_default = raw.cache.is_some();
    let cache = if means_default(use_cache) {
        match (&raw.cache, raw.cache2.first()) {
            (Some(items), _) => default_cache(raw, items)?,
            // As uWSGI 1.9 did: without `cache`, `true` takes the first cache.
            (None, Some(first)) => parse_cache2(0, first)?,
            (None, None) => {
                return err(
                    "ssl-sessions-use-cache needs a cache to store sessions in, and none is defined: \
                     add `cache = <items>` (with `cache-blocksize`) or a `cache2 = name=...,items=...`",
                )
            }
        }
    } else {
        let wanted = use_cache.trim();
        match raw
            .cache2
            .iter()
            .enumerate()
            .find(|(_, v)| cache2_name(v).as_deref() == Some(wanted))
        {
            Some((index, value)) => parse_cache2(index, value)?,
            None if wanted == "default" && has_default => default_cache(raw, raw.cache.as_deref().unwrap_or(""))?,
            None => {
                let defined: Vec<String> = raw
                    .cache2
                    .iter()
                    .filter_map(|v| cache2_name(v))
                    .chain(has_default.then(|| "default".to_string()))
                    .collect();
                return err(format!(
                    "ssl-sessions-use-cache = {wanted}: no cache named \"{wanted}\" is defined ({})",
                    if defined.is_empty() {
                        "no cache is defined at all".to_string()
                    } else {
                        format!("defined: {}", defined.join(", "))
                    }
                ));
            }
        }
    };
    if cache.keysize < SESSION_ID_MAX {
        return err(format!(
            "cache \"{}\" keysize = {} is too small for a TLS session id ({} bytes)",
            cache.name, cache.keysize, SESSION_ID_MAX
        ));
    }
    store_size(&cache)?;
    let timeout = match &raw.timeout {
        Some(v) => positive("ssl-sessions-timeout", v, u32::MAX as u64)? as u32,
        None => DEFAULT_TIMEOUT,
    };
    let mut warnings = Vec::new();
    if !cache.ignored_keys.is_empty() {
        warnings.push(format!(
            "cache \"{}\": ignoring keys that mean nothing for a TLS session store: {}",
            cache.name,
            cache.ignored_keys.join(", ")
        ));
    }
    if let Some((option, path)) = &cache.store {
        warnings.push(format!(
            "cache \"{}\" lives in {path} ({option}): that file holds the master secrets of live TLS sessions; \
             keep it on a private, local filesystem",
            cache.name
        ));
    }
    if cache.blocksize < SMALL_BLOCKSIZE {
        warnings.push(format!(
            "cache \"{}\" blocksize = {} is small: sessions larger than that are not cached",
            cache.name, cache.blocksize
        ));
    }
    let https_session_context = session_context("https-session-context", &raw.https_session_context)?;
    let replication = replication(raw, &cache)?;
    let insecure = [
        (
            option_name(&cache, "ssl-sessions-redis", "redis"),
            &replication.redis,
            format!(
                "name the CA that signed its certificate with {} instead",
                option_name(&cache, "ssl-sessions-redis-ca", "redis_ca")
            ),
        ),
        (
            option_name(&cache, "ssl-sessions-redis-cluster", "redis_cluster"),
            &replication.redis_cluster,
            "give its nodes certificates the system's trust store verifies instead".to_string(),
        ),
    ];
    for (option, servers, instead) in insecure {
        for server in servers.iter().filter(|s| is_insecure(s)) {
            warnings.push(format!(
                "{option} = {}/#insecure: the Redis server's certificate is not verified: anyone on the path \
                 can pose as that Redis and take its password and the sessions written to it; {instead}",
                server.shown
            ));
        }
    }
    if !replication.nodes.is_empty() && https_session_context.is_none() {
        warnings.push(
            "https-session-context is not set: each node's HTTPS listeners get their own session id \
             context (\"http-\" + address), so sessions replicated from other nodes will not resume here"
                .to_string(),
        );
    }
    let tls13_tickets = match raw.tls13_tickets.as_deref().map(str::trim) {
        None => DEFAULT_TLS13_TICKETS,
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n <= MAX_TLS13_TICKETS => n,
            _ => {
                return err(format!(
                    "ssl-sessions-tls13-tickets = {v}: expected a number from 0 to {MAX_TLS13_TICKETS}"
                ))
            }
        },
    };
    let quickack = match &raw.quickack {
        Some(v) => flag("ssl-sessions-quickack", v)?,
        None => true,
    };
    let verbose = raw.ssl_verbose.as_deref().is_some_and(uwsgi_true);
    Ok(Some(Settings {
        cache,
        timeout,
        tls13_tickets,
        quickack,
        verbose,
        https_session_context,
        sslrouter_session_context: session_context("sslrouter-session-context", &raw.sslrouter_session_context)?,
        replication,
        warnings,
    }))
}

#[cfg(test)]
mod tests;
