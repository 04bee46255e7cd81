//! Replication latency and the highest loss-free rate on loopback, plain
//! and sealed side by side, and the cost of sealing and opening one session
//! (`make bench`, or `cargo bench -p sslcache-core --bench replication`).
//!
//! Method: two real replication engines ([`Replicator`]), as two nodes'
//! masters make them. A thread calls node A's `stored()`, what a router
//! process does after a handshake (encode, seal when keyed, hand to the UDP
//! transport without waiting); node B's own receiver thread (the one the
//! plugin starts in the master: recv, open, decode, apply to B's store)
//! reports each applied session to an [`Observer`]. Latency is from just
//! before A's `stored()` to B's observer, i.e. until the session is usable
//! in B's store (seed geometry, 150-byte sessions under 32-byte ids); both
//! threads read one monotonic clock. Each rate runs for 2 s, paced in 1 ms
//! batches; loss is sent minus applied after a 200 ms grace. Sealed runs
//! seal on A and open on B (AES-256-GCM through the host's OpenSSL); plain
//! and sealed runs of each rate follow each other. The machine has 2 cores
//! and the two threads share them with everything else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sslcache_core::clock;
use sslcache_core::config::{RedisServer, Replication};
use sslcache_core::replication::keys::Key;
use sslcache_core::replication::seal::{Opener, Sealer};
use sslcache_core::replication::{encode_set, Applied, Observer, Replicator};
use sslcache_core::store::{Limits, Store};

const VALUE: usize = 150;
const NOW_MS: u64 = 1_000_000_000;
const SECONDS: u64 = 2;

fn store(capacity: u64) -> Arc<Store> {
    Arc::new(
        Store::create(Limits {
            capacity,
            keysize: 2048,
            blocksize: 4096,
        })
        .unwrap(),
    )
}

/// Node B's observer: when each session became usable.
struct Latencies {
    base: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
    latencies: Mutex<Vec<u64>>,
    stop: AtomicBool,
}

impl Observer for Latencies {
    fn applied(&self, key: &[u8], outcome: Applied) {
        if outcome != Applied::Stored || key.len() < 8 {
            return;
        }
        let usable = self.base.elapsed().as_nanos() as u64;
        // The session id starts with the sequence number.
        let seq = u64::from_le_bytes(key[..8].try_into().unwrap()) as usize;
        let sent = self.sent_at[seq].load(Ordering::Relaxed);
        self.latencies.lock().unwrap().push(usable - sent);
    }

    fn keep_running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// How A reaches B: UDP, or through the Redis server on this port.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Udp,
    Redis(u16),
}

/// Node A's observer under Redis (it hears its own sessions back).
struct Quiet(Arc<Latencies>);

impl Observer for Quiet {
    fn keep_running(&self) -> bool {
        self.0.keep_running()
    }
}

/// Returns (achieved rate, p50 ns, p99 ns, lost, dropped at send).
fn run(rate: u64, sealed: bool) -> (u64, u64, u64, u64, u64) {
    run_via(rate, sealed, Path::Udp)
}

fn run_via(rate: u64, sealed: bool, path: Path) -> (u64, u64, u64, u64, u64) {
    let key_file = sealed.then(|| ("bench".to_string(), "(in memory)".to_string()));
    let keys = || sealed.then(|| vec![Key::new([42; 32])]);
    let redis = match path {
        Path::Udp => Vec::new(),
        Path::Redis(port) => vec![RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            shown: format!("redis://127.0.0.1:{port}"),
        }],
    };
    let b_settings = Replication {
        servers: match path {
            Path::Udp => vec!["127.0.0.1:0".parse().unwrap()],
            Path::Redis(_) => Vec::new(),
        },
        key_file: key_file.clone(),
        max_skew: 30,
        redis: redis.clone(),
        ..Replication::default()
    };
    let b = Arc::new(Replicator::new(&b_settings, keys(), store(200_000), 300, false, "bench").unwrap());
    let a_settings = Replication {
        nodes: b.receiving_on().iter().filter_map(|a| a.parse().ok()).collect(),
        key_file,
        max_skew: 30,
        redis,
        ..Replication::default()
    };
    let a = Arc::new(Replicator::new(&a_settings, keys(), store(200_000), 300, false, "bench").unwrap());

    let total = (rate * SECONDS) as usize;
    let observer = Arc::new(Latencies {
        base: Instant::now(),
        sent_at: Arc::new((0..total).map(|_| AtomicU64::new(0)).collect()),
        latencies: Mutex::new(Vec::with_capacity(total)),
        stop: AtomicBool::new(false),
    });
    b.start_receivers(observer.clone(), false);
    if let Path::Redis(_) = path {
        a.start_receivers(Arc::new(Quiet(observer.clone())), false);
        // Both subscribed and done reading the (empty) records back.
        std::thread::sleep(Duration::from_millis(500));
    }

    let per_batch = (rate / 1000).max(1);
    let expires = clock::unix_secs() + 300;
    let start = Instant::now();
    let mut seq = 0usize;
    while seq < total {
        for _ in 0..per_batch {
            if seq == total {
                break;
            }
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(seq as u64).to_le_bytes());
            observer.sent_at[seq].store(observer.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            a.stored(&id, &[7; VALUE], expires, sslcache_core::record::Origin::Local);
            seq += 1;
        }
        // Pace: the next batch is due when the rate says so.
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let achieved = (total as f64 / start.elapsed().as_secs_f64()) as u64;
    std::thread::sleep(Duration::from_millis(200));
    observer.stop.store(true, Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *observer.latencies.lock().unwrap());
    latencies.sort_unstable();
    let applied = latencies.len() as u64;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (
        achieved,
        pct(0.5),
        pct(0.99),
        total as u64 - applied,
        a.counters().send_dropped.load(Ordering::Relaxed),
    )
}

