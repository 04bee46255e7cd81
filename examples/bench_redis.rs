//! Replication through Redis (`make bench`):
//!
//! 1. **An outage costs no handshake.** Seed Setup 2's three nodes with
//!    `ssl-sessions-redis` only (no UDP), a live uwsgi backend behind each,
//!    behind HAProxy. A client resumes one TLS 1.2 session over and over
//!    (handshake, `GET /`, response read and checked, close_notify;
//!    TCP_NODELAY), SECONDS right before Redis is stopped and SECONDS while
//!    it is down, ROUNDS rounds (Redis started again, empty, between
//!    rounds, and a new session made); medians of resumed connections/s,
//!    their ratio, and every failed handshake counted.
//! 2. **What replication costs per node as the fleet grows**, UDP full
//!    mesh, multicast (pinned to 127.0.0.1) and Redis pub/sub: N real
//!    replication engines in this process (the plugin's own: a sender per
//!    node, each node's receiver thread, Redis writer and subscriber), each
//!    node storing RATE new sessions/s of 150 bytes for SIM_SECONDS.
//!    Datagrams and bytes sent and received per node are counted (UDP: the
//!    engines' counters; Redis: the server's `INFO stats` byte totals split
//!    over the nodes, plus the messages each subscriber received) and
//!    scaled linearly to 1,000 new sessions/s per node: every cost here is
//!    per session, none depends on the rate. (50 nodes × 49 peers × 1,000/s
//!    would be 2.45 million datagrams/s: more than this 2-core machine
//!    sends, hence the scaling.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sslcache_core::config::{Multicast, RedisServer, Replication};
use sslcache_core::replication::{Observer, Replicator};
use sslcache_core::store::{Limits, Store};
use sslcache_testkit::*;

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;
const RATE: u64 = 20;
const SIM_SECONDS: u64 = 3;
const VALUE: usize = 150;

fn main() {
    let dir = test_dir("bench-redis");
    if std::env::var("BENCH_PART").as_deref() != Ok("fleet") {
        outage(&dir);
    }
    fleet_sizes();
}

fn outage(dir: &std::path::Path) {
    let redis_port = free_port();
    let backend = uwsgi_backend(Duration::from_secs(600));
    let https = free_port();
    let nodes: Vec<Uwsgi> = (1..=3)
        .map(|i| {
            let stats_port = free_port();
            let lines = format!("ssl-sessions-redis = redis://127.0.0.1:{redis_port}\n");
            let ini = with_http_to(&seed_setup2_node(&plugin_dir(), i, https, stats_port, &lines), backend);
            Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port])
        })
        .collect();
    let backends = wait_nodes(3, https);
    let lb = free_port();
    let _proxy = haproxy(dir, lb, &backends);
    let (mut before, mut during, mut failed) = (Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        let redis = redis_server(dir, &format!("redis{round}"), redis_port);
        std::thread::sleep(Duration::from_secs(2));
        let mut session = None;
        // The session is made, and reaches every node, before the count.
        resuming_client(lb, 1, &mut session);
        std::thread::sleep(Duration::from_millis(200));
        let (b, f) = resuming_client(lb, SECONDS, &mut session);
        drop(redis);
        let (d, g) = resuming_client(lb, SECONDS, &mut session);
        before.push(b);
        during.push(d);
        failed += f + g;
    }
    let (b, d) = (median(before), median(during));
    println!(
        "Redis outage: 3 nodes with ssl-sessions-redis only behind HAProxy, a client resuming one TLS 1.2 session, \
         {ROUNDS} rounds of {SECONDS} s, medians\n"
    );
    println!("| | resumed conn/s |");
    println!("|---|---|");
    println!("| Redis up, right before | {b:.0} |");
    println!("| Redis down | {d:.0} |");
    println!(
        "\nduring / before = {:.2}; failed handshakes in all rounds: {failed}\n",
        d / b
    );
    drop(nodes);
}

struct Run(AtomicBool);

