//! Replication latency and the highest loss-free rate on loopback, plain
//! and sealed side by side, and the cost of sealing and opening one session
//! (`make bench`, or `cargo bench --bench replication`).
//!
//! Method: node A is a sending thread using the plugin's `Sender` (the
//! non-blocking socket a router process uses); node B is a receiving thread
//! doing what the master's receiver does: `recv_from` then `Applier::apply`
//! into B's store (seed geometry, 150-byte sessions under 32-byte ids).
//! Latency is from just before A's `send` to just after B's `apply`
//! returned, i.e. until the session is usable on B; both threads read one
//! monotonic clock. Each rate runs for 2 s, paced in 1 ms batches; loss is
//! sent minus applied after a 200 ms grace. Sealed runs seal on A and open
//! on B (AES-256-GCM through the host's OpenSSL); plain and sealed runs of
//! each rate follow each other. The machine has 2 cores and the two threads
//! share them with everything else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sslcache::stats::SharedCounters;
use sslcache::store::{Limits, Store};
use sslcache::sync::keys::Key;
use sslcache::sync::net::{bind_receiver, Multicast, Sender};
use sslcache::sync::seal::{Opener, Sealer};
use sslcache::sync::{encode_set, Applied, Applier};

const VALUE: usize = 150;
const NOW_MS: u64 = 1_000_000_000;
const SECONDS: u64 = 2;

/// Returns (achieved rate, p50 ns, p99 ns, lost, dropped at send).
fn run(rate: u64, sealed: bool) -> (u64, u64, u64, u64, u64) {
    let key = Key::new([42; 32]);
    let sealer = sealed.then(|| Sealer::new(&key));
    let opener = Arc::new(sealed.then(|| Opener::new(vec![key.clone()], 30, 0)));
    let store = Arc::new(
        Store::create(Limits {
            capacity: 200_000,
            keysize: 2048,
            blocksize: 4096,
        })
        .unwrap(),
    );
    let counters = Arc::new(SharedCounters::create().unwrap());
    let socket = bind_receiver("127.0.0.1:0".parse().unwrap(), &Multicast::default()).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let target: SocketAddr = socket.local_addr().unwrap();
    let total = (rate * SECONDS) as usize;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let base = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    let receiver = {
        let (store, counters, sent_at, done, opener) = (
            store.clone(),
            counters.clone(),
            sent_at.clone(),
            done.clone(),
            opener.clone(),
        );
        std::thread::spawn(move || {
            let applier = Applier {
                store: &store,
                timeout: 300,
                counters: counters.get(),
                opener: opener.as_ref().as_ref(),
                accept_plain: false,
                tombstone_secs: 31,
            };
            let mut buf = vec![0u8; 65536];
            let mut latencies = Vec::with_capacity(total);
            while !done.load(Ordering::Relaxed) {
                let Ok((n, _)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                // The session id starts with the sequence number.
                let mut seq = 0usize;
                let outcome = applier.apply_with(&buf[..n], NOW_MS, |frame| {
                    seq = u64::from_le_bytes(frame.key()[..8].try_into().unwrap()) as usize;
                });
                if outcome == Applied::Stored {
                    let usable = base.elapsed().as_nanos() as u64;
                    latencies.push(usable - sent_at[seq].load(Ordering::Relaxed));
                }
            }
            latencies
        })
    };

    let sender = Sender::new(vec![target], &Multicast::default()).unwrap();
    let per_batch = (rate / 1000).max(1);
    let mut frame = Vec::new();
    let mut datagram = Vec::new();
    let start = Instant::now();
    let mut seq = 0usize;
    while seq < total {
        for _ in 0..per_batch {
            if seq == total {
                break;
            }
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(seq as u64).to_le_bytes());
            encode_set(&id, &[7; VALUE], NOW_MS / 1000 + 300, &mut frame).unwrap();
            sent_at[seq].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match &sealer {
                Some(s) => {
                    s.seal(&frame, &counters.get().sealed, NOW_MS, &mut datagram);
                    sender.send(&datagram, counters.get());
                }
                None => sender.send(&frame, counters.get()),
            }
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
    done.store(true, Ordering::Relaxed);
    let mut latencies = receiver.join().unwrap();
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
        counters.get().send_dropped.load(Ordering::Relaxed),
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
}
