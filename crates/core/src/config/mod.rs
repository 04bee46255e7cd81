//! Typed settings from the raw option strings uWSGI collected.
//!
//! Everything here is plain Rust: the host layer gathers the strings (from
//! our own options and from `uwsgi.exported_opts`), this module turns them
//! into [`Settings`] or one [`ConfigError`] that names the offending option.
//!
//! Here: [`Settings`] and [`resolve`]. Beside it: `options.rs` (the option
//! table), `values.rs` (numbers, booleans, lists), `cache.rs` (the cache
//! that becomes the store), `replication.rs`, `redis.rs` and `redis_tls.rs`
//! (where sessions are replicated), `repeater.rs` (the udprepeater's
//! settings), `addr.rs` (addresses); the tests in `tests.rs`.

pub mod addr;
mod cache;
pub mod options;
mod redis;
pub mod redis_tls;
mod repeater;
mod replication;
mod tickets;
mod values;

use cache::{cache2_name, default_cache, option_name, parse_cache2, store_size};
pub use cache::{CacheDef, CacheOrigin, DEFAULT_BLOCKSIZE, DEFAULT_KEYSIZE};
pub use options::RawOptions;
pub use redis::{is_insecure, is_tls, RedisServer};
pub use redis_tls::{PemFile, RedisTls};
pub use repeater::{repeater, RepeaterSettings, SUBSCRIPTION_TOLERANCE_SECS};
use replication::replication;
pub use replication::{Multicast, Replication, DEFAULT_MAX_SKEW};
use tickets::tickets;
pub use tickets::{Tickets, DEFAULT_TICKET_ROTATION, MAX_TICKET_LIFETIME, MAX_TICKET_ROTATION};
pub use values::{boolean, flag, parse_kvlist, positive, uwsgi_true, ConfigError};
use values::{err, means_default};

use crate::fresh;

/// Default `ssl-sessions-timeout`, seconds (as stock uWSGI).
pub const DEFAULT_TIMEOUT: u32 = 300;
/// A TLS session id is up to 32 bytes (SSL_MAX_SSL_SESSION_ID_LENGTH).
pub const SESSION_ID_MAX: u32 = 32;
/// Below this, most DER sessions do not fit and are not cached.
pub const SMALL_BLOCKSIZE: u32 = 1024;

/// Default and largest `ssl-sessions-fresh-wait`, milliseconds: a wait
/// longer than a router process's budget for a second could never happen.
pub const DEFAULT_FRESH_WAIT_MS: u64 = fresh::WAIT_MAX_US / 1000;
pub const MAX_FRESH_WAIT_MS: u64 = fresh::BUDGET_US_PER_SEC / 1000;

/// Default and largest `ssl-sessions-tls13-tickets`.
pub const DEFAULT_TLS13_TICKETS: u8 = 2;
pub const MAX_TLS13_TICKETS: u8 = 8;

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
    /// Longest wait, in milliseconds, for a session made an instant ago
    /// ([`crate::fresh`]); 0: never wait.
    pub fresh_wait_ms: u64,
    /// Cluster tickets, when on.
    pub tickets: Option<Tickets>,
    /// Log every session event (uWSGI's `ssl-verbose`).
    pub verbose: bool,
    /// Non-fatal remarks to log once at startup.
    pub warnings: Vec<String>,
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
    let fresh_wait_ms = match raw.fresh_wait.as_deref().map(str::trim) {
        None => DEFAULT_FRESH_WAIT_MS,
        Some("0") => 0,
        Some(v) => positive("ssl-sessions-fresh-wait", v, MAX_FRESH_WAIT_MS)?,
    };
    let verbose = raw.ssl_verbose.as_deref().is_some_and(uwsgi_true);
    let tickets = tickets(raw, &cache, &replication, timeout, &mut warnings)?;
    Ok(Some(Settings {
        cache,
        timeout,
        tls13_tickets,
        quickack,
        fresh_wait_ms,
        tickets,
        verbose,
        https_session_context,
        sslrouter_session_context: session_context("sslrouter-session-context", &raw.sslrouter_session_context)?,
        replication,
        warnings,
    }))
}

#[cfg(test)]
mod tests;
