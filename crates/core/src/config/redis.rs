//! Redis settings: each server's URL checked (`redis://` or `rediss://`;
//! a password never appears in errors), and the CA and client certificate
//! of `rediss://` servers read ([`super::redis_tls`]) and checked to apply
//! to the servers given.

use super::cache::{option_name, CacheDef};
use super::redis_tls::{self, RedisTls};
use super::values::{err, ConfigError};

/// A Redis server, as configured (`redis://` or `rediss://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisServer {
    /// The URL as given (it may hold a password: never logged whole).
    pub url: String,
    /// `host:port`, for logs.
    pub shown: String,
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
pub(super) fn redis_tls(
    cache: &CacheDef,
    redis: &[RedisServer],
    redis_cluster: &[RedisServer],
) -> Result<RedisTls, ConfigError> {
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
pub(super) fn redis_server(option: &str, value: &str) -> Result<RedisServer, ConfigError> {
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
