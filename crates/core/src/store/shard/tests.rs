//! Tests of one shard on ordinary memory (a weak hash, so bucket chains
//! collide): inserts, lookups, eviction by entries and by chunks, the sweep,
//! and repair from broken chains, duplicates and a disagreeing index.

use super::*;

struct Owned {
    meta: ShardMeta,
    buckets: Vec<Link>,
    entries: Vec<Entry>,
    chunk_next: Vec<Link>,
    chunks: Vec<Chunk>,
}

impl Owned {
    fn new(slots: usize, chunks: usize) -> Self {
        Owned {
            meta: ShardMeta::default(),
            buckets: vec![0; slots.next_power_of_two()],
            entries: vec![Entry::default(); slots],
            chunk_next: vec![0; chunks],
            chunks: vec![[0; CHUNK]; chunks],
        }
    }
    fn view(&mut self) -> ShardView<'_> {
        ShardView {
            meta: &mut self.meta,
            buckets: &mut self.buckets,
            entries: &mut self.entries,
            chunk_next: &mut self.chunk_next,
            chunks: &mut self.chunks,
        }
    }
}

fn h(key: &[u8]) -> u64 {
    // Deliberately weak so that collisions in buckets are exercised.
    key.iter().fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64)) % 5
}

fn get(v: &mut ShardView<'_>, key: &[u8]) -> Option<Vec<u8>> {
    let f = v.lookup(h(key), key)?;
    let mut out = Vec::new();
    v.read_value(f.slot, &mut out);
    Some(out)
}

#[test]
fn insert_lookup_replace_remove() {
    let mut s = Owned::new(8, 64);
    let mut v = s.view();
    let big = vec![0xab; 200];
    v.insert(h(b"a"), b"a", &big, 10, false).unwrap();
    v.insert(h(b"bb"), b"bb", b"two", 10, false).unwrap();
    assert_eq!(get(&mut v, b"a").unwrap(), big);
    assert_eq!(get(&mut v, b"bb").unwrap(), b"two");
    assert!(get(&mut v, b"c").is_none());
    let r = v.insert(h(b"a"), b"a", b"new", 10, false).unwrap();
    assert!(r.replaced);
    assert_eq!(get(&mut v, b"a").unwrap(), b"new");
    assert_eq!(v.len(), 2);
    assert!(v.remove(h(b"a"), b"a"));
    assert!(!v.remove(h(b"a"), b"a"));
    assert_eq!(v.len(), 1);
    assert_eq!(v.bytes(), 5);
}

#[test]
fn evicts_least_recently_used() {
    let mut s = Owned::new(3, 64);
    let mut v = s.view();
    for k in [b"k1", b"k2", b"k3"] {
        v.insert(h(k), k, b"v", 10, false).unwrap();
    }
    // Use k1 so that k2 becomes the oldest.
    assert!(get(&mut v, b"k1").is_some());
    let r = v.insert(h(b"k4"), b"k4", b"v", 10, false).unwrap();
    assert_eq!(r.evicted, 1);
    assert!(get(&mut v, b"k2").is_none());
    for k in [b"k1", b"k3", b"k4"] {
        assert!(get(&mut v, k).is_some(), "{k:?}");
    }
}

#[test]
fn evicts_for_chunks_too() {
    // 4 slots but only 4 chunks: a 3-chunk value pushes others out.
    let mut s = Owned::new(4, 4);
    let mut v = s.view();
    v.insert(h(b"a"), b"a", b"x", 10, false).unwrap();
    v.insert(h(b"b"), b"b", b"y", 10, false).unwrap();
    let r = v.insert(h(b"c"), b"c", &[1; 150], 10, false).unwrap();
    assert_eq!(r.evicted, 1);
    assert!(get(&mut v, b"a").is_none());
    assert!(get(&mut v, b"b").is_some());
    assert_eq!(v.insert(h(b"d"), b"d", &[1; 300], 10, false), Err(NoRoom::TooBig));
}

#[test]
fn repair_drops_a_chain_that_loops() {
    let mut s = Owned::new(8, 64);
    {
        let mut v = s.view();
        v.insert(h(b"a"), b"a", &[1; 200], 10, false).unwrap();
        v.insert(h(b"b"), b"b", &[2; 100], 10, false).unwrap();
    }
    // a's chain: first chunk points back at itself.
    let first = s.entries[0].first_chunk as usize;
    s.chunk_next[first - 1] = first as u32;
    let mut v = s.view();
    assert_eq!(v.repair(), RepairReport { kept: 1, dropped: 1 });
    assert!(get(&mut v, b"a").is_none());
    assert_eq!(get(&mut v, b"b").unwrap(), vec![2; 100]);
    // Every chunk of the dropped chain is free again: 64 - 2 in use.
    for i in 0..20u8 {
        v.insert(h(&[i, 1]), &[i, 1], &[i; 100], 10, false).unwrap();
    }
}

