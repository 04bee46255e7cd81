//! Typed settings from the raw option strings uWSGI collected.
//!
//! Everything here is plain Rust: the host layer gathers the strings (from
//! our own options and from `uwsgi.exported_opts`), this module turns them
//! into [`Settings`] or one [`ConfigError`] that names the offending option.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use crate::store;

pub mod addr;
pub mod options;
pub mod redis_tls;

pub use options::RawOptions;
pub use redis_tls::{PemFile, RedisTls};

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

/// Cluster tickets (`ssl-sessions-tickets = cluster`): the default and
/// largest rotation interval, and the longest ticket lifetime (7 days, RFC
/// 8446 §4.6.1), seconds.
pub const DEFAULT_TICKET_ROTATION: u64 = 3600;
pub const MAX_TICKET_ROTATION: u64 = 604_800;
pub const MAX_TICKET_LIFETIME: u64 = 604_800;

/// Cluster tickets: ticket keys derived from the cluster key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tickets {
    /// Seconds between key rotations.
    pub rotation: u64,
    /// Seconds a ticket lives: `ssl-sessions-timeout`, at most 7 days.
    pub lifetime: u64,
}

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
    /// Cluster tickets, when on.
    pub tickets: Option<Tickets>,
    /// Log every session event (uWSGI's `ssl-verbose`).
    pub verbose: bool,
    /// Non-fatal remarks to log once at startup.
    pub warnings: Vec<String>,
}

/// A configuration error, naming the option at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses a positive decimal number; `what` names the option in errors.
pub fn positive(what: &str, value: &str, max: u64) -> Result<u64, ConfigError> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return err(format!("{what} = \"{value}\" is not a number"));
    }
    match v.parse::<u64>() {
        Ok(0) => err(format!("{what} must be greater than 0")),
        Ok(n) if n <= max => Ok(n),
        _ => err(format!("{what} = {v} is too large (at most {max})")),
    }
}

/// The words of a boolean, case-insensitive: `Some(false)` for the words
/// uWSGI reads as false (`uwsgi_opt_true`: `0`, `false`, `no`, `off`),
/// `Some(true)` for empty (a bare flag), `1`, `true`, `yes`, `on`, `None`
/// for any other word.
pub fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A boolean option of sslcache's: a word outside [`boolean`]'s is an error
/// naming the option (a typo must not turn `ssl-sessions-accept-plain` on).
pub fn flag(option: &str, value: &str) -> Result<bool, ConfigError> {
    boolean(value).ok_or_else(|| {
        ConfigError(format!(
            "{option} = {}: expected true or false (or 1/0, yes/no, on/off)",
            value.trim()
        ))
    })
}

/// A boolean option of uWSGI's, read exactly as uWSGI reads it
/// (`uwsgi_opt_true`): false for its false words, true for anything else.
pub fn uwsgi_true(value: &str) -> bool {
    boolean(value) != Some(false)
}

/// Whether an `ssl-sessions-use-cache` value selects the default cache
/// (any other value names a cache, as in stock uWSGI).
fn means_default(value: &str) -> bool {
    boolean(value) == Some(true)
}

