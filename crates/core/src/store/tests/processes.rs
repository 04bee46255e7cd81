//! Store tests with several processes: forked children sharing one store,
//! hammering it, killed at every step of a mutation while they hold a
//! shard lock or at random instants, and stopped while holding one.

use std::time::Instant;

use super::*;
use crate::store::shard::crash;

/// Tests that fork many processes run one at a time: on a 2-core machine,
/// several of them at once starve each other for no added coverage.
static FORKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    FORKING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` in a forked child; returns its pid. The child exits 0 when `f`
/// returns true, 1 otherwise (and 2 on panic).
fn fork_child(f: impl FnOnce() -> bool) -> libc::pid_t {
    // SAFETY: fork has no memory-safety preconditions; the child only runs
    // `f` and then _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(AssertUnwindSafe(f));
        let code = match ok {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => 2,
        };
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or test harness code.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for `pid`, returning (exit code, killed-by-signal).
fn wait(pid: libc::pid_t) -> (i32, Option<i32>) {
    let mut status = 0;
    // SAFETY: waitpid writes the status of our own child into `status`.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        (-1, Some(libc::WTERMSIG(status)))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}

fn kill(pid: libc::pid_t, sig: i32) {
    // SAFETY: signals one of our own children.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[test]
fn forked_processes_share_one_store() {
    let _serial = serial();
    let store = Store::create(limits(50_000)).unwrap();
    let pids: Vec<_> = (0..8u64)
        .map(|p| {
            let store = &store;
            fork_child(move || {
                // A lock wait may time out under heavy oversubscription; the
                // store then drops the insert, so retry until it lands.
                for i in 0..2_000 {
                    let k = key(p * 1_000_000 + i);
                    let mut tries = 0;
                    while !matches!(
                        store.insert(&k, &value_for(&k, 180), NOW + 100, NOW + tries),
                        Insert::Stored { .. }
                    ) {
                        tries += 1;
                        if tries > 50 {
                            return false;
                        }
                    }
                }
                true
            })
        })
        .collect();
    for pid in pids {
        assert_eq!(wait(pid), (0, None));
    }
    assert_eq!(store.len(), 16_000);
    for p in 0..8u64 {
        for i in (0..2_000).step_by(97) {
            let k = key(p * 1_000_000 + i);
            assert_eq!(get(&store, &k).unwrap(), value_for(&k, 180));
        }
    }
}

/// Every process mixes inserts, lookups and removes on one shared key
/// space; every value read must belong to its key.
#[test]
fn forked_processes_hammering_stay_consistent() {
    let _serial = serial();
    let store = Store::create(limits(2_000)).unwrap();
    let pids: Vec<_> = (0..8u64)
        .map(|p| {
            let store = &store;
            fork_child(move || {
                let mut x = p + 1;
                let mut out = Vec::new();
                for _ in 0..20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = key(x % 3_000);
                    match x % 10 {
                        0..=3 => {
                            store.insert(&k, &value_for(&k, 64 + (x % 400) as usize), NOW + 100, NOW);
                        }
                        4 => {
                            store.remove(&k, NOW);
                        }
                        _ => {
                            out.clear();
                            if let Lookup::Hit { .. } = store.get(&k, NOW, &mut out) {
                                if out != value_for(&k, out.len()) {
                                    return false;
                                }
                            }
                        }
                    }
                }
                true
            })
        })
        .collect();
    for pid in pids {
        assert_eq!(wait(pid), (0, None));
    }
    assert!(store.len() <= 2_000 + 8);
    let found = (0..3_000).filter(|&i| get(&store, &key(i)).is_some()).count() as u64;
    assert_eq!(found, store.len());
    assert_eq!(store.counters().repairs.load(Ordering::Relaxed), 0);
}

/// A process dies at each step of an insert, a remove and an LRU touch while
/// it holds the shard lock: the next process repairs the shard, nothing
/// older is lost, and the store goes on working.
#[test]
fn process_killed_holding_the_lock_at_every_step() {
    let _serial = serial();
    for point in 1..=9u32 {
        let store = Store::create(limits(64)).unwrap();
        assert_eq!(store.shard_count(), 1);
        for i in 0..20 {
            store.insert(&key(i), &value_for(&key(i), 300), NOW + 100, NOW);
        }
        let pid = {
            let store = &store;
            fork_child(move || {
                crash::AT.store(point, Ordering::Relaxed);
                // Steps 1-5 are in insert, 6-8 in remove, 9 in a lookup.
                match point {
                    1..=5 => {
                        store.insert(&key(5), &value_for(&key(5), 900), NOW + 100, NOW);
                    }
                    6..=8 => {
                        store.remove(&key(7), NOW);
                    }
                    _ => {
                        get(store, &key(3));
                    }
                }
                true
            })
        };
        assert_eq!(wait(pid), (-1, Some(libc::SIGKILL)), "crash point {point} not reached");
        let started = Instant::now();
        assert!(matches!(
            store.insert(&key(100), &value_for(&key(100), 50), NOW + 100, NOW),
            Insert::Stored { .. }
        ));
        assert!(started.elapsed() < LOCK_TIMEOUT, "waited on a dead holder");
        assert_eq!(store.counters().repairs.load(Ordering::Relaxed), 1, "point {point}");
        for i in 0..20 {
            let k = key(i);
            match get(&store, &k) {
                Some(v) => assert!(
                    v == value_for(&k, 300) || (i == 5 && v == value_for(&k, 900)),
                    "point {point} key {i}"
                ),
                // Only the key being replaced or removed may be gone.
                None => assert!(
                    (point <= 5 && i == 5) || ((6..=8).contains(&point) && i == 7),
                    "point {point} lost key {i}"
                ),
            }
        }
        assert_eq!(get(&store, &key(100)).unwrap(), value_for(&key(100), 50));
        let found = (0..200).filter(|&i| get(&store, &key(i)).is_some()).count() as u64;
        assert_eq!(found, store.len(), "point {point}");
    }
}

/// Processes hammering the store are SIGKILLed at random instants and
/// replaced, as the uWSGI master respawns router processes.
#[test]
fn random_sigkill_under_load_never_wedges_or_corrupts() {
    let _serial = serial();
    let store = Store::create(limits(5_000)).unwrap();
    let spawn = |seed: u64| {
        let store = &store;
        fork_child(move || {
            let mut x = seed | 1;
            let mut out = Vec::new();
            // Bounded: the parent kills it long before this ends.
            for _ in 0..5_000_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % 8_000);
                if x.is_multiple_of(3) {
                    store.insert(&k, &value_for(&k, 100 + (x % 900) as usize), NOW + 100, NOW);
                } else if x.is_multiple_of(11) {
                    store.remove(&k, NOW);
                } else {
                    out.clear();
                    if let Lookup::Hit { .. } = store.get(&k, NOW, &mut out) {
                        if out != value_for(&k, out.len()) {
                            return false;
                        }
                    }
                }
            }
            true
        })
    };
    let mut pids: Vec<_> = (0..4).map(|i| spawn(i + 11)).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..40 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(2_000 + rng % 8_000));
        let victim = (rng % 4) as usize;
        kill(pids[victim], libc::SIGKILL);
        let (code, signal) = wait(pids[victim]);
        assert!(signal == Some(libc::SIGKILL) || code == 0, "child failed: code {code}");
        pids[victim] = spawn(round * 7 + 101);
    }
    for pid in pids {
        kill(pid, libc::SIGKILL);
        let (code, signal) = wait(pid);
        assert!(signal == Some(libc::SIGKILL) || code == 0, "child failed: code {code}");
    }
    // Everything still there is intact and the store is fully usable.
    let mut found = 0;
    for i in 0..8_000 {
        let k = key(i);
        if let Some(v) = get(&store, &k) {
            assert_eq!(v, value_for(&k, v.len()), "corrupt value for key {i}");
            found += 1;
        }
    }
    assert_eq!(found, store.len());
    for i in 10_000..10_100 {
        assert!(matches!(
            store.insert(&key(i), b"after", NOW + 10, NOW),
            Insert::Stored { .. }
        ));
    }
    assert_eq!(get(&store, &key(10_050)).unwrap(), b"after");
}

/// A holder that is alive but stopped costs one bounded wait, then the
/// shard is skipped instead of waited for.
#[test]
fn stopped_holder_never_hangs_others() {
    let _serial = serial();
    let store = Store::create(limits(64)).unwrap();
    store.insert(b"k", b"v", NOW + 100, NOW);
    let pid = {
        let store = &store;
        fork_child(move || {
            // Hold the only shard's lock and stop inside it.
            store.with_shard(0, |_| {
                // SAFETY: stops this child; the parent continues it.
                unsafe {
                    libc::raise(libc::SIGSTOP);
                }
            });
            true
        })
    };
    // Wait until the child holds the lock and is stopped.
    let mut status = 0;
    // SAFETY: waits for our child to stop.
    unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    assert!(libc::WIFSTOPPED(status));
    let mut out = Vec::new();
    let t = Instant::now();
    assert_eq!(store.get(b"k", NOW, &mut out), Lookup::Busy);
    assert!(t.elapsed() < LOCK_TIMEOUT * 5);
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(store.insert(b"x", b"v", NOW + 10, NOW), Insert::Busy);
    }
    assert!(t.elapsed() < LOCK_TIMEOUT, "stalled shard was waited for in full again");
    kill(pid, libc::SIGCONT);
    assert_eq!(wait(pid), (0, None));
    // The holder is gone; after the stall window, the shard answers again.
    std::thread::sleep(Duration::from_millis(STALL_BACKOFF_MS + 100));
    assert!(matches!(store.get(b"k", NOW, &mut out), Lookup::Hit { .. }));
}