/// ns per operation of sealing and of opening one 150-byte session frame.
fn seal_open_cost() -> (f64, f64) {
    let key = Key::new([42; 32]);
    let sealer = Sealer::new(&key);
    let opener = Opener::new(vec![key], 30, 0);
    let seq = AtomicU64::new(0);
    let mut frame = Vec::new();
    encode_set(&[5; 32], &[7; VALUE], 1_000_300, &mut frame).unwrap();
    const N: usize = 100_000;
    let mut sealed = Vec::with_capacity(N);
    let t = Instant::now();
    for _ in 0..N {
        let mut out = Vec::new();
        sealer.seal(&frame, &seq, NOW_MS, &mut out);
        sealed.push(out);
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for d in &sealed {
        opener.open(d, NOW_MS).unwrap();
    }
    (seal_ns, t.elapsed().as_nanos() as f64 / N as f64)
}

fn main() {
    // `BENCH_PART=redis`: the UDP/Redis comparison alone.
    if std::env::var("BENCH_PART").as_deref() == Ok("redis") {
        redis_side_by_side();
        return;
    }
    let (seal_ns, open_ns) = seal_open_cost();
    println!("Sealing a 150-byte session: {seal_ns:.0} ns; opening it: {open_ns:.0} ns (100,000 each)\n");
    println!("Replication on loopback: send on A -> usable in B's store (150-byte sessions)\n");
    println!("| target rate/s | mode | achieved rate/s | p50 µs | p99 µs | lost | of which dropped at send |");
    println!("|---|---|---|---|---|---|---|");
    let mut best = [0u64; 2];
    for rate in [
        1_000u64, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 400_000, 800_000,
    ] {
        for (i, sealed) in [false, true].into_iter().enumerate() {
            let (achieved, p50, p99, lost, dropped) = run(rate, sealed);
            println!(
                "| {rate} | {} | {achieved} | {:.0} | {:.0} | {lost} | {dropped} |",
                if sealed { "sealed" } else { "plain" },
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0
            );
            if lost == 0 && p99 <= 1_000_000 {
                best[i] = best[i].max(achieved);
            }
        }
    }
    println!(
        "\nhighest achieved rate with no loss and p99 <= 1 ms: plain {} sessions/s, sealed {} sessions/s (sealed/plain = {:.2})",
        best[0],
        best[1],
        best[1] as f64 / best[0].max(1) as f64
    );
    redis_side_by_side();
}

/// UDP and Redis (pub/sub through a local redis-server) side by side.
fn redis_side_by_side() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Ok(mut server) = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        println!("\nno redis-server: the Redis comparison is skipped (apt-get install redis-server)");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("\nUDP against Redis pub/sub (A's master writes, B's master subscribes), same method\n");
    println!("| target rate/s | path | mode | achieved rate/s | p50 µs | p99 µs | lost |");
    println!("|---|---|---|---|---|---|---|");
    for rate in [1_000u64, 10_000, 20_000] {
        for sealed in [false, true] {
            for path in [Path::Udp, Path::Redis(port)] {
                let (achieved, p50, p99, lost, _) = run_via(rate, sealed, path);
                println!(
                    "| {rate} | {} | {} | {achieved} | {:.0} | {:.0} | {lost} |",
                    if path == Path::Udp { "UDP" } else { "Redis" },
                    if sealed { "sealed" } else { "plain" },
                    p50 as f64 / 1000.0,
                    p99 as f64 / 1000.0
                );
                if let Path::Redis(_) = path {
                    // Each run's sessions stay in Redis: start the next clean.
                    let _ = std::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "FLUSHALL"])
                        .output();
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}
