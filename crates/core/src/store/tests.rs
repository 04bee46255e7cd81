//! Store tests in one process: lookups, inserts, expiry, eviction, scans,
//! resident memory, the sweep, takeover of a handed-over store and the size
//! bounds; those with several processes (sharing, kills) in
//! `tests/processes.rs`.

use super::layout::{Header, FORMAT};
use super::*;
use std::os::fd::{AsFd, OwnedFd};

mod processes;

const NOW: u64 = 1_000_000;

fn limits(capacity: u64) -> Limits {
    Limits {
        capacity,
        keysize: 128,
        blocksize: 4096,
    }
}

/// A value that tells which key it belongs to, so any mix-up is detected.
fn value_for(key: &[u8], len: usize) -> Vec<u8> {
    (0..len).map(|i| key[i % key.len()] ^ (i as u8)).collect()
}

fn key(i: u64) -> Vec<u8> {
    let mut k = i.to_le_bytes().to_vec();
    k.resize(32, (i % 251) as u8);
    k
}

fn get(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match store.get(k, NOW, &mut out) {
        Lookup::Hit { .. } => Some(out),
        _ => None,
    }
}

#[test]
fn insert_get_replace_remove() {
    let store = Store::create(limits(1000)).unwrap();
    let v = value_for(b"abc", 300);
    assert_eq!(
        store.insert(b"abc", &v, NOW + 10, NOW),
        Insert::Stored {
            replaced: false,
            evicted: 0
        }
    );
    assert_eq!(get(&store, b"abc").unwrap(), v);
    assert_eq!(get(&store, b"abd"), None);
    assert_eq!(
        store.insert(b"abc", b"short", NOW + 10, NOW),
        Insert::Stored {
            replaced: true,
            evicted: 0
        }
    );
    assert_eq!(get(&store, b"abc").unwrap(), b"short");
    assert_eq!(store.len(), 1);
    assert_eq!(store.remove(b"abc", NOW), Some(true));
    assert_eq!(store.remove(b"abc", NOW), Some(false));
    assert!(store.is_empty());
    let c = store.counters();
    assert_eq!(c.hits.load(Ordering::Relaxed), 2);
    assert_eq!(c.misses.load(Ordering::Relaxed), 1);
}

/// A miss looked at again until the session arrives counts as one hit, no
/// miss; looking again in vain counts nothing more.
#[test]
fn looking_again_after_a_miss_counts_one_lookup() {
    let store = Store::create(limits(10)).unwrap();
    let mut out = Vec::new();
    assert_eq!(store.get(b"late", NOW, &mut out), Lookup::Miss);
    assert_eq!(store.get_again(b"late", NOW, &mut out), Lookup::Miss);
    assert_eq!(store.get_again(b"late", NOW, &mut out), Lookup::Miss);
    let c = store.counters();
    assert_eq!(
        (c.hits.load(Ordering::Relaxed), c.misses.load(Ordering::Relaxed)),
        (0, 1)
    );
    store.insert(b"late", b"v", NOW + 10, NOW);
    assert!(matches!(store.get_again(b"late", NOW, &mut out), Lookup::Hit { .. }));
    assert_eq!(out, b"v");
    assert_eq!(
        (c.hits.load(Ordering::Relaxed), c.misses.load(Ordering::Relaxed)),
        (1, 0)
    );
}

#[test]
fn rejects_oversized_and_expired() {
    let store = Store::create(limits(10)).unwrap();
    assert_eq!(store.insert(&[1; 129], b"v", NOW + 1, NOW), Insert::TooBig);
    assert_eq!(store.insert(b"k", &vec![0; 4097], NOW + 1, NOW), Insert::TooBig);
    assert_eq!(store.insert(b"", b"v", NOW + 1, NOW), Insert::TooBig);
    assert_eq!(store.insert(b"k", b"v", NOW, NOW), Insert::Expired);
    assert!(matches!(
        store.insert(b"k", &vec![7; 4096], NOW + 1, NOW),
        Insert::Stored { .. }
    ));
    assert!(!store.is_empty());
}

