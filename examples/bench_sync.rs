//! Warm start and repair, measured (`make bench`).
//!
//! Pull: node A holds 100,000 sessions (sent to it as stock replication
//! datagrams); node B, its peer, starts empty and pulls them. Measured: how
//! long the pull takes (B's log line), and A's resumed handshakes a second
//! (`openssl s_time -reuse`, TLS 1.2, SECONDS) while it serves the pull
//! against right before it, ROUNDS rounds (B stopped and started fresh
//! each time), medians.
//!
//! Repair traffic at 0% loss: seed Setup 2's three nodes; `openssl s_time
//! -new` makes full handshakes on node 1 for LOAD_SECONDS; then the
//! replication and sync counters of every node: bytes and datagrams of
//! sync traffic against replication traffic, per session made. Then the
//! same counters over IDLE_SECONDS without load.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sslcache_core::replication::encode_set;
use sslcache_testkit::*;

const SESSIONS: usize = 100_000;
const ROUNDS: usize = 3;

const SECONDS: u32 = 4;
const LOAD_SECONDS: u32 = 10;
const IDLE_SECONDS: u64 = 10;

fn cache_lines() -> String {
    "cache = 120000\ncache-blocksize = 1024\nssl-sessions-use-cache = true\n".to_string()
}

/// A node on 127.0.0.`i` replicating with 127.0.0.`peer`.
fn node_ini(i: usize, peer: usize, https: u16, stats_port: u16, udp: u16) -> String {
    let (crt, key) = cert("localhost");
    format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\n{}\
         ssl-sessions-timeout = 300\nhttps-session-context = foobar\n\
         https = 127.0.0.{i}:{https},{},{}\nhttp-processes = 2\nhttp-to = 127.0.0.1:{}\n\
         stats = 127.0.0.1:{stats_port}\ncache-udp-server = 127.0.0.{i}:{udp}\ncache-udp-node = 127.0.0.{peer}:{udp}\n",
        plugin_dir().display(),
        cache_lines(),
        crt.display(),
        key.display(),
        free_port(),
    )
}

/// Sends `n` synthetic sessions to `to` as stock replication datagrams,
/// paced so that none is dropped by the receiver's buffer.
fn inject(to: SocketAddr, n: usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 280;
    let mut datagram = Vec::new();
    for i in 0..n {
        let id = format!("{i:032x}");
        let der = vec![(i % 251) as u8; 180];
        encode_set(id.as_bytes(), &der, expires, &mut datagram).unwrap();
        socket.send_to(&datagram, to).unwrap();
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pull_ms(log: &str) -> Option<u64> {
    let at = log.find("live sessions in ")?;
    log[at + "live sessions in ".len()..].split(' ').next()?.parse().ok()
}

fn pull_benchmark() {
    let dir = test_dir("bench-sync-pull");
    let (https, udp) = (free_port(), free_port());
    let (stats_a, stats_b) = (free_port(), free_port());
    let _a = Uwsgi::start(&dir, "a", &node_ini(1, 2, https, stats_a, udp), &[stats_a]);
    wait_port(https, "node A");
    inject(SocketAddr::from(([127, 0, 0, 1], udp)), SESSIONS);
    assert!(
        eventually(Duration::from_secs(30), || metric(stats_a, "sslcache.default.applied")
            >= SESSIONS as u64),
        "A applied {}",
        metric(stats_a, "sslcache.default.applied")
    );
    let resumed_per_sec = |port: u16| {
        let (rate, share) = s_time(port, "-tls1_2", SECONDS);
        rate * share
    };
    // s_time connects to 127.0.0.1: node A.
    let (mut before, mut during, mut took) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        before.push(resumed_per_sec(https));
        let started = Instant::now();
        let mut b = Uwsgi::spawn(&dir, &format!("b{round}"), &node_ini(2, 1, https, stats_b, udp));
        during.push(resumed_per_sec(https));
        assert!(
            eventually(Duration::from_secs(60), || pull_ms(&b.log()).is_some()),
            "{}",
            b.log()
        );
        took.push(pull_ms(&b.log()).unwrap() as f64);
        // uWSGI's metrics are collected once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let pulled = metric(stats_b, "sslcache.default.pulled");
        if std::env::var_os("BENCH_SYNC_DEBUG").is_some() {
            for (name, port) in [("A", stats_a), ("B", stats_b)] {
                let all = stats(port);
                let m: Vec<String> = all["metrics"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, v)| k.starts_with("sslcache.default") && v["value"].as_u64() != Some(0))
                    .map(|(k, v)| format!("{}={}", &k[17..], v["value"]))
                    .collect();
                println!("{name}: {}", m.join(" "));
            }
        }
        println!(
            "round {round}: pulled {pulled} in {} ms (B started {:.1}s before the end of the measurement)",
            took[round],
            started.elapsed().as_secs_f64()
        );
        b.stop();
    }
    let (before, during) = (median(before), median(during));
    println!("\n| warm-start pull of {SESSIONS} sessions | median of {ROUNDS} |");
    println!("|---|---|");
    println!("| duration of the pull (ms) | {:.0} |", median(took));
    println!("| serving node, resumed TLS 1.2 handshakes/s, before | {before:.0} |");
    println!("| serving node, resumed TLS 1.2 handshakes/s, during the pull | {during:.0} |");
    println!("| ratio during / before | {:.2} |", during / before);
}

