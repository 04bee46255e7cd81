//! Replication latency and the highest loss-free rate on loopback
//! (`make bench`, or `cargo bench --bench replication`).
//!
//! Method: node A is a sending thread using the plugin's `Sender` (the
//! non-blocking socket a router process uses); node B is a receiving thread
//! doing what the master's receiver does: `recv_from` then `Applier::apply`
//! into B's store (seed geometry, 150-byte sessions under 32-byte ids).
//! Latency is from just before A's `send` to just after B's `apply`
//! returned, i.e. until the session is usable on B; both threads read one
//! monotonic clock. Each rate runs for 2 s, paced in 1 ms batches; loss is
//! sent minus applied after a 200 ms grace. The machine has 2 cores and the
//! two threads share them with everything else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sslcache::stats::SharedCounters;
use sslcache::store::{Limits, Store};
use sslcache::sync::net::{bind_receiver, Multicast, Sender};
use sslcache::sync::{encode_set, Applied, Applier};

const VALUE: usize = 150;
const SECONDS: u64 = 2;

/// Returns (achieved rate, p50 ns, p99 ns, lost, dropped at send).
fn run(rate: u64) -> (u64, u64, u64, u64, u64) {
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
        let (store, counters, sent_at, done) = (store.clone(), counters.clone(), sent_at.clone(), done.clone());
        std::thread::spawn(move || {
            let applier = Applier {
                store: &store,
                timeout: 300,
                counters: counters.get(),
            };
            let mut buf = vec![0u8; 65536];
            let mut latencies = Vec::with_capacity(total);
            while !done.load(Ordering::Relaxed) {
                let Ok((n, _)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let now = 1_000_000;
                if applier.apply(&buf[..n], now) == Applied::Stored {
                    let usable = base.elapsed().as_nanos() as u64;
                    // The key starts with the sequence number (after the
                    // 4-byte header and 2-byte key length).
                    let seq = u64::from_le_bytes(buf[6..14].try_into().unwrap()) as usize;
                    latencies.push(usable - sent_at[seq].load(Ordering::Relaxed));
                }
            }
            latencies
        })
    };

    let sender = Sender::new(vec![target], &Multicast::default()).unwrap();
    let per_batch = (rate / 1000).max(1);
    let mut datagram = Vec::new();
    let start = Instant::now();
    let mut seq = 0usize;
    while seq < total {
        for _ in 0..per_batch {
            if seq == total {
                break;
            }
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(seq as u64).to_le_bytes());
            encode_set(&key, &[7; VALUE], 1_000_300, &mut datagram).unwrap();
            sent_at[seq].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            sender.send(&datagram, counters.get());
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

fn main() {
    println!("Replication on loopback: send on A -> usable in B's store (150-byte sessions)\n");
    println!("| target rate/s | achieved rate/s | p50 µs | p99 µs | lost | of which dropped at send |");
    println!("|---|---|---|---|---|---|");
    let mut best = 0;
    for rate in [
        1_000u64, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 400_000, 800_000,
    ] {
        let (achieved, p50, p99, lost, dropped) = run(rate);
        println!(
            "| {rate} | {achieved} | {:.0} | {:.0} | {lost} | {dropped} |",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
        if lost == 0 {
            best = best.max(achieved);
        }
    }
    println!("\nhighest achieved rate with no loss: {best} sessions/s");
}
