//! The replication window: from a session stored on node A to usable on
//! nodes B and C, on real uWSGI nodes, idle and with two busy processes
//! beside them (`make bench`, or `cargo run --release --example
//! bench_window`); then clients that reconnect at once to the next node
//! through HAProxy, loaded.
//!
//! Method: seed Setup 2 on 127.0.0.1-3 (two HTTPS router processes each),
//! replicating over UDP plain, UDP sealed or Redis; every node runs with
//! `SSLCACHE_TRACE` (its own file), where each process notes on the
//! system-wide monotonic clock when it stored a session from a handshake
//! and when it applied one from a peer (see `sslcache_core::trace`). A
//! client makes SESSIONS full TLS 1.2 handshakes (no tickets) on node 1,
//! one every PACE; the window of a session is the time from node 1's store
//! to the later of nodes 2 and 3 having it usable (p50, p99, max over all
//! sessions; a session never applied somewhere is counted lost). "Loaded":
//! two `sh -c 'while :; do :; done'` beside the nodes on the 2 cores,
//! started after the nodes and stopped by pid. Idle and loaded runs of a
//! transport follow each other, twice (ABAB).
//!
//! The reconnect part: 3 nodes behind HAProxy (round robin), two busy
//! processes beside them, RECONNECTS clients each making a full handshake
//! and then reconnecting at once (no request in between) with the session:
//! every reconnect lands on the next node an instant after the session was
//! made. It prints the share resumed and how often a router process waited
//! for a session made an instant ago (fresh_waits, fresh_found).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sslcache_testkit::*;

const SESSIONS: usize = 600;
const PACE: Duration = Duration::from_millis(5);
const ROUNDS: usize = 2;
const RECONNECTS: usize = 600;
const KEY: &str = "8f1e5f3b2c4d6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8";

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    UdpPlain,
    UdpSealed,
    Redis,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::UdpPlain => "UDP plain",
            Transport::UdpSealed => "UDP sealed",
            Transport::Redis => "Redis",
        }
    }
}

/// Two busy loops, stopped by pid on drop.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start() -> Busy {
        Busy(
            (0..2)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    nodes: Vec<Uwsgi>,
    stats: Vec<u16>,
    traces: Vec<PathBuf>,
    https: u16,
    _redis: Option<Process>,
}

