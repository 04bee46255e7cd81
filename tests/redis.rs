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
    /// Each node relays requests to a live backend (as in production: a
    /// client's next connection comes after a response, not within the
    /// fraction of a millisecond a dead backend's 502 takes).
    fn start(dir: &Path, redis: u16, key: Option<&Path>, https: u16) -> Fleet {
        let backend = uwsgi_backend(Duration::from_secs(300));
        let mut nodes = Vec::new();
        let mut stats = Vec::new();
        for i in 1..=3 {
            let stats_port = free_port();
            let mut lines = format!("ssl-sessions-redis = redis://127.0.0.1:{redis}\n{}", std::env::var("EXTRA").unwrap_or_default());
            if let Some(k) = key {
                lines += &format!("cache-udp-key = {}\n", k.display());
            }
            let ini = with_http_to(&seed_setup2_node(&plugin_dir(), i, https, stats_port, &lines), backend);
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
    let r12 = rate(&Client::new(Proto::Tls12NoTickets).reconnects(lb, RECONNECTS, &[]));
    let r13 = rate(&Client::new(Proto::Tls13).reconnects(lb, RECONNECTS, &[]));
    println!("{name}: TLS 1.2 without tickets {:.1}%, TLS 1.3 {:.1}%", r12 * 100.0, r13 * 100.0);
    assert!(r12 >= 0.99 && r13 >= 0.99, "resumption {r12} {r13}");
    for &port in &fleet.stats {
        // uWSGI's metrics thread copies the counters once a second.
        assert!(eventually(Duration::from_secs(5), || metric(
            port,
            "sslcache.default.redis_published"
        ) > 0));
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
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());
    let pre = Client::new(Proto::Tls12NoTickets).reconnects(lb, 300, &[]);
    println!("tls12 {}", pre.resumed);
    let client = Client::new(Proto::Tls13);
    let mut session = None;
    let mut failed = Vec::new();
    for i in 0..300 {
        let c = client.connect(lb, session.as_ref(), &[]).unwrap();
        if i > 0 && !c.resumed {
            failed.push(i);
        }
        if c.session.is_some() {
            session = c.session;
        }
    }
    println!("failed at {failed:?}");
    for &p in &fleet.stats {
        let all = stats(p);
        let m: Vec<String> = all["metrics"].as_object().unwrap().iter().filter(|(k, v)| k.starts_with("sslcache") && v["value"].as_u64().unwrap_or(0) > 0).map(|(k, v)| format!("{}={}", &k[17..], v["value"])).collect();
        println!("{}", m.join(" "));
    }
}
