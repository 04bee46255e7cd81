//! `make demo`: a local demo of sslcache with the real uWSGI binary.
//!
//! Starts the seed's "Setup 1" node on 127.0.0.1 with the plugin, and the
//! same node without it, then reconnects TLS clients (TLS 1.2 without
//! tickets, and TLS 1.3) to each and prints how many handshakes resumed and
//! on how many router processes, and the session cache's stats entry.

#[path = "../tests/support/mod.rs"]
mod support;

use support::*;

fn main() {
    let reconnects = 100;
    let dir = test_dir("demo");
    println!("sslcache demo: uWSGI nodes on 127.0.0.1 (files in {})\n", dir.display());

    let (https, stats_port) = (free_port(), free_port());
    let node = Uwsgi::start(
        &dir,
        "with-sslcache",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE),
        &[https, stats_port],
    );
    let (stock_https, stock_stats) = (free_port(), free_port());
    let stock_ini =
        seed_setup1(&plugin_dir(), stock_https, stock_stats, 4, "").replace("plugins = sslcache\n", "plugins = http\n");
    let stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_https]);

    for line in node.log().lines().filter(|l| l.starts_with("[sslcache]")) {
        println!("node log: {line}");
    }
    println!();
    println!("{:<28} {:>22} {:>22}", "client", "stock uWSGI", "with sslcache");
    for (label, proto) in [
        ("TLS 1.2, no tickets", Proto::Tls12NoTickets),
        ("TLS 1.3", Proto::Tls13),
    ] {
        let a = Client::new(proto).reconnects(stock_https, reconnects, &stock.children());
        let b = Client::new(proto).reconnects(https, reconnects, &node.children());
        println!(
            "{label:<28} {:>13} resumed {:>13} resumed",
            format!("{}/{}", a.resumed, reconnects - 1),
            format!("{}/{}", b.resumed, reconnects - 1)
        );
        println!(
            "{:<28} {:>22} {:>22}",
            "  router processes used",
            a.owners.len(),
            b.owners.len()
        );
    }
    println!("\nstats server, caches[\"default\"] of the node with sslcache:");
    println!(
        "{}",
        serde_json::to_string_pretty(&cache_stats(stats_port, "default")).unwrap()
    );
}