#[test]
fn entries_expire() {
    let store = Store::create(limits(100)).unwrap();
    store.insert(b"short", b"v", NOW + 5, NOW);
    store.insert(b"long", b"v", NOW + 500, NOW);
    let mut out = Vec::new();
    assert!(matches!(store.get(b"short", NOW + 4, &mut out), Lookup::Hit { expires } if expires == NOW + 5));
    assert_eq!(store.get(b"short", NOW + 5, &mut out), Lookup::Expired);
    assert_eq!(store.get(b"short", NOW + 5, &mut out), Lookup::Miss);
    store.insert(b"short2", b"v", NOW + 5, NOW);
    assert_eq!(store.sweep(NOW + 6), 1);
    assert_eq!(store.len(), 1);
    assert!(matches!(store.get(b"long", NOW + 6, &mut out), Lookup::Hit { .. }));
}

/// A scan sees every live session once, with its value and expiry, and
/// nothing expired, removed or replaced.
#[test]
fn scan_sees_every_live_entry_once() {
    let store = Store::create(limits(2000)).unwrap();
    for i in 0..1000 {
        let k = key(i);
        store.insert(&k, &value_for(&k, 10 + (i as usize % 300)), NOW + 10 + i % 2, NOW);
    }
    store.remove(&key(3), NOW);
    store.insert(&key(4), b"replaced", NOW + 50, NOW);
    let mut seen = std::collections::HashMap::new();
    assert_eq!(
        store.scan(NOW + 10, |k, v, expires| {
            assert!(seen.insert(k.to_vec(), (v.to_vec(), expires)).is_none());
        }),
        0
    );
    // Odd keys expire at NOW + 11, even ones at NOW + 10 (gone), key 4 was
    // replaced with a later expiry, key 3 removed.
    assert_eq!(seen.len(), 500 - 1 + 1);
    assert_eq!(seen[&key(4)], (b"replaced".to_vec(), NOW + 50));
    assert!(!seen.contains_key(&key(3)));
    for i in (1..1000).step_by(2).filter(|&i| i != 3) {
        let k = key(i);
        assert_eq!(seen[&k], (value_for(&k, 10 + (i as usize % 300)), NOW + 11), "key {i}");
    }
}

#[test]
fn full_store_evicts_least_recently_used() {
    // Small: one shard, exact LRU.
    let store = Store::create(limits(100)).unwrap();
    assert_eq!(store.shard_count(), 1);
    for i in 0..100 {
        store.insert(&key(i), &value_for(&key(i), 200), NOW + 100, NOW);
    }
    // Touch key 0 so that key 1 is the oldest.
    assert!(get(&store, &key(0)).is_some());
    for i in 100..150 {
        assert!(matches!(
            store.insert(&key(i), &value_for(&key(i), 200), NOW + 100, NOW),
            Insert::Stored { .. }
        ));
    }
    assert_eq!(store.len(), 100);
    assert!(get(&store, &key(0)).is_some());
    for i in 1..51 {
        assert!(get(&store, &key(i)).is_none(), "key {i} should be evicted");
    }
    for i in 51..150 {
        assert_eq!(get(&store, &key(i)).unwrap(), value_for(&key(i), 200));
    }
    assert_eq!(store.counters().evicted.load(Ordering::Relaxed), 50);
}

#[test]
fn a_full_store_knows_the_latest_expiry_it_evicted() {
    let store = Store::create(limits(100)).unwrap();
    // Expiries NOW + 100 + i: a touched one (key 0) is evicted last.
    for i in 0..100 {
        store.insert(&key(i), b"v", NOW + 100 + i, NOW);
    }
    assert_eq!(store.evicted_until(), 0, "nothing evicted yet");
    assert!(get(&store, &key(0)).is_some());
    for i in 100..110 {
        store.insert(&key(i), b"v", NOW + 500, NOW);
    }
    // Keys 1..=10 went: the latest of them expires at NOW + 110.
    assert_eq!(store.evicted_until(), NOW + 110);
    // Replacing or removing is no eviction.
    store.insert(&key(50), b"w", NOW + 900, NOW);
    store.remove(&key(60), NOW);
    assert_eq!(store.evicted_until(), NOW + 110);
    // An eviction of an earlier expiry does not lower it.
    for i in 110..200 {
        store.insert(&key(i), b"v", NOW + 500, NOW);
    }
    store.insert(&key(1000), b"v", NOW + 500, NOW);
    assert!(store.evicted_until() >= NOW + 110);
}

