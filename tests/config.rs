//! Configuration handling in the real uWSGI: every bad value is one clear
//! `[sslcache]` line and an exit, never a crash or a hang; good values work
//! whatever the order of the lines.

use sslcache_testkit::*;

/// Starts uWSGI on `body` (with the plugin and one https listener) and
/// expects it to exit with status 1 and exactly one `[sslcache]` line,
/// containing `expected`.
fn fails_with(name: &str, body: &str, expected: &str) {
    let dir = test_dir(name);
    let (crt, key) = cert("localhost");
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\nhttps = 127.0.0.1:{},{},{}\n{body}\n",
        plugin_dir().display(),
        free_port(),
        crt.display(),
        key.display()
    );
    assert_refused(&dir, name, &ini, expected);
}

#[test]
fn cache_name_not_defined() {
    fails_with(
        "undefined-name",
        "cache = 100\ncache2 = name=other,items=10\nssl-sessions-use-cache = sessions",
        "ssl-sessions-use-cache = sessions: no cache named \"sessions\" is defined (defined: other, default)",
    );
}

#[test]
fn no_cache_at_all() {
    fails_with("no-cache", "ssl-sessions-use-cache = true", "none is defined");
    fails_with(
        "no-cache-named",
        "ssl-session-use-cache = ssl",
        "no cache is defined at all",
    );
}

#[test]
fn non_numeric_and_zero_sizes() {
    fails_with(
        "items-text",
        "cache = many\nssl-sessions-use-cache = true",
        "cache = \"many\" is not a number",
    );
    fails_with(
        "items-zero",
        "cache = 0\nssl-sessions-use-cache = true",
        "cache must be greater than 0",
    );
    fails_with(
        "blocksize-text",
        "cache = 10\ncache-blocksize = 4k\nssl-sessions-use-cache = true",
        "cache-blocksize = \"4k\" is not a number",
    );
    fails_with(
        "cache2-items",
        "cache2 = name=ssl,items=0\nssl-sessions-use-cache = ssl",
        "cache2 \"ssl\" items must be greater than 0",
    );
    fails_with(
        "cache2-no-items",
        "cache2 = name=ssl,blocksize=4096\nssl-sessions-use-cache = ssl",
        "cache2 \"ssl\" needs items=N",
    );
    fails_with(
        "timeout-text",
        "cache = 10\nssl-sessions-use-cache = true\nssl-sessions-timeout = soon",
        "ssl-sessions-timeout = \"soon\" is not a number",
    );
}

/// Capacity is bounded (10 M sessions, 1 TiB reserved): past it, one line
/// naming the setting; the review's `cache = 1073741823` was accepted.
#[test]
fn sizes_past_the_store_bounds() {
    fails_with(
        "items-bound",
        "cache = 1073741823\nssl-sessions-use-cache = true",
        "cache = 1073741823 is too large (at most 10000000 sessions)",
    );
    fails_with(
        "cache2-items-bound",
        "cache2 = name=ssl,items=10000001\nssl-sessions-use-cache = ssl",
        "cache2 \"ssl\" items = 10000001 is too large (at most 10000000 sessions)",
    );
    let reserved = sslcache_core::store::Limits {
        capacity: 10_000_000,
        keysize: 2048,
        blocksize: 1 << 20,
    }
    .reserved_bytes()
    .unwrap();
    fails_with(
        "reserved-bound",
        "cache = 10000000\ncache-blocksize = 1048576\nssl-sessions-use-cache = true",
        &format!(
            "cache = 10000000 with cache-blocksize = 1048576 would reserve {} GiB for the store (at most 1024 GiB): \
             lower either",
            reserved.div_ceil(1 << 30)
        ),
    );
}

#[test]
fn keysize_too_small_for_a_session_id() {
    fails_with(
        "keysize",
        "cache2 = name=ssl,items=10,keysize=16\nssl-sessions-use-cache = ssl",
        "keysize = 16 is too small for a TLS session id (32 bytes)",
    );
}

#[test]
fn session_context_too_long() {
    fails_with(
        "sid-long",
        "cache = 10\nssl-sessions-use-cache = true\nhttps-session-context = 0123456789012345678901234567890123456789",
        "https-session-context = 0123456789012345678901234567890123456789 is 40 bytes long",
    );
}

