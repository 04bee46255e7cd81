//! Cluster tickets (`ssl-sessions-tickets = cluster`) side by side with
//! stock uWSGI's own tickets and with sslcache's store mode, in one run
//! (`make bench`; `BENCH_PART=rate` or `BENCH_PART=cost` runs one part).
//!
//! Part 1, resumed connections per second on one node. Method: two uWSGI
//! nodes with the seed's Setup 1 on 127.0.0.1 (HTTPS router,
//! `http-processes = 4`): stock uWSGI (it resumes with the ticket keys
//! OpenSSL made for its context) and sslcache with a cluster key and
//! `ssl-sessions-tickets = cluster`. The client is `openssl s_time -reuse
//! -www /` (it resumes by ticket) for 4 s against one node then the other,
//! alternating, 5 rounds per TLS version; each run is checked to have
//! resumed all but its first connection. Reported: the median of each
//! node's rates (connections / wall-clock seconds) and the median of the
//! per-round ratios.
//!
//! Part 2, what a resumed client costs a 3-node cluster. Method: seed Setup
//! 2's three nodes sealed with one key behind HAProxy (round robin), once in
//! store mode (tickets off: TLS 1.2 clients resume by session id, TLS 1.3
//! with stateful tickets) and once with cluster tickets (TLS 1.2 clients
//! that send tickets, TLS 1.3). 1,000 clients per protocol, each a full
//! handshake then a resumption (on the next node). Read from every node
//! before and after, once the metrics are steady: sessions stored
//! (`items`), their bytes (`bytes`), the kB allocated to the nodes' store
//! memory files (shared memory actually used), replication datagrams and
//! bytes sent (`sent`, `sent_bytes`). Each divided by the clients resumed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::*;

const ROUNDS: usize = 5;
const SECONDS: u32 = 4;
const CLIENTS: usize = 1000;
const KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn main() {
    let part = std::env::var("BENCH_PART").unwrap_or_default();
    if part.is_empty() || part == "rate" {
        rate();
    }
    if part.is_empty() || part == "cost" {
        cost();
    }
}

fn rate() {
    let dir = test_dir("bench-cluster-tickets-rate");
    let keys = key_file(&dir);
    let (https, stats_port) = (free_port(), free_port());
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE)
        + &format!("cache-udp-key = {}\nssl-sessions-tickets = cluster\n", keys.display());
    let _node = Uwsgi::start(&dir, "cluster-tickets", &ini, &[https]);
    let (stock_https, stock_stats) = (free_port(), free_port());
    let stock_ini =
        seed_setup1(&plugin_dir(), stock_https, stock_stats, 4, "").replace("plugins = sslcache\n", "plugins = http\n");
    let _stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_https]);

    println!("Resumed TLS handshakes per second by ticket, one node, {ROUNDS} alternating rounds of {SECONDS} s\n");
    println!("| TLS | stock uWSGI (its own tickets) | sslcache cluster tickets | ratio (median of rounds) |");
    println!("|---|---|---|---|");
    for version in ["-tls1_2", "-tls1_3"] {
        let (mut stock_rates, mut ours_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (stock, stock_resumed) = s_time(stock_https, version, SECONDS);
            let (ours, ours_resumed) = s_time(https, version, SECONDS);
            assert!(
                stock_resumed > 0.99 && ours_resumed > 0.99,
                "not resumed: stock {stock_resumed}, cluster tickets {ours_resumed}"
            );
            stock_rates.push(stock);
            ours_rates.push(ours);
            ratios.push(ours / stock);
        }
        println!(
            "| {} | {:.0}/s | {:.0}/s | {:.3} |",
            &version[4..].replace('_', "."),
            median(stock_rates),
            median(ours_rates),
            median(ratios)
        );
    }
    println!(
        "\nstore of the cluster-tickets node: {} sessions (s_time resumes by ticket)\n",
        metric(stats_port, "sslcache.default.items")
    );
}