/// Splits a `cache2` value the way uWSGI's `uwsgi_kvlist_parse` does:
/// items on unescaped `,`, a backslash escapes the next character, the key
/// ends at the first `=`. Later duplicates win.
pub fn parse_kvlist(src: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in src.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        if let Some((k, v)) = item.split_once('=') {
            out.retain(|(key, _)| key != k);
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
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

fn split_list(value: &str) -> Vec<String> {
    value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

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

/// `ssl-sessions-tickets` and its rotation: cluster tickets need the
/// cluster key.
fn tickets(
    raw: &RawOptions,
    cache: &CacheDef,
    replication: &Replication,
    timeout: u32,
    warnings: &mut Vec<String>,
) -> Result<Option<Tickets>, ConfigError> {
    let on = match raw.tickets.as_deref().map(str::trim) {
        None | Some("off") => false,
        Some("cluster") => true,
        Some(v) => return err(format!("ssl-sessions-tickets = {v}: expected off or cluster")),
    };
    let rotation = match &raw.tickets_rotation {
        Some(v) => positive("ssl-sessions-tickets-rotation", v, MAX_TICKET_ROTATION)?,
        None => DEFAULT_TICKET_ROTATION,
    };
    if !on {
        if raw.tickets_rotation.is_some() {
            warnings.push(
                "ssl-sessions-tickets-rotation is set but ssl-sessions-tickets is not cluster: it changes nothing"
                    .to_string(),
            );
        }
        return Ok(None);
    }
    if replication.key_file.is_none() {
        return err(format!(
            "ssl-sessions-tickets = cluster needs a cluster key ({}): without one (plain mode) the nodes share \
             no secret to derive ticket keys from",
            option_name(cache, "cache-udp-key", "udp_key")
        ));
    }
    let lifetime = u64::from(timeout).min(MAX_TICKET_LIFETIME);
    if u64::from(timeout) > MAX_TICKET_LIFETIME {
        warnings.push(format!(
            "ssl-sessions-timeout = {timeout}: cluster tickets live at most {MAX_TICKET_LIFETIME} seconds (7 days, \
             RFC 8446)"
        ));
    }
    Ok(Some(Tickets { rotation, lifetime }))
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
    let tickets = tickets(raw, &cache, &replication, timeout, &mut warnings)?;
    Ok(Some(Settings {
        cache,
        timeout,
        tls13_tickets,
        quickack,
        tickets,
        verbose,
        https_session_context,
        sslrouter_session_context: session_context("sslrouter-session-context", &raw.sslrouter_session_context)?,
        replication,
        warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOptions {
        RawOptions {
            use_cache: Some("true".into()),
            cache: Some("20000".into()),
            cache_blocksize: Some("4096".into()),
            ..RawOptions::default()
        }
    }

    #[test]
    fn seed_setup_one() {
        let mut r = raw();
        r.timeout = Some("300".into());
        r.https_session_context = Some("foobar".into());
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!(s.cache.name, "default");
        assert_eq!(s.cache.origin, CacheOrigin::Default);
        assert_eq!((s.cache.items, s.cache.keysize, s.cache.blocksize), (20000, 2048, 4096));
        assert_eq!(s.timeout, 300);
        assert_eq!(s.https_session_context.as_deref(), Some("foobar"));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn not_enabled_without_use_cache() {
        let mut r = raw();
        r.use_cache = None;
        assert_eq!(resolve(&r).unwrap(), None);
    }

    #[test]
    fn true_like_values_select_the_default_cache() {
        for v in ["", "true", "TRUE", "1", "yes", "on"] {
            let mut r = raw();
            r.use_cache = Some(v.into());
            assert_eq!(resolve(&r).unwrap().unwrap().cache.name, "default", "{v:?}");
        }
    }

    #[test]
    fn seed_named_cache() {
        let mut r = raw();
        r.cache = None;
        r.use_cache = Some("ssl".into());
        r.cache2 = vec![
            "name=other,items=10".into(),
            "name=ssl,items=20000,keysize=128,blocksize=4096,node=127.0.0.1:4242,udp=127.0.0.1:4141".into(),
        ];
        let s = resolve(&r).unwrap().unwrap();
        let c = s.cache;
        assert_eq!(c.name, "ssl");
        assert_eq!(c.origin, CacheOrigin::Cache2 { index: 1 });
        assert_eq!((c.items, c.keysize, c.blocksize), (20000, 128, 4096));
        assert_eq!(c.nodes, vec!["127.0.0.1:4242"]);
        assert_eq!(c.udp_servers, vec!["127.0.0.1:4141"]);
    }

    #[test]
    fn every_stock_spelling_of_nodes_and_servers() {
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec![
            "name=s,maxitems=5,nodes=127.0.0.1:1;127.0.0.2:2,udp_servers=127.0.0.3:3,udpserver=127.0.0.4:4,lru=1"
                .into(),
        ];
        let c = resolve(&r).unwrap().unwrap().cache;
        assert_eq!(c.items, 5);
        assert_eq!(c.nodes, vec!["127.0.0.1:1", "127.0.0.2:2"]);
        assert_eq!(c.udp_servers, vec!["127.0.0.3:3", "127.0.0.4:4"]);
        assert!(c.ignored_keys.is_empty());
    }

    #[test]
    fn store_files_and_their_sync() {
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,store=/var/lib/x.store,store_sync=30".into()];
        let c = resolve(&r).unwrap().unwrap().cache;
        assert_eq!(c.store, Some(("cache2 \"s\" store".into(), "/var/lib/x.store".into())));
        assert_eq!(c.store_sync, Some(30));
        let mut r = raw();
        r.cache_store = Some("/x".into());
        r.cache_store_sync = Some("0".into());
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .contains("cache-store-sync must be greater than 0"));
        r.cache_store_sync = None;
        let c = resolve(&r).unwrap().unwrap().cache;
        assert_eq!(
            (c.store, c.store_sync),
            (Some(("cache-store".into(), "/x".into())), None)
        );
    }

    #[test]
    fn meaningless_keys_warn_once() {
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,bitmap=1,store_delete=1,hash=murmur2,frobnicate=2".into()];
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("bitmap, store_delete, hash, frobnicate (unknown)"),
            "{}",
            s.warnings[0]
        );
    }

    #[test]
    fn true_without_default_takes_first_cache2() {
        let mut r = raw();
        r.cache = None;
        r.cache2 = vec!["name=first,items=7".into(), "name=second,items=9".into()];
        assert_eq!(resolve(&r).unwrap().unwrap().cache.name, "first");
    }

    #[test]
    fn clear_errors() {
        type Mutation = Box<dyn Fn(&mut RawOptions)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.use_cache = Some("nope".into())),
                "no cache named \"nope\" is defined (defined: default)",
            ),
            (
                Box::new(|r| {
                    r.cache = None;
                }),
                "none is defined",
            ),
            (
                Box::new(|r| {
                    r.cache = None;
                    r.use_cache = Some("x".into());
                }),
                "no cache is defined at all",
            ),
            (
                Box::new(|r| r.cache = Some("lots".into())),
                "cache = \"lots\" is not a number",
            ),
            (Box::new(|r| r.cache = Some("0".into())), "cache must be greater than 0"),
            (
                Box::new(|r| r.cache_blocksize = Some("4k".into())),
                "cache-blocksize = \"4k\" is not a number",
            ),
            (
                Box::new(|r| r.timeout = Some("-3".into())),
                "ssl-sessions-timeout = \"-3\" is not a number",
            ),
            (
                Box::new(|r| r.timeout = Some("0".into())),
                "ssl-sessions-timeout must be greater than 0",
            ),
            (
                Box::new(|r| r.https_session_context = Some("x".repeat(33))),
                "https-session-context = xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx is 33 bytes long",
            ),
            (
                Box::new(|r| {
                    r.use_cache = Some("s".into());
                    r.cache2 = vec!["name=s,items=10,keysize=16".into()];
                }),
                "keysize = 16 is too small for a TLS session id",
            ),
            (
                Box::new(|r| {
                    r.use_cache = Some("s".into());
                    r.cache2 = vec!["name=s,blocksize=4096".into()];
                }),
                "cache2 \"s\" needs items=N",
            ),
            (
                Box::new(|r| {
                    r.use_cache = Some("s".into());
                    r.cache2 = vec!["name=s,items=ten".into()];
                }),
                "cache2 \"s\" items = \"ten\" is not a number",
            ),
        ];
        for (mutate, expected) in cases {
            let mut r = raw();
            mutate(&mut r);
            let e = resolve(&r).unwrap_err();
            assert!(e.0.contains(expected), "{:?} does not contain {expected:?}", e.0);
        }
    }

    #[test]
    fn replication_addresses_and_multicast() {
        let mut r = raw();
        r.cache_udp_server = vec!["225.1.1.1:7171".into()];
        r.cache_udp_node = vec!["225.1.1.1:7171".into(), "127.0.0.2:7171".into()];
        r.https_session_context = Some("foobar".into());
        r.multicast_if = Some("127.0.0.1".into());
        r.multicast_ttl = Some("3".into());
        r.multicast_loop = Some("0".into());
        let s = resolve(&r).unwrap().unwrap();
        let rep = s.replication;
        assert_eq!(rep.servers, vec!["225.1.1.1:7171".parse::<SocketAddr>().unwrap()]);
        assert_eq!(rep.nodes.len(), 2);
        assert_eq!(rep.multicast.interface, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((rep.multicast.ttl, rep.multicast.loopback), (3, false));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn replication_errors_name_the_option() {
        let mut r = raw();
        r.cache_udp_node = vec!["nowhere".into()];
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .starts_with("cache-udp-node = nowhere: expected host:port"));
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,udp=127.0.0.1:99999".into()];
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .starts_with("cache2 \"s\" udp = 127.0.0.1:99999:"));
        let mut r = raw();
        r.multicast_if = Some("eth0".into());
        r.cache_udp_node = vec!["225.1.1.1:7171".into()];
        assert!(resolve(&r).unwrap_err().0.contains("ssl-sessions-multicast-if = eth0"));
    }

    #[test]
    fn key_files_and_policy() {
        let mut r = raw();
        r.cache_udp_key = Some("/etc/keys".into());
        r.accept_plain = Some("true".into());
        r.max_skew = Some("5".into());
        let rep = resolve(&r).unwrap().unwrap().replication;
        assert_eq!(rep.key_file, Some(("cache-udp-key".into(), "/etc/keys".into())));
        assert!(rep.accept_plain);
        assert_eq!(rep.max_skew, 5);
        assert!(rep.peer_sync);
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,udp_key=/k".into()];
        let rep = resolve(&r).unwrap().unwrap().replication;
        assert_eq!(rep.key_file, Some(("cache2 \"s\" udp_key".into(), "/k".into())));
        assert!(!rep.accept_plain);
        assert_eq!(rep.max_skew, DEFAULT_MAX_SKEW);
        let mut r = raw();
        r.accept_plain = Some("maybe".into());
        assert!(resolve(&r).unwrap_err().0.contains("ssl-sessions-accept-plain = maybe"));
        let mut r = raw();
        r.peer_sync = Some("off".into());
        assert!(!resolve(&r).unwrap().unwrap().replication.peer_sync);
        r.peer_sync = Some("sometimes".into());
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .contains("ssl-sessions-peer-sync = sometimes"));
    }

    #[test]
    fn cluster_tickets_need_the_cluster_key() {
        let mut r = raw();
        assert_eq!(resolve(&r).unwrap().unwrap().tickets, None);
        r.tickets = Some("off".into());
        assert_eq!(resolve(&r).unwrap().unwrap().tickets, None);
        // Plain mode: refused with one line naming both options.
        r.tickets = Some("cluster".into());
        let e = resolve(&r).unwrap_err().0;
        assert!(
            e.starts_with("ssl-sessions-tickets = cluster needs a cluster key (cache-udp-key)"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        r.cache_udp_key = Some("/etc/keys".into());
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!(
            s.tickets,
            Some(Tickets {
                rotation: DEFAULT_TICKET_ROTATION,
                lifetime: DEFAULT_TIMEOUT as u64
            })
        );
        r.tickets_rotation = Some("5".into());
        r.timeout = Some("700000".into());
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!(
            s.tickets,
            Some(Tickets {
                rotation: 5,
                lifetime: MAX_TICKET_LIFETIME
            })
        );
        assert!(
            s.warnings.iter().any(|w| w.contains("at most 604800 seconds")),
            "{:?}",
            s.warnings
        );
        for (v, expected) in [
            ("0", "ssl-sessions-tickets-rotation"),
            ("604801", "ssl-sessions-tickets-rotation"),
            ("hourly", "ssl-sessions-tickets-rotation"),
        ] {
            r.tickets_rotation = Some(v.into());
            let e = resolve(&r).unwrap_err().0;
            assert!(e.contains(expected), "{v}: {e}");
        }
        r.tickets_rotation = None;
        r.tickets = Some("on".into());
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .contains("ssl-sessions-tickets = on: expected off or cluster"));
        // A cache2's key counts, and is named in the error.
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.tickets = Some("cluster".into());
        r.cache2 = vec!["name=s,items=5".into()];
        assert!(resolve(&r).unwrap_err().0.contains("(cache2 \"s\" udp_key)"));
        r.cache2 = vec!["name=s,items=5,udp_key=/k".into()];
        assert!(resolve(&r).unwrap().unwrap().tickets.is_some());
        // The rotation alone changes nothing, and says so.
        let mut r = raw();
        r.tickets_rotation = Some("60".into());
        let s = resolve(&r).unwrap().unwrap();
        assert!(s.tickets.is_none());
        assert!(s.warnings.iter().any(|w| w.contains("changes nothing")));
    }

    #[test]
    fn redis_urls() {
        let mut r = raw();
        r.redis = vec![
            "redis://127.0.0.1:6379".into(),
            "rediss://u:secret@[::1]:7000/2".into(),
            "rediss://h:7001/#insecure".into(),
        ];
        let rep = resolve(&r).unwrap().unwrap().replication;
        assert!(rep.is_enabled());
        assert_eq!(rep.redis[0].shown, "redis://127.0.0.1:6379");
        assert_eq!(rep.redis[1].shown, "rediss://[::1]:7000");
        for (bad, why) in [
            ("http://127.0.0.1:6379", "not a redis:// or rediss:// URL"),
            ("redis://:6379", "no host"),
            ("redis://h:99999", "the port is not a number"),
            ("redis://u:secret@h:1/x", "the database is not a number"),
        ] {
            r.redis = vec![bad.into()];
            let e = resolve(&r).unwrap_err().0;
            assert!(e.starts_with("ssl-sessions-redis = ") && e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,redis=redis://127.0.0.1:7000,redis_cluster=redis://h:1;redis://h:2".into()];
        let rep = resolve(&r).unwrap().unwrap().replication;
        assert_eq!(rep.redis[0].url, "redis://127.0.0.1:7000");
        assert_eq!(rep.redis_cluster.len(), 2);
        r.cache2 = vec!["name=s,items=5,redis_cluster=redis://h:0".into()];
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .starts_with("cache2 \"s\" redis_cluster = redis://h:0"));
    }

    /// A directory of TLS files for the Redis TLS tests: a CA, a client
    /// certificate it signed and that certificate's key (mode 0600), and
    /// another key.
    struct TlsFiles {
        dir: std::path::PathBuf,
    }

    impl TlsFiles {
        fn new(name: &str) -> TlsFiles {
            use openssl::asn1::Asn1Time;
            use openssl::hash::MessageDigest;
            use openssl::pkey::PKey;
            use openssl::rsa::Rsa;
            use openssl::x509::{X509Builder, X509NameBuilder};
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(format!("sslcache-redis-tls-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let cert = |cn: &str, key: &PKey<openssl::pkey::Private>, issuer: Option<&PKey<openssl::pkey::Private>>| {
                let mut name = X509NameBuilder::new().unwrap();
                name.append_entry_by_text("CN", cn).unwrap();
                let name = name.build();
                let mut b = X509Builder::new().unwrap();
                b.set_version(2).unwrap();
                b.set_subject_name(&name).unwrap();
                b.set_issuer_name(&name).unwrap();
                b.set_pubkey(key).unwrap();
                b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
                b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
                b.sign(issuer.unwrap_or(key), MessageDigest::sha256()).unwrap();
                b.build().to_pem().unwrap()
            };
            let ca_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let client_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let other_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            std::fs::write(dir.join("ca.pem"), cert("test CA", &ca_key, None)).unwrap();
            std::fs::write(dir.join("client.pem"), cert("client", &client_key, Some(&ca_key))).unwrap();
            // The traditional (PKCS#1) form: re-encoded as PKCS#8.
            std::fs::write(
                dir.join("client.key"),
                client_key.rsa().unwrap().private_key_to_pem().unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join("other.key"), other_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
            std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
            for key in ["client.key", "other.key"] {
                std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            TlsFiles { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).to_string_lossy().into_owned()
        }
    }

    impl Drop for TlsFiles {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn redis_tls_files_are_read_and_checked() {
        let f = TlsFiles::new("ok");
        let mut r = raw();
        r.redis = vec!["rediss://127.0.0.1:6380".into()];
        r.redis_ca = Some(f.path("ca.pem"));
        let rep = resolve(&r).unwrap().unwrap().replication;
        let ca = rep.redis_tls.ca.as_ref().unwrap();
        assert_eq!(ca.shown(), format!("ssl-sessions-redis-ca = {}", f.path("ca.pem")));
        assert!(ca.pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(rep.redis_tls.client.is_none());
        r.redis_cert = Some(f.path("client.pem"));
        r.redis_key = Some(f.path("client.key"));
        let rep = resolve(&r).unwrap().unwrap().replication;
        let (cert, key) = rep.redis_tls.client.as_ref().unwrap();
        assert_eq!(cert.option, "ssl-sessions-redis-cert");
        assert!(key.pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        // The key never shows in the settings' Debug.
        assert!(!format!("{rep:?}").contains("PRIVATE"));
        // cache2 names its keys.
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec![format!(
            "name=s,items=5,redis=rediss://h:1,redis_ca={},redis_cert={},redis_key={}",
            f.path("ca.pem"),
            f.path("client.pem"),
            f.path("client.key")
        )];
        let s = resolve(&r).unwrap().unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let tls = s.replication.redis_tls;
        assert_eq!(tls.ca.unwrap().option, "cache2 \"s\" redis_ca");
        assert_eq!(tls.client.unwrap().1.option, "cache2 \"s\" redis_key");
    }

    #[test]
    fn redis_tls_errors_are_one_line_naming_the_option() {
        use std::os::unix::fs::PermissionsExt;
        let f = TlsFiles::new("errors");
        let missing = f.path("missing.pem");
        std::fs::set_permissions(f.path("other.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(f.path("client.key"), f.path("link.key")).unwrap();
        type Mutation<'a> = Box<dyn Fn(&mut RawOptions) + 'a>;
        let cases: Vec<(Mutation, String)> = vec![
            (
                Box::new(|r| r.redis_ca = Some(f.path("missing.pem"))),
                format!("ssl-sessions-redis-ca = {missing}: cannot read the CA file: No such file or directory"),
            ),
            (
                Box::new(|r| r.redis_ca = Some(f.path("garbage.pem"))),
                format!(
                    "ssl-sessions-redis-ca = {}: the CA file holds no PEM certificate",
                    f.path("garbage.pem")
                ),
            ),
            (
                Box::new(|r| r.redis_ca = Some(f.path(""))),
                format!("ssl-sessions-redis-ca = {}: not a regular file", f.path("")),
            ),
            (
                Box::new(|r| r.redis_cert = Some(f.path("client.pem"))),
                "ssl-sessions-redis-cert needs ssl-sessions-redis-key".into(),
            ),
            (
                Box::new(|r| r.redis_key = Some(f.path("client.key"))),
                "ssl-sessions-redis-key needs ssl-sessions-redis-cert".into(),
            ),
            (
                Box::new(|r| {
                    r.redis_cert = Some(f.path("client.pem"));
                    r.redis_key = Some(f.path("ca.pem"));
                }),
                format!(
                    "ssl-sessions-redis-key = {}: the key file is readable or writable by group or others",
                    f.path("ca.pem")
                ),
            ),
            (
                Box::new(|r| {
                    r.redis_cert = Some(f.path("client.pem"));
                    r.redis_key = Some(f.path("other.key"));
                }),
                format!(
                    "ssl-sessions-redis-key = {}: the key file is readable or writable by group or others \
                     (mode 0644): chmod 600 it",
                    f.path("other.key")
                ),
            ),
            (
                Box::new(|r| {
                    r.redis_cert = Some(f.path("client.pem"));
                    r.redis_key = Some(f.path("link.key"));
                }),
                format!(
                    "ssl-sessions-redis-key = {}: the key file is a symbolic link",
                    f.path("link.key")
                ),
            ),
            (
                Box::new(|r| {
                    r.redis_cert = Some(f.path("garbage.pem"));
                    r.redis_key = Some(f.path("client.key"));
                }),
                format!(
                    "ssl-sessions-redis-cert = {}: the certificate file holds no PEM certificate",
                    f.path("garbage.pem")
                ),
            ),
            (
                Box::new(|r| r.redis = vec!["redis://127.0.0.1:6379".into()]),
                "ssl-sessions-redis-ca is given, but no ssl-sessions-redis is a rediss:// URL".into(),
            ),
            (
                Box::new(|r| r.redis = vec!["rediss://127.0.0.1:6379/#insecure".into()]),
                "ssl-sessions-redis-ca is given, but ssl-sessions-redis = rediss://127.0.0.1:6379/#insecure \
                 turns certificate verification off"
                    .into(),
            ),
            (
                Box::new(|r| {
                    r.redis = vec![];
                    r.redis_cluster = vec!["rediss://127.0.0.1:7000".into()];
                }),
                "ssl-sessions-redis-ca cannot apply to ssl-sessions-redis-cluster = rediss://127.0.0.1:7000: the \
                 Redis Cluster client takes no CA or client certificate"
                    .into(),
            ),
        ];
        for (mutate, expected) in cases {
            let mut r = raw();
            r.redis = vec!["rediss://127.0.0.1:6379".into()];
            r.redis_ca = Some(f.path("ca.pem"));
            mutate(&mut r);
            let e = resolve(&r).unwrap_err().0;
            assert!(e.starts_with(&expected), "{e:?} does not start with {expected:?}");
            assert!(!e.contains('\n'), "{e:?}");
        }
        // The key of another certificate.
        let mut r = raw();
        r.redis = vec!["rediss://127.0.0.1:6379".into()];
        r.redis_cert = Some(f.path("client.pem"));
        std::fs::set_permissions(f.path("other.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        r.redis_key = Some(f.path("other.key"));
        let e = resolve(&r).unwrap_err().0;
        assert_eq!(
            e,
            format!(
                "ssl-sessions-redis-key = {}: this key is not the key of the certificate in \
                 ssl-sessions-redis-cert = {}",
                f.path("other.key"),
                f.path("client.pem")
            )
        );
        // A cache2 names its keys; a bad path there too.
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec![format!("name=s,items=5,redis=rediss://h:1,redis_ca={missing}")];
        let e = resolve(&r).unwrap_err().0;
        assert!(
            e.starts_with(&format!("cache2 \"s\" redis_ca = {missing}: cannot read the CA file")),
            "{e}"
        );
    }

    #[test]
    fn insecure_rediss_warns_at_startup() {
        let mut r = raw();
        r.redis = vec![
            "rediss://127.0.0.1:6380/#insecure".into(),
            "rediss://127.0.0.1:6381".into(),
        ];
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].starts_with(
                "ssl-sessions-redis = rediss://127.0.0.1:6380/#insecure: the Redis server's certificate is not \
                 verified"
            ) && s.warnings[0].ends_with("with ssl-sessions-redis-ca instead"),
            "{}",
            s.warnings[0]
        );
        let mut r = raw();
        r.use_cache = Some("s".into());
        r.cache2 = vec!["name=s,items=5,redis_cluster=rediss://h:1/#insecure".into()];
        let s = resolve(&r).unwrap().unwrap();
        assert!(
            s.warnings[0].starts_with("cache2 \"s\" redis_cluster = rediss://h:1/#insecure: "),
            "{:?}",
            s.warnings
        );
        // Not for a plain URL that happens to end so.
        let mut r = raw();
        r.redis = vec!["redis://127.0.0.1:6380/#insecure".into()];
        assert!(resolve(&r).unwrap().unwrap().warnings.is_empty());
    }

    #[test]
    fn quickack_on_unless_turned_off() {
        let mut r = raw();
        assert!(resolve(&r).unwrap().unwrap().quickack);
        r.quickack = Some("no".into());
        assert!(!resolve(&r).unwrap().unwrap().quickack);
        r.quickack = Some("fast".into());
        let e = resolve(&r).unwrap_err().0;
        assert!(
            e.contains("ssl-sessions-quickack = fast: expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn tls13_tickets_from_zero_to_eight() {
        let mut r = raw();
        assert_eq!(resolve(&r).unwrap().unwrap().tls13_tickets, DEFAULT_TLS13_TICKETS);
        for (v, n) in [("0", 0), ("1", 1), (" 8 ", 8)] {
            r.tls13_tickets = Some(v.into());
            assert_eq!(resolve(&r).unwrap().unwrap().tls13_tickets, n);
        }
        for v in ["9", "-1", "two", "", "256"] {
            r.tls13_tickets = Some(v.into());
            let e = resolve(&r).unwrap_err().0;
            assert!(e.contains("expected a number from 0 to 8"), "{v}: {e}");
        }
    }

    #[test]
    fn warns_when_nodes_cannot_share_sessions() {
        let mut r = raw();
        r.cache_udp_node = vec!["127.0.0.2:7171".into()];
        let s = resolve(&r).unwrap().unwrap();
        assert!(
            s.warnings[0].contains("https-session-context is not set"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn one_boolean_vocabulary() {
        let words = [
            ("", true),
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("On", true),
            ("0", false),
            ("false", false),
            ("NO", false),
            ("off", false),
        ];
        for (word, value) in words {
            let mut r = raw();
            r.accept_plain = Some(word.into());
            r.ssl_verbose = Some(word.into());
            let s = resolve(&r).unwrap().unwrap();
            assert_eq!((s.replication.accept_plain, s.verbose), (value, value), "{word:?}");
        }
        // sslcache's own flags refuse other words; uWSGI's own read them
        // as uWSGI does (true).
        let mut r = raw();
        r.accept_plain = Some("flase".into());
        let e = resolve(&r).unwrap_err().0;
        assert!(
            e.starts_with("ssl-sessions-accept-plain = flase: expected true or false"),
            "{e}"
        );
        let mut r = raw();
        r.ssl_verbose = Some("2".into());
        assert!(resolve(&r).unwrap().unwrap().verbose);
        // multicast-loop is a number to uWSGI.
        for (v, on) in [("0", false), ("1", true), ("2", true)] {
            let mut r = raw();
            r.multicast_loop = Some(v.into());
            assert_eq!(resolve(&r).unwrap().unwrap().replication.multicast.loopback, on);
        }
        let mut r = raw();
        r.multicast_loop = Some("true".into());
        assert!(resolve(&r)
            .unwrap_err()
            .0
            .contains("multicast-loop = true: uWSGI reads a number"));
    }

    #[test]
    fn kvlist_escapes_like_uwsgi() {
        let kv = parse_kvlist(r"name=a\,b,items=3,items=4");
        assert_eq!(kv, vec![("name".into(), "a,b".into()), ("items".into(), "4".into())]);
    }

    #[test]
    fn small_blocksize_warns() {
        let mut r = raw();
        r.cache_blocksize = Some("512".into());
        let s = resolve(&r).unwrap().unwrap();
        assert!(s.warnings[0].contains("blocksize = 512 is small"));
    }

    #[test]
    fn store_sizes_are_bounded_naming_the_setting() {
        let error = |r: &RawOptions| resolve(r).unwrap_err().0;
        // The review's case, and the bound itself.
        let mut r = raw();
        r.cache = Some("1073741823".into());
        assert_eq!(error(&r), "cache = 1073741823 is too large (at most 10000000 sessions)");
        r.cache = Some("10000001".into());
        assert_eq!(error(&r), "cache = 10000001 is too large (at most 10000000 sessions)");
        // Ten million sessions at the default blocksize: accepted.
        r.cache = Some("10000000".into());
        r.cache_blocksize = None;
        assert_eq!(resolve(&r).unwrap().unwrap().cache.items, 10_000_000);
        // More than a terabyte reserved: refused, naming both settings.
        r.cache_blocksize = Some("131072".into());
        let e = error(&r);
        assert!(
            e.starts_with("cache = 10000000 with cache-blocksize = 131072 would reserve ")
                && e.ends_with("GiB for the store (at most 1024 GiB): lower either"),
            "{e}"
        );
        let mut r = raw();
        r.use_cache = Some("ssl".into());
        r.cache2 = vec!["name=ssl,items=20000000".into()];
        assert_eq!(
            error(&r),
            "cache2 \"ssl\" items = 20000000 is too large (at most 10000000 sessions)"
        );
        r.cache2 = vec!["name=ssl,items=100,blocksize=2147483647".into()];
        assert!(
            error(&r).starts_with("cache2 \"ssl\" items = 100 with cache2 \"ssl\" blocksize = 2147483647: "),
            "{}",
            error(&r)
        );
        // Numbers beyond any bound still parse to this one message.
        r.cache2 = vec!["name=ssl,items=99999999999".into()];
        assert!(error(&r).contains("is too large (at most 10000000 sessions)"));
    }
}