/// Without TLS contexts the node runs, with one warning.
#[test]
fn warns_without_tls_context() {
    let dir = test_dir("no-tls");
    let stats_port = free_port();
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\ncache = 10\nssl-sessions-use-cache = true\n\
         http = 127.0.0.1:{}\nstats = 127.0.0.1:{stats_port}\n",
        plugin_dir().display(),
        free_port()
    );
    let node = Uwsgi::start(&dir, "node", &ini, &[stats_port]);
    let log = node.log();
    assert!(log.contains("[sslcache] warning: no TLS context"), "{log}");
    assert!(log.contains("TLS contexts hooked: 0"), "{log}");
}

/// Without ssl-sessions-use-cache the plugin stays out of the way: the
/// core keeps its default cache.
#[test]
fn inactive_without_use_cache() {
    let dir = test_dir("inactive");
    let stats_port = free_port();
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\ncache = 10\nstats = 127.0.0.1:{stats_port}\n\
         http = 127.0.0.1:{}\n",
        plugin_dir().display(),
        free_port()
    );
    let node = Uwsgi::start(&dir, "node", &ini, &[stats_port]);
    assert!(
        node.log().contains("ssl-sessions-use-cache is not set"),
        "{}",
        node.log()
    );
    // The core's own default cache, with the core's hash.
    assert_eq!(cache_stats(stats_port, "default")["hash"], "djb33x");
}

/// The seed said `cache` must come before `ssl-sessions-use-cache` and
/// `https`: no longer. Lines in reverse order, context after `https` (only
/// uWSGI's own rule stays: plugin-dir before the plugins it serves).
#[test]
fn order_of_lines_does_not_matter() {
    let dir = test_dir("order");
    let (https, stats_port) = (free_port(), free_port());
    let (crt, key) = cert("localhost");
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nstats = 127.0.0.1:{stats_port}\nhttps = 127.0.0.1:{https},{},{}\n\
         https-session-context = foobar\nssl-sessions-timeout = 120\nssl-sessions-use-cache = true\n\
         cache-blocksize = 4096\ncache = 500\nmaster = true\nplugins = sslcache\n",
        plugin_dir().display(),
        crt.display(),
        key.display()
    );
    let node = Uwsgi::start(&dir, "node", &ini, &[https, stats_port]);
    assert!(node.log().contains("500 sessions"), "{}", node.log());
    assert!(node.log().contains("timeout 120s"), "{}", node.log());
    let out = Client::new(Proto::Tls12NoTickets).reconnects(https, 30, &[]);
    out.assert_resumed("", "");
    let cache = cache_stats(stats_port, "default");
    assert_eq!(cache["max_items"], 500);
    assert!(cache["hits"].as_u64().unwrap() >= 29, "{cache}");
}

/// Keys a stock cache2 accepts but that mean nothing here: one warning.
#[test]
fn meaningless_cache2_keys_warn_once() {
    let dir = test_dir("keys");
    let (https, stats_port) = (free_port(), free_port());
    let lines =
        "cache2 = name=ssl,items=100,blocksize=4096,bitmap=1,store_delete=1,hashsize=99\nssl-sessions-use-cache = ssl";
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 1, lines),
        &[https],
    );
    let warnings: Vec<String> = node
        .log()
        .lines()
        .filter(|l| l.contains("[sslcache] warning"))
        .map(String::from)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("bitmap, store_delete, hashsize"),
        "{}",
        warnings[0]
    );
}

/// The options and their help texts are visible in `uwsgi --help`.
#[test]
fn options_are_listed_in_help() {
    let out = std::process::Command::new(uwsgi_binary())
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["--plugins", "sslcache", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--ssl-sessions-use-cache",
        "--ssl-session-use-cache",
        "--ssl-sessions-timeout",
        "--ssl-session-timeout",
        "--ssl-sessions-multicast-if",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{option} ")))
            .unwrap_or_else(|| panic!("{option} missing"));
        assert!(line.contains("[sslcache]"), "{line}");
    }
}