/// The kB allocated to the memory files (memfd: the store) `pid` holds.
fn memory_files_kb(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_memfd = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
        if let (true, Ok(meta)) = (is_memfd, std::fs::metadata(entry.path())) {
            total += meta.blocks() * 512 / 1024;
        }
    }
    total
}

struct Cluster {
    nodes: Vec<Uwsgi>,
    stats: Vec<u16>,
    _proxy: Process,
    lb: u16,
}

impl Cluster {
    fn start(dir: &Path, tickets: bool) -> Cluster {
        let keys = key_file(dir);
        let (https, udp) = (free_port(), free_port());
        let stats: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<Uwsgi> = (1..=3)
            .map(|i| {
                let lines = setup2_replication(i, 3, udp)
                    + &format!("cache-udp-key = {}\n", keys.display())
                    + if tickets {
                        "ssl-sessions-tickets = cluster\n"
                    } else {
                        ""
                    };
                let mut n = Uwsgi::spawn(
                    dir,
                    &format!("node{i}"),
                    &seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &lines),
                );
                n.wait_ready(&[stats[i - 1]]);
                n
            })
            .collect();
        let backends: Vec<SocketAddr> = (1..=3u8).map(|i| SocketAddr::from(([127, 0, 0, i], https))).collect();
        for b in &backends {
            assert!(eventually(Duration::from_secs(20), || {
                std::net::TcpStream::connect_timeout(b, Duration::from_millis(200)).is_ok()
            }));
        }
        let lb = free_port();
        let proxy = haproxy(dir, lb, &backends);
        Cluster {
            nodes,
            stats,
            _proxy: proxy,
            lb,
        }
    }

    /// (items, bytes, store kB, datagrams, bytes sent) over the nodes,
    /// once two reads 1.2 s apart agree (metrics are copied once a second).
    fn reading(&self) -> [u64; 5] {
        let read = || {
            let sum = |name: &str| -> u64 {
                self.stats
                    .iter()
                    .map(|&p| metric(p, &format!("sslcache.default.{name}")))
                    .sum()
            };
            [
                sum("items"),
                sum("bytes"),
                self.nodes.iter().map(|n| memory_files_kb(n.pid)).sum(),
                sum("sent"),
                sum("sent_bytes"),
            ]
        };
        let mut last = read();
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(1200));
            let now = read();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }
}

fn cost() {
    println!(
        "What a resumed client costs a 3-node sealed cluster behind HAProxy: {CLIENTS} clients per protocol, \
         each a full handshake then a resumption on the next node (sums over the nodes, per resumed client)\n"
    );
    println!(
        "| clients | mode | resumed | sessions stored | store bytes | store memory (kB allocated) | datagrams sent | \
         bytes sent |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for tickets in [false, true] {
        let dir = test_dir(if tickets {
            "bench-cluster-tickets-cost"
        } else {
            "bench-store-cost"
        });
        let cluster = Cluster::start(&dir, tickets);
        let protos = if tickets {
            [Proto::Tls12Tickets, Proto::Tls13]
        } else {
            [Proto::Tls12NoTickets, Proto::Tls13]
        };
        for proto in protos {
            let before = cluster.reading();
            let mut resumed = 0u64;
            for _ in 0..CLIENTS {
                let client = Client::new(proto);
                let Ok(first) = client.connect(cluster.lb, None, &[]) else {
                    continue;
                };
                if let Ok(again) = client.connect(cluster.lb, first.session.as_ref(), &[]) {
                    resumed += again.resumed as u64;
                }
            }
            let after = cluster.reading();
            let per = |i: usize| after[i].saturating_sub(before[i]) as f64 / resumed.max(1) as f64;
            println!(
                "| {} | {} | {resumed}/{CLIENTS} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} |",
                match proto {
                    Proto::Tls12NoTickets => "TLS 1.2, session id",
                    Proto::Tls12Tickets => "TLS 1.2, tickets",
                    Proto::Tls13 => "TLS 1.3",
                },
                if tickets { "cluster tickets" } else { "store" },
                per(0),
                per(1),
                per(2),
                per(3),
                per(4)
            );
        }
        drop(cluster);
    }
}