#[test]
fn sharded_store_holds_its_capacity_then_evicts_old_entries() {
    let capacity = 20_000;
    let store = Store::create(limits(capacity)).unwrap();
    assert!(store.shard_count() > 1);
    for i in 0..capacity {
        store.insert(&key(i), &value_for(&key(i), 150), NOW + 100, NOW);
    }
    assert_eq!(store.len(), capacity);
    assert_eq!(
        store.counters().evicted.load(Ordering::Relaxed),
        0,
        "no eviction below capacity"
    );
    for i in capacity..capacity * 3 / 2 {
        store.insert(&key(i), &value_for(&key(i), 150), NOW + 100, NOW);
    }
    assert_eq!(store.len(), capacity);
    // Per-shard LRU is approximate: the newest half must all be there, and
    // the oldest quarter must be gone.
    for i in capacity..capacity * 3 / 2 {
        assert!(get(&store, &key(i)).is_some(), "recent key {i} evicted");
    }
    let old_left = (0..capacity / 4).filter(|&i| get(&store, &key(i)).is_some()).count();
    assert_eq!(old_left, 0);
}

#[test]
fn resident_memory_follows_stored_bytes() {
    let store = Store::create(Limits {
        capacity: 20_000,
        keysize: 2048,
        blocksize: 4096,
    })
    .unwrap();
    let before = store.resident_bytes().unwrap();
    for i in 0..10_000 {
        store.insert(&key(i), &value_for(&key(i), 200), NOW + 100, NOW);
    }
    let grown = store.resident_bytes().unwrap() - before;
    let per_session = grown / 10_000;
    // 32-byte key + 200-byte value: 4 chunks, an entry and a link each.
    assert!(per_session < 512, "{per_session} bytes resident per session");
    assert!(store.reserved_bytes() > 20_000 * 4096);
}

#[test]
fn insert_unless_keeps_what_the_caller_protects_under_one_lock() {
    let store = Store::create(limits(10)).unwrap();
    assert!(matches!(
        store.insert_unless(b"k", b"tomb", NOW + 10, NOW, |_| true),
        Insert::Stored { replaced: false, .. }
    ));
    // The live value is protected: nothing changes.
    assert_eq!(
        store.insert_unless(b"k", b"session", NOW + 10, NOW, |v| v == b"tomb"),
        Insert::Kept
    );
    let mut out = Vec::new();
    assert_eq!(store.get(b"k", NOW, &mut out), Lookup::Hit { expires: NOW + 10 });
    assert_eq!(out, b"tomb");
    // Once it expired, it protects nothing.
    assert!(matches!(
        store.insert_unless(b"k", b"session", NOW + 20, NOW + 10, |v| v == b"tomb"),
        Insert::Stored { .. }
    ));
}

/// A store handed over through its memory file (as across uWSGI's reload
/// exec) comes back whole, with the same hash keys.
#[test]
fn a_handed_over_store_is_taken_over_whole() {
    let (store, fd) = Store::create_handed_over(limits(2000)).unwrap();
    for i in 0..1000 {
        assert!(matches!(
            store.insert(&key(i), &value_for(&key(i), 150), NOW + 100, NOW),
            Insert::Stored { .. }
        ));
    }
    drop(store);
    let (store, _fd) = Store::adopt(limits(2000), fd).unwrap();
    assert_eq!(store.len(), 1000);
    for i in 0..1000 {
        assert_eq!(get(&store, &key(i)), Some(value_for(&key(i), 150)), "{i}");
    }
    assert!(matches!(
        store.insert(b"new", b"v", NOW + 100, NOW),
        Insert::Stored { .. }
    ));
}

