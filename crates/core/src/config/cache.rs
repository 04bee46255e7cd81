//! The cache that becomes the session store: the default cache (`cache`,
//! `cache-blocksize`, `cache-udp-*`, ...) or a `cache2` line, read with
//! every key a stock uWSGI accepts (those meaningless for a session store
//! noted for a warning), and its sizes checked against the store's bounds.
//! Errors name the setting as the operator wrote it: the option of the
//! default cache or the key of the `cache2` line.

use super::values::{err, parse_kvlist, positive, split_list, ConfigError};
use super::RawOptions;
use crate::store;

/// Defaults of a stock uWSGI cache.
pub const DEFAULT_KEYSIZE: u32 = 2048;
pub const DEFAULT_BLOCKSIZE: u32 = 65535;

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

pub(super) fn cache2_name(value: &str) -> Option<String> {
    parse_kvlist(value)
        .into_iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v)
}

pub(super) fn parse_cache2(index: usize, value: &str) -> Result<CacheDef, ConfigError> {
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

pub(super) fn default_cache(raw: &RawOptions, items: &str) -> Result<CacheDef, ConfigError> {
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

/// How errors name a setting of `cache`: the option of the default cache,
/// or the key of its `cache2` line.
pub(super) fn option_name(cache: &CacheDef, default_option: &str, cache2_key: &str) -> String {
    match cache.origin {
        CacheOrigin::Default => default_option.to_string(),
        CacheOrigin::Cache2 { .. } => format!("cache2 \"{}\" {cache2_key}", cache.name),
    }
}

/// The store's bounds ([`store::MAX_ITEMS`] sessions,
/// [`store::MAX_RESERVED`] bytes reserved): past them, an error naming the
/// cache's `items` (and `blocksize`) setting.
pub(super) fn store_size(cache: &CacheDef) -> Result<(), ConfigError> {
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
