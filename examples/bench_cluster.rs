//! Resumption throughput through a 3-node cluster, with and without the
//! plugin, behind HAProxy (tcp, round robin) and behind uWSGI's rawrouter
//! (`make bench`).
//!
//! Method: seed Setup 2 on 127.0.0.1-3 (two HTTPS router processes per
//! node), on stock uWSGI and with sslcache; `openssl s_time -reuse -www /`
//! through the balancer for SECONDS per run, alternating stock and sslcache,
//! ROUNDS rounds per TLS version; medians of connections per wall-clock
//! second and of the share of connections resumed. Every connection goes
//! to the next node, so stock resumes only when a ticket happens to come
//! back to the node that issued it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;

fn nodes(dir: &std::path::Path, plugin: bool) -> (Vec<Uwsgi>, Vec<SocketAddr>) {
    std::fs::create_dir_all(dir).unwrap();
    let (https, udp) = (free_port(), free_port());
    let nodes = (1..=3)
        .map(|i| {
            let stats_port = free_port();
            let mut ini = seed_setup2_node(&plugin_dir(), i, https, stats_port, &setup2_replication(i, 3, udp));
            if !plugin {
                ini = ini.replace("plugins = sslcache\n", "plugins = http\n");
            }
            Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port])
        })
        .collect();
    let backends: Vec<SocketAddr> = (1..=3u8).map(|i| SocketAddr::from(([127, 0, 0, i], https))).collect();
    for b in &backends {
        assert!(eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(b, Duration::from_millis(200)).is_ok()
        }));
    }
    (nodes, backends)
}

fn main() {
    let dir = test_dir("bench-cluster");
    let (_stock, stock_backends) = nodes(&dir.join("stock"), false);
    let (_ours, backends) = nodes(&dir.join("sslcache"), true);
    let (stock_lb, lb) = (free_port(), free_port());
    let _p1 = haproxy(&dir.join("stock"), stock_lb, &stock_backends);
    let _p2 = haproxy(&dir.join("sslcache"), lb, &backends);

    println!("3 nodes behind HAProxy (round robin), {ROUNDS} alternating rounds of {SECONDS} s, medians\n");
    println!("| TLS | stock: conn/s | stock: resumed | sslcache: conn/s | sslcache: resumed |");
    println!("|---|---|---|---|---|");
    for version in ["-tls1_2", "-tls1_3"] {
        let mut rows = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            let (a, ar) = s_time(stock_lb, version, SECONDS);
            let (b, br) = s_time(lb, version, SECONDS);
            for (row, v) in rows.iter_mut().zip([a, ar, b, br]) {
                row.push(v);
            }
        }
        let [a, ar, b, br] = rows.map(median);
        println!(
            "| {} | {a:.0} | {:.0}% | {b:.0} | {:.0}% |",
            &version[4..].replace('_', "."),
            ar * 100.0,
            br * 100.0
        );
    }

    let rr = free_port();
    let _router = rawrouter(&dir, rr, &backends);
    let (rate, resumed) = s_time(rr, "-tls1_2", SECONDS);
    println!(
        "\nBehind uWSGI's rawrouter instead (sslcache, TLS 1.2): {rate:.0} conn/s, {:.0}% resumed",
        resumed * 100.0
    );
}