fn handed_over_with(limits: Limits, damage: impl FnOnce(&mut [u8])) -> OwnedFd {
    let (store, fd) = Store::create_handed_over(limits).unwrap();
    store.insert(b"k", b"v", NOW + 100, NOW);
    let len = store.reserved_bytes();
    drop(store);
    let region = Region::map_file(fd.as_fd()).unwrap();
    // SAFETY: `len` bytes from offset 0 are in bounds of `region` (ptr_at
    // checked them), mapped until `region` drops after the call; the store
    // was dropped, so this is the file's only mapping and the slice the only
    // reference to it.
    damage(unsafe { std::slice::from_raw_parts_mut(region.ptr_at::<u8>(0, len), len) });
    fd
}

#[test]
fn another_layout_or_damage_is_refused_with_a_reason() {
    let refused = |fd, wanted: Limits| Store::adopt(wanted, fd).err().expect("refused");
    let e = refused(handed_over_with(limits(2000), |_| {}), limits(3000));
    assert!(e.contains("made for items=2000"), "{e}");
    let e = refused(handed_over_with(limits(2000), |b| b[40] ^= 1), limits(2000));
    assert_eq!(e, "its header is damaged");
    let e = refused(handed_over_with(limits(2000), |b| b[0] = b'X'), limits(2000));
    assert_eq!(e, "not a session store");
    let e = refused(
        handed_over_with(limits(2000), |b| {
            let mut x = 7u64;
            b.iter_mut().take(4096).for_each(|v| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                *v = (x >> 33) as u8;
            })
        }),
        limits(2000),
    );
    assert_eq!(e, "not a session store");
    // A format of another version: its header's own checksum is right.
    let fd = handed_over_with(limits(2000), |b| {
        // SAFETY: `b` is the whole region from its page-aligned base, so
        // aligned for a Header and longer than one; any bytes are a valid
        // Header (SharedPod); the reference lives only in this closure.
        let header = unsafe { &mut *b.as_mut_ptr().cast::<Header>() };
        header.format = FORMAT + 1;
        header.check = header.checksum();
    });
    let e = refused(fd, limits(2000));
    assert!(e.contains("another version of sslcache"), "{e}");
}

/// Damage behind a valid header (a writer killed mid-way, or worse) is
/// repaired before use: what cannot be trusted is dropped, the rest stays.
#[test]
fn damage_behind_the_header_is_repaired_on_takeover() {
    let (store, fd) = Store::create_handed_over(limits(100)).unwrap();
    for i in 0..50 {
        store.insert(&key(i), &value_for(&key(i), 150), NOW + 100, NOW);
    }
    let layout = store.layout;
    drop(store);
    let region = Region::map_file(fd.as_fd()).unwrap();
    // Scribble over the bucket array and the LRU links of the only shard.
    let buckets = region.ptr_at::<u32>(layout.shard_base, layout.buckets);
    // SAFETY: `layout.buckets` u32s at `shard_base` are in bounds and aligned
    // (ptr_at checked them) and mapped until `region` drops below; the store
    // was dropped, so nothing else references them.
    unsafe { std::slice::from_raw_parts_mut(buckets, layout.buckets).fill(0xdead_beef) };
    drop(region);
    let (store, _fd) = Store::adopt(limits(100), fd).unwrap();
    assert_eq!(store.len(), 50);
    for i in 0..50 {
        assert_eq!(get(&store, &key(i)), Some(value_for(&key(i), 150)), "{i}");
    }
}

/// The sweep at the largest capacity with a few sessions stored reads no
/// page of the region that no session uses: resident memory does not grow,
/// where the sweep over every bucket faulted the whole index in.
#[test]
fn the_sweep_touches_only_what_is_stored() {
    let store = Store::create(Limits {
        capacity: MAX_ITEMS,
        keysize: 64,
        blocksize: 512,
    })
    .unwrap();
    for i in 0..10_000 {
        store.insert(&key(i), &value_for(&key(i), 150), NOW + 10 + i % 2, NOW);
    }
    let page = 4096;
    let stored = store.resident_bytes().unwrap();
    // Nothing expired: every session visited, none removed.
    assert_eq!(store.sweep(NOW), 0);
    assert!(store.resident_bytes().unwrap() <= stored + 16 * page);
    // Half expired: removed, still without a new page.
    assert_eq!(store.sweep(NOW + 10), 5_000);
    assert_eq!(store.len(), 5_000);
    assert!(store.resident_bytes().unwrap() <= stored + 16 * page);
    for i in 0..10_000 {
        assert_eq!(get(&store, &key(i)).is_some(), i % 2 == 1, "key {i}");
    }
    // The reference sweep reads every bucket: the whole bucket array
    // (4 bytes a bucket) becomes resident.
    assert_eq!(store.sweep_every_bucket(NOW), 0);
    let buckets = store.bucket_count() * 4;
    assert!(store.resident_bytes().unwrap() >= stored + buckets / 2);
}