fn counters(stats_port: u16) -> [u64; 4] {
    let m = |name: &str| metric(stats_port, &format!("sslcache.default.{name}"));
    [m("sent"), m("sent_bytes"), m("sync_sent"), m("sync_sent_bytes")]
}

fn repair_traffic_benchmark() {
    let dir = test_dir("bench-sync-traffic");
    let (https, udp) = (free_port(), free_port());
    let stats: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Uwsgi> = (1..=3)
        .map(|i| {
            let ini = seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &setup2_replication(i, 3, udp));
            Uwsgi::start(&dir, &format!("node{i}"), &ini, &[stats[i - 1]])
        })
        .collect();
    let node1 = SocketAddr::from(([127, 0, 0, 1], https));
    wait_addr(node1, "node 1");
    std::thread::sleep(Duration::from_secs(2));
    let sum = |stats: &[u16]| {
        stats.iter().map(|&p| counters(p)).fold([0u64; 4], |mut acc, c| {
            acc.iter_mut().zip(c).for_each(|(a, c)| *a += c);
            acc
        })
    };
    let start = sum(&stats);
    let out = std::process::Command::new("openssl")
        .args(["s_time", "-connect", &node1.to_string(), "-new", "-tls1_2", "-time"])
        .arg(LOAD_SECONDS.to_string())
        .output()
        .expect("openssl s_time");
    assert!(out.status.success());
    // Every session settled and compared.
    std::thread::sleep(Duration::from_secs(4));
    let loaded = sum(&stats);
    let sessions = cache_stats(stats[0], "default")["items"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let idle = sum(&stats);
    let d = |a: [u64; 4], b: [u64; 4], i: usize| (b[i] - a[i]) as f64;
    println!("\n| 3 nodes, 0% loss, {sessions} sessions made on node 1 in {LOAD_SECONDS} s | value |");
    println!("|---|---|");
    println!(
        "| replication: datagrams, bytes | {:.0}, {:.0} |",
        d(start, loaded, 0),
        d(start, loaded, 1)
    );
    println!(
        "| sync (digests, keys, wants, repairs): datagrams, bytes | {:.0}, {:.0} |",
        d(start, loaded, 2),
        d(start, loaded, 3)
    );
    println!(
        "| sync bytes / replication bytes | {:.1}% |",
        100.0 * d(start, loaded, 3) / d(start, loaded, 1).max(1.0)
    );
    println!(
        "| sync per session: datagrams, bytes | {:.3}, {:.1} |",
        d(start, loaded, 2) / sessions.max(1) as f64,
        d(start, loaded, 3) / sessions.max(1) as f64
    );
    println!(
        "| idle cluster: sync datagrams/s, bytes/s (all nodes) | {:.1}, {:.0} |",
        d(loaded, idle, 2) / IDLE_SECONDS as f64,
        d(loaded, idle, 3) / IDLE_SECONDS as f64
    );
}

fn main() {
    pull_benchmark();
    repair_traffic_benchmark();
}