impl Cluster {
    fn start(dir: &Path, transport: Transport) -> Cluster {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let (https, udp) = (free_port(), free_port());
        let backend = uwsgi_backend(Duration::from_secs(600));
        let redis = (transport == Transport::Redis).then(|| {
            let port = free_port();
            (redis_server(dir, "redis", port), port)
        });
        let key = dir.join("sslcache.key");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let (mut nodes, mut stats, mut traces) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=3 {
            let stats_port = free_port();
            let trace = dir.join(format!("trace-node{i}"));
            let mut lines = match (&redis, transport) {
                (Some((_, port)), _) => format!("ssl-sessions-redis = redis://127.0.0.1:{port}\n"),
                _ => setup2_replication(i, 3, udp),
            };
            if transport == Transport::UdpSealed {
                lines += &format!("cache-udp-key = {}\n", key.display());
            }
            lines += &format!("env = SSLCACHE_TRACE={}\n", trace.display());
            let ini = with_http_to(&seed_setup2_node(&plugin_dir(), i, https, stats_port, &lines), backend);
            nodes.push(Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port]));
            stats.push(stats_port);
            traces.push(trace);
        }
        wait_nodes(3, https);
        // Redis: subscribed before the first session.
        std::thread::sleep(Duration::from_millis(500));
        Cluster {
            nodes,
            stats,
            traces,
            https,
            _redis: redis.map(|(p, _)| p),
        }
    }

    fn backends(&self) -> Vec<SocketAddr> {
        (1..=3u8)
            .map(|i| SocketAddr::from(([127, 0, 0, i], self.https)))
            .collect()
    }

    fn stop(mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

/// Events of one trace file: session id -> (first store, first apply).
fn read_trace(path: &Path) -> HashMap<String, (Option<u64>, Option<u64>)> {
    let mut events: HashMap<String, (Option<u64>, Option<u64>)> = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut parts = line.split(' ');
        let (Some(kind), Some(id), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(t) = t.parse::<u64>() else { continue };
        let entry = events.entry(id.to_string()).or_default();
        let slot = if kind == "S" { &mut entry.0 } else { &mut entry.1 };
        *slot = Some(slot.map_or(t, |s: u64| s.min(t)));
    }
    events
}

/// Windows (ns) of the sessions node 1 stored, and how many never reached
/// node 2 or node 3.
fn windows(cluster: &Cluster) -> (Vec<u64>, usize) {
    let origin = read_trace(&cluster.traces[0]);
    let others: Vec<_> = cluster.traces[1..].iter().map(|p| read_trace(p)).collect();
    let (mut windows, mut lost) = (Vec::new(), 0);
    for (id, (stored, _)) in &origin {
        let Some(stored) = stored else { continue };
        let usable: Option<Vec<u64>> = others.iter().map(|o| o.get(id).and_then(|e| e.1)).collect();
        match usable {
            Some(ts) => windows.push(ts.into_iter().max().unwrap().saturating_sub(*stored)),
            None => lost += 1,
        }
    }
    windows.sort_unstable();
    (windows, lost)
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
}

/// SESSIONS full handshakes on node 1, one every PACE.
fn make_sessions(https: u16) -> usize {
    let client = Client::new(Proto::Tls12NoTickets);
    let mut failed = 0;
    let start = Instant::now();
    for n in 0..SESSIONS {
        match client.handshake_to(SocketAddr::from(([127, 0, 0, 1], https)), None) {
            Ok((mut s, _)) => {
                let _ = s.shutdown();
            }
            Err(_) => failed += 1,
        }
        let due = start + PACE * (n as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    failed
}

fn window_run(dir: &Path, transport: Transport, loaded: bool) -> String {
    let cluster = Cluster::start(dir, transport);
    let busy = loaded.then(Busy::start);
    let failed = make_sessions(cluster.https);
    // What is still in flight lands (or is lost) within this.
    std::thread::sleep(Duration::from_secs(1));
    drop(busy);
    let (w, lost) = windows(&cluster);
    let line = format!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {lost} | {failed} |",
        transport.name(),
        if loaded { "2 busy" } else { "idle" },
        w.len(),
        pct(&w, 0.5),
        pct(&w, 0.99),
        w.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
    );
    cluster.stop();
    line
}

/// RECONNECTS clients: a full handshake through HAProxy, then at once a
/// resumption (which lands on the next node). Returns (resumed,
/// attempts, fresh_waits, fresh_found) with two busy processes beside.
fn reconnect_run(dir: &Path, transport: Transport, proto: Proto) -> (usize, usize, u64, u64) {
    let cluster = Cluster::start(dir, transport);
    let lb = free_port();
    let proxy = haproxy(dir, lb, &cluster.backends());
    let busy = Busy::start();
    let client = Client::new(proto);
    let (mut resumed, mut attempts) = (0, 0);
    for _ in 0..RECONNECTS {
        let Ok(first) = client.connect(lb, None, &[]) else {
            continue;
        };
        let Some(session) = first.session else { continue };
        attempts += 1;
        if let Ok(again) = client.connect(lb, Some(&session), &[]) {
            resumed += usize::from(again.resumed);
        }
    }
    drop(busy);
    let sum = |name: &str| -> u64 {
        cluster
            .stats
            .iter()
            .map(|&p| metric(p, &format!("sslcache.default.{name}")))
            .sum()
    };
    let (waits, found) = (sum("fresh_waits"), sum("fresh_found"));
    drop(proxy);
    cluster.stop();
    (resumed, attempts, waits, found)
}

fn main() {
    let dir = test_dir("bench-window");
    println!(
        "Replication window, node 1 stored -> usable on nodes 2 and 3 (both), {SESSIONS} TLS 1.2 full handshakes \
         on node 1, one every {} ms; µs\n",
        PACE.as_millis()
    );
    println!("| transport | beside the nodes | sessions | p50 µs | p99 µs | max µs | lost | failed handshakes |");
    println!("|---|---|---|---|---|---|---|---|");
    for transport in [Transport::UdpPlain, Transport::UdpSealed, Transport::Redis] {
        for _ in 0..ROUNDS {
            for loaded in [false, true] {
                println!("{}", window_run(&dir.join("window"), transport, loaded));
            }
        }
    }
    if std::env::var("BENCH_PART").as_deref() == Ok("window") {
        return;
    }
    println!("\nImmediate reconnect to the next node through HAProxy, two busy processes beside the nodes\n");
    println!("| transport | TLS | resumed | fresh_waits | fresh_found |");
    println!("|---|---|---|---|---|");
    for transport in [Transport::UdpSealed, Transport::Redis] {
        for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
            let (resumed, attempts, waits, found) = reconnect_run(&dir.join("reconnect"), transport, proto);
            println!(
                "| {} | {} | {resumed}/{attempts} ({:.1}%) | {waits} | {found} |",
                transport.name(),
                if proto == Proto::Tls13 { "1.3" } else { "1.2" },
                100.0 * resumed as f64 / attempts.max(1) as f64
            );
        }
    }
}