/// An empty store is swept without locking a shard or reading its index.
#[test]
fn an_empty_store_is_swept_without_reading_it() {
    let store = Store::create(limits(MAX_ITEMS)).unwrap();
    let before = store.resident_bytes().unwrap();
    for _ in 0..3 {
        assert_eq!(store.sweep(NOW), 0);
    }
    assert_eq!(store.resident_bytes().unwrap(), before);
    assert!(before < 64 * 4096, "{before} bytes resident when empty");
}

/// The sweep over the live entries removes exactly what the sweep over
/// every bucket removes, after a mix of inserts, replacements, removals,
/// lookups (which reorder the LRU list) and evictions.
#[test]
fn the_sweep_removes_what_the_reference_sweep_removes() {
    for seed in 1..=4u64 {
        let a = Store::create(limits(3000)).unwrap();
        let b = Store::create(limits(3000)).unwrap();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..8000 {
            let r = next();
            let k = key(r % 4000);
            match (r >> 20) % 8 {
                0 => {
                    a.remove(&k, NOW);
                    b.remove(&k, NOW);
                }
                1 => {
                    get(&a, &k);
                    get(&b, &k);
                }
                _ => {
                    let expires = NOW + 1 + (r >> 32) % 20;
                    let v = value_for(&k, 20 + (r >> 40) as usize % 300);
                    a.insert(&k, &v, expires, NOW);
                    b.insert(&k, &v, expires, NOW);
                }
            }
        }
        // Evictions pick per-shard LRU victims; the shards differ between
        // the two stores (their hash keys are random): compare what each
        // store holds with its own sweep.
        for t in [NOW + 5, NOW + 12, NOW + 21] {
            let live = |s: &Store| {
                let mut v = Vec::new();
                s.scan(t, |k, _, _| v.push(k.to_vec()));
                v.sort();
                v
            };
            let (before_a, before_b) = (a.len(), b.len());
            let (expected_a, expected_b) = (live(&a), live(&b));
            let removed_a = a.sweep(t);
            let removed_b = b.sweep_every_bucket(t);
            assert_eq!(before_a - removed_a, expected_a.len() as u64, "seed {seed} at {t}");
            assert_eq!(before_b - removed_b, expected_b.len() as u64, "seed {seed} at {t}");
            assert_eq!(live(&a), expected_a);
            assert_eq!(live(&b), expected_b);
            assert_eq!(a.len(), expected_a.len() as u64);
        }
        assert!(a.is_empty() && b.is_empty());
    }
}

/// The bounds: the largest store is accepted, one more session or a
/// blocksize that would reserve more than MAX_RESERVED is not.
#[test]
fn sizes_past_the_bounds_are_refused() {
    let at_most = Limits {
        capacity: MAX_ITEMS,
        keysize: 2048,
        blocksize: 65535,
    };
    let reserved = at_most.reserved_bytes().unwrap();
    assert!((800 << 30..=MAX_RESERVED).contains(&reserved), "{reserved}");
    // (Not mapped here: 812 GiB of address space is fine with the
    // kernel's default overcommit, not with vm.overcommit_memory = 2.)
    assert_eq!(at_most.refusal(), None);
    let e = Store::create(Limits {
        capacity: MAX_ITEMS + 1,
        ..at_most
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("more than 10000000 items"), "{e}");
    let e = Store::create(Limits {
        blocksize: 131_072,
        ..at_most
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("GiB reserved, more than 1024 GiB"), "{e}");
}