#[test]
fn sweep_removes_expired_only() {
    let mut s = Owned::new(8, 64);
    let mut v = s.view();
    v.insert(h(b"old"), b"old", b"v", 5, false).unwrap();
    v.insert(h(b"new"), b"new", b"v", 50, false).unwrap();
    assert_eq!(v.sweep(10), 1);
    assert!(get(&mut v, b"old").is_none());
    assert!(get(&mut v, b"new").is_some());
}

#[test]
fn sweep_visits_the_live_entries_in_any_lru_order() {
    let mut s = Owned::new(64, 256);
    let mut v = s.view();
    for i in 0..40u8 {
        v.insert(h(&[i]), &[i], &[i; 70], 10 + u64::from(i % 4), false).unwrap();
    }
    // Reorder the LRU list, replace and remove some.
    for i in (0..40u8).step_by(3) {
        get(&mut v, &[i]);
    }
    v.insert(h(&[5]), &[5], b"later", 99, false).unwrap();
    assert!(v.remove(h(&[6]), &[6]));
    // Expiring at 10 or 11: i % 4 in {0, 1}, but not 5 (replaced) or 6.
    let expired = (0..40u8).filter(|i| i % 4 < 2 && *i != 5).count();
    assert_eq!(v.sweep(11), expired);
    assert_eq!(v.len() as usize, 40 - 1 - expired);
    for i in 0..40u8 {
        let kept = i == 5 || (i % 4 >= 2 && i != 6);
        assert_eq!(get(&mut v, &[i]).is_some(), kept, "key {i}");
    }
    assert_eq!(v.sweep(11), 0);
}

#[test]
fn sweep_repairs_an_index_that_disagrees_with_the_lru_list() {
    let mut s = Owned::new(8, 64);
    {
        let mut v = s.view();
        v.insert(h(b"old"), b"old", b"v", 5, false).unwrap();
        v.insert(h(b"new"), b"new", b"v", 50, false).unwrap();
    }
    // The expired entry is on the LRU list but in no bucket chain.
    s.buckets.iter_mut().for_each(|b| *b = 0);
    let mut v = s.view();
    assert_eq!(v.sweep(10), 1);
    assert_eq!(v.len(), 1);
    assert!(get(&mut v, b"old").is_none());
    assert!(get(&mut v, b"new").is_some());
}

#[test]
fn repair_rebuilds_from_live_entries() {
    let mut s = Owned::new(16, 128);
    {
        let mut v = s.view();
        for i in 0..10u8 {
            v.insert(h(&[i]), &[i], &[i; 70], 10, false).unwrap();
        }
        get(&mut v, &[0]);
    }
    // Wreck everything derivable.
    s.buckets.iter_mut().for_each(|b| *b = 0);
    s.meta.lru_head = 0;
    s.meta.free_chunks = 0;
    s.meta.len = 99;
    let mut v = s.view();
    let report = v.repair();
    assert_eq!(report, RepairReport { kept: 10, dropped: 0 });
    assert_eq!(v.len(), 10);
    // LRU order survived: key 1 is now the oldest (0 was used last).
    v.insert(h(b"x"), b"x", b"v", 10, true).unwrap();
    assert!(get(&mut v, &[1]).is_none());
    for i in (0..10u8).filter(|&i| i != 1) {
        assert_eq!(get(&mut v, &[i]).unwrap(), vec![i; 70]);
    }
}

#[test]
fn repair_drops_broken_and_duplicate_entries() {
    let mut s = Owned::new(16, 128);
    {
        let mut v = s.view();
        v.insert(h(b"a"), b"a", &[1; 100], 10, false).unwrap();
        v.insert(h(b"b"), b"b", &[2; 100], 10, false).unwrap();
    }
    // A stale duplicate of "a" with an older stamp, sharing no chunks.
    let mut dup = s.entries[0];
    dup.stamp = 0;
    dup.first_chunk = 0;
    s.entries[5] = dup;
    s.meta.entries_used = 6;
    // Break b's chain.
    let b_first = s.entries[1].first_chunk as usize;
    s.chunk_next[b_first - 1] = 999;
    let mut v = s.view();
    let report = v.repair();
    assert_eq!(report.kept, 1);
    assert_eq!(report.dropped, 2);
    assert_eq!(get(&mut v, b"a").unwrap(), vec![1; 100]);
    assert!(get(&mut v, b"b").is_none());
    // Freed chunks are reusable.
    for i in 0..6u8 {
        v.insert(h(&[i, i]), &[i, i], &[i; 100], 10, false).unwrap();
    }
    assert_eq!(v.len(), 7);
}
