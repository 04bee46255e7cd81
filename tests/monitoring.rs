//! The session cache's counters as uWSGI metrics, seen the way monitoring
//! stacks see them: Debian's `stats_pusher_statsd` plugin sending to a UDP
//! listener of the test, and uWSGI's `metrics-dir` files.

use sslcache_testkit::*;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// Sessions made, more than the cache holds: evictions are certain.
const SESSIONS: usize = 40;
const CAPACITY: u64 = 16;

/// The latest value of every metric pushed to `socket` (statsd lines
/// `<prefix>.<name>:<value>|<type>`), read for at most `wait`.
fn statsd_values(socket: &UdpSocket, prefix: &str, wait: Duration) -> HashMap<String, (i64, String)> {
    let mut values = HashMap::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let Some((name, value)) = rest.split_once(':') else {
            continue;
        };
        let Some((value, kind)) = value.split_once('|') else {
            continue;
        };
        if let Ok(v) = value.parse() {
            values.insert(name.to_string(), (v, kind.trim().to_string()));
        }
    }
    values
}

/// Polls the pushed values until `check` holds for them (bounded).
fn pushed_until(
    socket: &UdpSocket,
    prefix: &str,
    what: &str,
    check: impl Fn(&HashMap<String, (i64, String)>) -> bool,
) -> HashMap<String, (i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = HashMap::new();
    while Instant::now() < deadline {
        seen.extend(statsd_values(socket, prefix, Duration::from_millis(1500)));
        if check(&seen) {
            return seen;
        }
    }
    panic!("{what}: statsd never showed it; last values {seen:?}");
}

fn value(values: &HashMap<String, (i64, String)>, name: &str) -> i64 {
    values.get(&format!("sslcache.default.{name}")).map_or(-1, |v| v.0)
}

#[test]
fn session_counters_reach_statsd_and_metrics_dir() {
    let _heavy = heavy();
    let dir = test_dir("monitoring");
    let metrics_dir = dir.join("metrics");
    std::fs::create_dir_all(&metrics_dir).unwrap();
    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let statsd_port = statsd.local_addr().unwrap().port();
    let (https, stats_port) = (free_port(), free_port());
    let cache = format!("cache = {CAPACITY}\ncache-blocksize = 4096\nssl-sessions-use-cache = true");
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, &cache)
        + &format!(
            "plugins = stats_pusher_statsd\nstats-push = statsd:127.0.0.1:{statsd_port},sslc\n\
             stats-pusher-default-freq = 1\nmetrics-dir = {}\n",
            metrics_dir.display()
        );
    let node = Uwsgi::start(&dir, "node", &ini, &[https, stats_port]);

    // Before any traffic: the counters are pushed, at zero, with their types.
    let idle = pushed_until(&statsd, "sslc.", "the idle counters", |v| {
        ["items", "hits", "misses", "evicted", "inserts"]
            .iter()
            .all(|n| value(v, n) == 0)
            && value(v, "capacity") == CAPACITY as i64
    });
    assert_eq!(idle["sslcache.default.items"].1, "g", "items is a gauge");
    assert_eq!(idle["sslcache.default.hits"].1, "c", "hits is a counter");

    // Known traffic: SESSIONS full handshakes (one stored session each,
    // TLS 1.2 without tickets), then one resumption attempt with each,
    // newest first: the evicted ones miss, and their full handshake
    // stores one more session each.
    let client = Client::new(Proto::Tls12NoTickets);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let c = client.connect(https, None, &[]).expect("full handshake");
            assert!(!c.resumed);
            c.session.expect("a session")
        })
        .collect();
    let mut resumed = 0i64;
    for s in sessions.iter().rev() {
        resumed += i64::from(client.connect(https, Some(s), &[]).expect("resumption").resumed);
    }
    let not_resumed = SESSIONS as i64 - resumed;
    assert!(resumed > 0 && not_resumed > 0, "resumed {resumed} of {SESSIONS}");

    let after = pushed_until(&statsd, "sslc.", "the counters after traffic", |v| {
        value(v, "inserts") == SESSIONS as i64 + not_resumed
            && value(v, "hits") == resumed
            && value(v, "misses") == not_resumed
            && value(v, "items") + value(v, "evicted") == value(v, "inserts")
    });
    let (items, evicted) = (value(&after, "items"), value(&after, "evicted"));
    assert!(items <= CAPACITY as i64, "items {items} over capacity");
    assert!(evicted >= SESSIONS as i64 - CAPACITY as i64, "evicted {evicted}");
    assert_eq!(items, CAPACITY as i64, "a full cache");
    assert!(value(&after, "bytes") > 0, "bytes: {after:?}");

    // The same values, as the stats server and metrics-dir files show them.
    let file = |name: &str| {
        std::fs::read_to_string(metrics_dir.join(format!("sslcache.default.{name}")))
            .unwrap_or_default()
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .parse::<i64>()
            .unwrap_or(-1)
    };
    assert!(
        eventually(Duration::from_secs(5), || file("hits") == resumed
            && file("items") == items),
        "metrics-dir: hits {} items {}",
        file("hits"),
        file("items")
    );
    assert_eq!(metric(stats_port, "sslcache.default.misses") as i64, not_resumed);
    println!(
        "statsd: inserts {}, hits {resumed}, misses {not_resumed}, items {items}, evicted {evicted}, \
         bytes {}",
        value(&after, "inserts"),
        value(&after, "bytes")
    );
    drop(node);
}
