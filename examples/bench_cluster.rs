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

use std::net::SocketAddr;
use std::time::Duration;

use sslcache_testkit::*;

const ROUNDS: usize = 3;
const SECONDS: u32 = 4;

fn nodes(dir: &std::path::Path, plugin: bool) -> (Vec<Uwsgi>, Vec<SocketAddr>) {
    nodes_with(dir, plugin, |ini| ini)
}

/// Three nodes (seed Setup 2), each ini passed through `adapt` first.
fn nodes_with(dir: &std::path::Path, plugin: bool, adapt: impl Fn(String) -> String) -> (Vec<Uwsgi>, Vec<SocketAddr>) {
    std::fs::create_dir_all(dir).unwrap();
    let (https, udp) = (free_port(), free_port());
    let nodes = (1..=3)
        .map(|i| {
            let stats_port = free_port();
            let mut ini = seed_setup2_node(&plugin_dir(), i, https, stats_port, &setup2_replication(i, 3, udp));
            if !plugin {
                ini = ini.replace("plugins = sslcache\n", "plugins = http\n");
            }
            let ini = adapt(ini);
            Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port])
        })
        .collect();
    let backends = wait_nodes(3, https);
    (nodes, backends)
}

fn main() {
    let dir = test_dir("bench-cluster");
    // `BENCH_PART=rawrouter`: the rawrouter comparison alone.
    if std::env::var("BENCH_PART").as_deref() != Ok("rawrouter") {
        behind_haproxy(&dir);
    }
    rawrouter_side_by_side(&dir);
}

/// Stock uWSGI and sslcache nodes behind HAProxy.
fn behind_haproxy(dir: &std::path::Path) {
    let (stock, stock_backends) = nodes(&dir.join("stock"), false);
    let (ours, backends) = nodes(&dir.join("sslcache"), true);
    let (stock_lb, lb) = (free_port(), free_port());
    let p1 = haproxy(&dir.join("stock"), stock_lb, &stock_backends);
    let p2 = haproxy(&dir.join("sslcache"), lb, &backends);

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

    drop((stock, ours, p1, p2));
}

/// Resumed TLS 1.2 connections per second through the rawrouter and
/// HAProxy in front of the same nodes, and through the rawrouter in front
/// of nodes without the final ACK push.
fn rawrouter_side_by_side(dir: &std::path::Path) {
    let backend = uwsgi_backend(Duration::from_secs(600));
    let live = |ini: String| with_http_to(&ini, backend);
    let (_on, on_backends) = nodes_with(&dir.join("quickack"), true, live);
    let (_off, off_backends) = nodes_with(&dir.join("no-quickack"), true, |ini| {
        live(ini) + "ssl-sessions-quickack = false\n"
    });
    let (hp, rr, rr_off) = (free_port(), free_port(), free_port());
    let _h = haproxy(&dir.join("quickack"), hp, &on_backends);
    let _r = rawrouter(&dir.join("quickack"), rr, &on_backends);
    let _r_off = rawrouter(&dir.join("no-quickack"), rr_off, &off_backends);
    let balancers = [
        ("HAProxy", hp),
        ("rawrouter", rr),
        ("rawrouter, ssl-sessions-quickack = false", rr_off),
    ];
    let mut rows: Vec<[Vec<f64>; 3]> = balancers.iter().map(|_| Default::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, port), row) in balancers.iter().zip(rows.iter_mut()) {
            let (rate, resumed) = s_time(*port, "-tls1_2", SECONDS);
            row[0].push(rate);
            row[1].push(resumed);
            row[2].push(resuming_client(*port, SECONDS, &mut None).0);
        }
    }
    let medians: Vec<[f64; 3]> = rows.into_iter().map(|r| r.map(median)).collect();
    let haproxy = medians[0];
    println!("\nSeed Setup 2 (3 nodes, live backend), TLS 1.2 resumed, {ROUNDS} alternating rounds of {SECONDS} s, medians\n");
    println!("| balancer | s_time: conn/s | s_time: resumed | × HAProxy | request client: conn/s | × HAProxy |");
    println!("|---|---|---|---|---|---|");
    for ((name, _), [rate, resumed, requests]) in balancers.iter().zip(&medians) {
        println!(
            "| {name} | {rate:.0} | {:.0}% | {:.2} | {requests:.0} | {:.2} |",
            resumed * 100.0,
            rate / haproxy[0],
            requests / haproxy[2]
        );
    }
}
