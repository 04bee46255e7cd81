//! Store latency: get and insert, p50 and p99, with 1, 2 and 8 processes
//! sharing one store (`make bench`, or `cargo bench --bench store`).
//!
//! Method: a store sized like the seed's Setup 1 (`cache = 20000`,
//! `cache-blocksize = 4096`, keysize 2048) is filled with 10,000 sessions
//! of 150 bytes (the size of the TLS 1.2/1.3 sessions of a 2048-bit RSA
//! certificate, measured with `ssl-verbose`) under 32-byte ids. Then P
//! forked processes each time every operation with `Instant` (clock_gettime
//! through the vDSO, ~20 ns, included): first 100,000 gets of random stored
//! ids, then 50,000 inserts of new ids (the store is then full and each
//! insert also evicts). Percentiles are over all operations of all
//! processes. The machine has 2 cores: with 8 processes most of them wait
//! for a CPU, which shows in p99 as scheduler delay, not lock contention.
//!
//! Then the sweep at the largest capacity (`sweep_at_capacity`), this
//! sweep beside the one before it, in one run. Method: two stores of
//! `cache = 10000000` (the bound, `store::MAX_ITEMS`), keysize 2048,
//! blocksize 4096, each filled with the same 10,000 sessions of 150 bytes
//! that do not expire during the run. Store A is swept with
//! `Store::sweep` (the live entries of each shard, through its LRU list),
//! store B with `Store::sweep_every_bucket` (every bucket of every shard:
//! the sweep before issue 18), alternately, 7 times each, every sweep timed
//! with `Instant`. The region's resident bytes (`mincore`) are read after
//! the fill and after the sweeps. The first sweep of B includes faulting
//! its bucket array in; the median is over the later ones. On this shared
//! 2-core machine, read the ratio, not the absolute times.

use std::io::{Read, Write};
use std::time::Instant;

use sslcache_core::store::{Insert, Limits, Lookup, Store};

const PREFILL: u64 = 10_000;
const GETS: usize = 100_000;
const INSERTS: usize = 50_000;
const VALUE: usize = 150;

fn key(i: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..16].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    k
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One process's work; returns (get latencies, insert latencies) in ns.
fn work(store: &Store, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let now = 1_000_000;
    let value = [7u8; VALUE];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(VALUE);
    let mut gets = Vec::with_capacity(GETS);
    for _ in 0..GETS {
        let k = key(xorshift(&mut x) % PREFILL);
        out.clear();
        let t = Instant::now();
        let r = store.get(&k, now, &mut out);
        gets.push(t.elapsed().as_nanos() as u32);
        assert!(matches!(r, Lookup::Hit { .. } | Lookup::Miss));
    }
    let mut inserts = Vec::with_capacity(INSERTS);
    for _ in 0..INSERTS {
        let k = key(1_000_000_000 + xorshift(&mut x));
        let t = Instant::now();
        let r = store.insert(&k, &value, now + 300, now);
        inserts.push(t.elapsed().as_nanos() as u32);
        assert!(matches!(r, Insert::Stored { .. } | Insert::Busy));
    }
    (gets, inserts)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn run(processes: usize) {
    let store = Store::create(Limits {
        capacity: 20_000,
        keysize: 2048,
        blocksize: 4096,
    })
    .unwrap();
    for i in 0..PREFILL {
        store.insert(&key(i), &[7u8; VALUE], 1_000_300, 1_000_000);
    }
    let mut children = Vec::new();
    let started = Instant::now();
    for p in 0..processes {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only runs `work`, writes to its pipe and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let (gets, inserts) = work(&store, 0x1234 + p as u64 * 7919);
            // SAFETY: fds[1] is the write end of the pipe made above; in this
            // child nothing else owns or closes it, so the File is its only
            // owner.
            let mut w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
            for v in gets.iter().chain(inserts.iter()) {
                w.write_all(&v.to_le_bytes()).unwrap();
            }
            drop(w);
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closes the parent's copy of the write end.
        unsafe { libc::close(fds[1]) };
        children.push((pid, fds[0]));
    }
    let mut gets = Vec::new();
    let mut inserts = Vec::new();
    for (pid, fd) in children {
        // SAFETY: `fd` is the read end of a pipe made above, kept only in
        // `children` and closed by nothing else: the File becomes its only
        // owner.
        let mut r = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).unwrap();
        let values: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        gets.extend_from_slice(&values[..GETS]);
        inserts.extend_from_slice(&values[GETS..]);
        let mut status = 0;
        // SAFETY: reaps our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let wall = started.elapsed().as_secs_f64();
    gets.sort_unstable();
    inserts.sort_unstable();
    let ops = (processes * (GETS + INSERTS)) as f64;
    println!(
        "| {processes} | {} | {} | {} | {} | {:.2} M |",
        percentile(&gets, 0.5),
        percentile(&gets, 0.99),
        percentile(&inserts, 0.5),
        percentile(&inserts, 0.99),
        ops / wall / 1e6
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sweep_at_capacity() {
    const SESSIONS: u64 = 10_000;
    const SWEEPS: usize = 7;
    let limits = Limits {
        capacity: sslcache_core::store::MAX_ITEMS,
        keysize: 2048,
        blocksize: 4096,
    };
    let now = 1_000_000;
    let (a, b) = (Store::create(limits).unwrap(), Store::create(limits).unwrap());
    for store in [&a, &b] {
        for i in 0..SESSIONS {
            assert!(matches!(
                store.insert(&key(i), &[7u8; VALUE], now + 3600, now),
                Insert::Stored { .. }
            ));
        }
    }
    let filled = [a.resident_bytes().unwrap(), b.resident_bytes().unwrap()];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..SWEEPS {
        let t = Instant::now();
        assert_eq!(a.sweep(now), 0);
        times[0].push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        assert_eq!(b.sweep_every_bucket(now), 0);
        times[1].push(t.elapsed().as_secs_f64() * 1e3);
    }
    let swept = [a.resident_bytes().unwrap(), b.resident_bytes().unwrap()];
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "\nSweep at capacity {} with {SESSIONS} sessions stored ({} GiB reserved), ms and region resident MiB\n",
        limits.capacity,
        a.reserved_bytes().div_ceil(1 << 30)
    );
    println!(
        "| sweep | first | median of the next {} | resident after fill | resident after sweeps |",
        SWEEPS - 1
    );
    println!("|---|---|---|---|---|");
    for (i, name) in ["live entries (this version)", "every bucket (before)"]
        .iter()
        .enumerate()
    {
        println!(
            "| {name} | {:.3} | {:.3} | {:.1} | {:.1} |",
            times[i][0],
            median(times[i][1..].to_vec()),
            mib(filled[i]),
            mib(swept[i])
        );
    }
    println!(
        "\nratio, median sweep time: before / this version = {:.0}",
        median(times[1][1..].to_vec()) / median(times[0][1..].to_vec()).max(1e-6)
    );
}

fn main() {
    println!("Store latency, ns (seed Setup 1 geometry, 150-byte sessions)\n");
    println!("| processes | get p50 | get p99 | insert p50 | insert p99 | ops/s, all processes |");
    println!("|---|---|---|---|---|---|");
    for processes in [1, 2, 8] {
        run(processes);
    }
    sweep_at_capacity();
}