impl Observer for Run {
    fn keep_running(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn store() -> Arc<Store> {
    Arc::new(
        Store::create(Limits {
            capacity: 100_000,
            keysize: 2048,
            blocksize: 4096,
        })
        .unwrap(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Mesh {
    Udp,
    Multicast,
    Redis,
}

/// Per node and per new session: (datagrams sent, bytes sent, datagrams
/// received, bytes received).
fn simulate(nodes: usize, mesh: Mesh, redis_port: u16) -> (f64, f64, f64, f64) {
    let run = Arc::new(Run(AtomicBool::new(true)));
    let group_port = free_port();
    let group: std::net::SocketAddr = format!("239.255.17.23:{group_port}").parse().unwrap();
    let pinned = Multicast {
        interface: Some(std::net::Ipv4Addr::LOCALHOST),
        ttl: 1,
        loopback: true,
    };
    let redis = vec![RedisServer {
        url: format!("redis://127.0.0.1:{redis_port}"),
        shown: format!("redis://127.0.0.1:{redis_port}"),
    }];
    // Receivers first (their ports), then each node's sending side.
    let receivers: Vec<Arc<Replicator>> = (0..nodes)
        .map(|_| {
            let settings = match mesh {
                Mesh::Udp => Replication {
                    servers: vec!["127.0.0.1:0".parse().unwrap()],
                    peer_sync: false,
                    ..Replication::default()
                },
                Mesh::Multicast => Replication {
                    servers: vec![group],
                    multicast: pinned,
                    peer_sync: false,
                    ..Replication::default()
                },
                Mesh::Redis => Replication {
                    redis: redis.clone(),
                    peer_sync: false,
                    ..Replication::default()
                },
            };
            Arc::new(Replicator::new(&settings, None, store(), 300, false, "sim").unwrap())
        })
        .collect();
    let ports: Vec<std::net::SocketAddr> = receivers
        .iter()
        .flat_map(|r| r.receiving_on())
        .filter_map(|a| a.parse().ok())
        .collect();
    let senders: Vec<Arc<Replicator>> = match mesh {
        Mesh::Redis => receivers.clone(),
        _ => (0..nodes)
            .map(|i| {
                let settings = Replication {
                    nodes: match mesh {
                        Mesh::Udp => ports
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, p)| *p)
                            .collect(),
                        _ => vec![group],
                    },
                    multicast: pinned,
                    peer_sync: false,
                    ..Replication::default()
                };
                Arc::new(Replicator::new(&settings, None, store(), 300, false, "sim").unwrap())
            })
            .collect(),
    };
    for r in &receivers {
        r.start_receivers(run.clone(), false);
    }
    let redis_bytes = || {
        let info = std::process::Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "INFO", "stats"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0.0)
        };
        (field("total_net_input_bytes:"), field("total_net_output_bytes:"))
    };
    std::thread::sleep(Duration::from_millis(if mesh == Mesh::Redis { 1500 } else { 200 }));
    let redis_before = redis_bytes();
    let expires = sslcache_core::clock::unix_secs() + 300;
    let total = RATE * SIM_SECONDS;
    let started = Instant::now();
    for k in 0..total {
        for (i, s) in senders.iter().enumerate() {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&k.to_le_bytes());
            id[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            s.stored(&id, &[7; VALUE], expires, sslcache_core::record::Origin::Local);
        }
        let due = started + Duration::from_secs_f64((k + 1) as f64 / RATE as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let redis_after = redis_bytes();
    run.0.store(false, Ordering::Relaxed);
    let per = (nodes as u64 * total) as f64;
    let sum = |f: &dyn Fn(&Replicator) -> u64, of: &[Arc<Replicator>]| of.iter().map(|r| f(r) as f64).sum::<f64>();
    let received = sum(&|r| r.counters().received.load(Ordering::Relaxed), &receivers) / per;
    match mesh {
        Mesh::Redis => {
            let published = sum(&|r| r.counters().redis_published.load(Ordering::Relaxed), &senders) / per;
            // Redis' own byte counts: what the nodes sent it, what it sent them.
            let (sent_bytes, received_bytes) = (
                (redis_after.0 - redis_before.0) / per,
                (redis_after.1 - redis_before.1) / per,
            );
            (published, sent_bytes, received, received_bytes)
        }
        _ => {
            let sent = sum(&|r| r.counters().sent.load(Ordering::Relaxed), &senders) / per;
            let sent_bytes = sum(&|r| r.counters().sent_bytes.load(Ordering::Relaxed), &senders) / per;
            // Every datagram received is one some node sent to it.
            let received_bytes = sent_bytes / sent.max(1.0) * received;
            (sent, sent_bytes, received, received_bytes)
        }
    }
}

fn fleet_sizes() {
    let dir = test_dir("bench-redis-sim");
    let redis_port = free_port();
    let _redis = redis_server(&dir, "redis", redis_port);
    println!(
        "Replication cost per node at 1,000 new sessions/s per node (150-byte sessions; simulated with real \
         engines at {RATE}/s per node for {SIM_SECONDS} s, scaled)\n"
    );
    println!("| nodes | transport | datagrams sent/s | KB sent/s | datagrams received/s | KB received/s |");
    println!("|---|---|---|---|---|---|");
    for nodes in [3usize, 10, 50] {
        for (mesh, name) in [
            (Mesh::Udp, "UDP full mesh"),
            (Mesh::Multicast, "multicast"),
            (Mesh::Redis, "Redis pub/sub"),
        ] {
            let (sent, sent_bytes, received, received_bytes) = simulate(nodes, mesh, redis_port);
            println!(
                "| {nodes} | {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
                sent * 1000.0,
                sent_bytes,
                received * 1000.0,
                received_bytes
            );
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &redis_port.to_string(), "FLUSHALL"])
                .output();
        }
    }
    println!(
        "\n(Redis: one pipelined SET + PUBLISH per session sent, every subscriber receives every node's \
         sessions, its own included; the Redis server itself receives nodes × 1,000 and sends nodes² × 1,000 \
         messages a second.)"
    );
}
