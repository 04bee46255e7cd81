//! `make demo`: a local demo cluster of sslcache with the real uWSGI binary.
//!
//! Starts the seed's "Setup 2" on loopback: three uWSGI HTTPS routers on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3, replicating their sessions over UDP
//! (`cache-udp-server` / `cache-udp-node`), behind HAProxy in TCP
//! round-robin mode; then the same three nodes on stock uWSGI. A TLS client
//! reconnects through each balancer, resuming its last session each time, so
//! every reconnect lands on another node. Prints how many handshakes
//! resumed, and each node's session cache and replication counters from its
//! stats server.

use std::time::Duration;

use sslcache_testkit::*;

const NODES: usize = 3;
const RECONNECTS: usize = 90;

struct Cluster {
    _nodes: Vec<Uwsgi>,
    _balancer: Process,
    port: u16,
    stats: Vec<u16>,
}

fn cluster(dir: &std::path::Path, with_plugin: bool) -> Cluster {
    std::fs::create_dir_all(dir).unwrap();
    let (https, udp) = (free_port(), free_port());
    let stats: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let nodes: Vec<Uwsgi> = (1..=NODES)
        .map(|i| {
            let mut ini = seed_setup2_node(
                &plugin_dir(),
                i,
                https,
                stats[i - 1],
                &setup2_replication(i, NODES, udp),
            );
            if !with_plugin {
                ini = ini.replace("plugins = sslcache\n", "plugins = http\n");
            }
            Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats[i - 1]])
        })
        .collect();
    let backends = wait_nodes(NODES, https);
    let port = free_port();
    let balancer = haproxy(dir, port, &backends);
    Cluster {
        _nodes: nodes,
        _balancer: balancer,
        port,
        stats,
    }
}

fn main() {
    let dir = test_dir("demo");
    println!(
        "sslcache demo: 3 uWSGI nodes on 127.0.0.1-3 behind HAProxy (round robin); files in {}\n",
        dir.display()
    );
    let stock = cluster(&dir.join("stock"), false);
    let ours = cluster(&dir.join("sslcache"), true);

    println!(
        "{:<24} {:>24} {:>24}",
        "client reconnecting", "stock uWSGI cluster", "sslcache cluster"
    );
    for (label, proto) in [
        ("TLS 1.2, no tickets", Proto::Tls12NoTickets),
        ("TLS 1.3", Proto::Tls13),
    ] {
        let a = Client::new(proto).reconnects(stock.port, RECONNECTS, &[]);
        let b = Client::new(proto).reconnects(ours.port, RECONNECTS, &[]);
        let show = |o: &Outcome| {
            format!(
                "{}/{} resumed ({:.0}%)",
                o.resumed,
                o.attempts - 1,
                o.resumption_rate() * 100.0
            )
        };
        println!("{label:<24} {:>24} {:>24}", show(&a), show(&b));
    }

    // Metrics are collected by uWSGI once a second.
    std::thread::sleep(Duration::from_millis(1500));
    println!("\nsslcache nodes, from their stats servers (caches[\"default\"] and metrics sslcache.default.*):");
    println!(
        "{:<10} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8}",
        "node", "items", "hits", "miss", "full", "sent", "received", "applied"
    );
    for (i, &port) in ours.stats.iter().enumerate() {
        let c = cache_stats(port, "default");
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        println!(
            "{:<10} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8}",
            format!("127.0.0.{}", i + 1),
            n("items"),
            n("hits"),
            n("miss"),
            n("full"),
            metric(port, "sslcache.default.sent"),
            metric(port, "sslcache.default.received"),
            metric(port, "sslcache.default.applied")
        );
    }
    println!("\nEvery reconnect reached another node: sessions resumed there because each node");
    println!("replicated its new sessions to the others. Stock uWSGI resumes only its own tickets.");
}
