//! The shared-memory session store.
//!
//! One shared [`Region`] made in the uWSGI master before the router processes
//! fork holds every session of the node. Keys (session ids) hash to one of up
//! to 64 shards, each with its own robust mutex, so lookups from many router
//! processes proceed in parallel. Values live in 64-byte chunks, so resident
//! memory follows the bytes stored instead of a fixed block per session.
//!
//! Across processes: the region is `MAP_SHARED`, so every process sees the
//! same bytes. Fields read without a lock are atomics (`std` atomics are
//! address-free and lock-free on this platform, hence valid across
//! processes); everything else is touched only under the shard's lock. The
//! hashing key lives in the [`Store`] handle, which every process inherits
//! from the master through `fork()`.
//!
//! A holder killed at any instant leaves its shard repairable (see the
//! `shard` module); the next locker repairs it. A holder that is alive but stuck
//! costs one of the other processes [`LOCK_TIMEOUT`] once a second; the
//! other attempts on that shard wait a few milliseconds (lookups miss,
//! inserts are dropped) until it answers again.
//!
//! Here: the [`Store`] handle and what it does (look up, insert, remove,
//! scan, sweep). Beside it: `create.rs` (a new store, or one taken over),
//! `layout.rs` (where everything sits in the region, and its header),
//! `shard.rs` (one shard: index, LRU list, chunks, repair), `file.rs`
//! (store files); the tests in `tests.rs` and `tests/processes.rs`.

mod create;
pub mod file;
mod layout;
mod shard;

use std::hash::Hasher;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::monotonic_ms;
use siphasher::sip::SipHasher13;

use crate::shm::{Concurrent, Locked, Region, SharedPod};
pub use create::MEMORY_FILE_NAME;
use layout::{is_store_prefix, Layout, PaddedHead, ShardHead, HEAD_STRIDE, MAGIC};
use shard::{Chunk, Entry, NoRoom, ShardMeta, ShardView};

/// Longest wait for a shard lock on the handshake path. Far above any
/// critical section (microseconds) plus a scheduler delay on a busy machine.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(50);
/// After a timeout, for how long waits on that shard are cut short.
const STALL_BACKOFF_MS: u64 = 1000;
/// The cut-short wait.
const STALLED_WAIT: Duration = Duration::from_millis(2);

/// Most sessions one store holds: ten million, a node's worth at thousands
/// of new TLS sessions a second kept for minutes. Beyond it the index alone
/// (buckets, entries, chunk links: all sized by the capacity) would cost
/// gigabytes of address space and of page tables as it fills.
pub const MAX_ITEMS: u64 = 10_000_000;
/// Most bytes one store reserves (virtual, resident only as used; a store
/// file's whole size on disk): 1 TiB, room for [`MAX_ITEMS`] sessions at
/// the default blocksize (65535: 812 GiB).
pub const MAX_RESERVED: u64 = 1 << 40;

/// Sizes of a store, as configured (uWSGI `items`, `keysize`, `blocksize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Number of sessions the store keeps before evicting.
    pub capacity: u64,
    /// Longest key accepted.
    pub keysize: u32,
    /// Longest value accepted.
    pub blocksize: u32,
}

impl Limits {
    /// Bytes a store of these sizes would reserve, bounds aside; `Err`
    /// says why it cannot be laid out at all.
    pub fn reserved_bytes(&self) -> Result<u64, String> {
        Layout::compute(*self)
            .map(|l| l.total as u64)
            .map_err(|e| e.to_string())
    }

    /// Why no store of these sizes can be made ([`MAX_ITEMS`],
    /// [`MAX_RESERVED`], the index's own limits), if none can.
    pub fn refusal(&self) -> Option<String> {
        Layout::new(*self).err().map(|e| e.to_string())
    }
}

/// Store-wide counters, all in shared memory.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub replaced: AtomicU64,
    pub evicted: AtomicU64,
    pub expired: AtomicU64,
    pub removed: AtomicU64,
    pub too_big: AtomicU64,
    pub busy: AtomicU64,
    pub repairs: AtomicU64,
    /// Unix time of the last change.
    pub last_modified: AtomicU64,
    /// The latest expiry of a session evicted for room: the store holds
    /// every session it took that expires later (see [`Store::evicted_until`]).
    pub evicted_until: AtomicU64,
}

impl Counters {
    /// The counters by the names operators see (uWSGI metrics): `evicted`
    /// is the stats server's `full`, `deleted` the sessions OpenSSL or a
    /// peer asked to forget.
    pub fn fields(&self) -> [(&'static str, &AtomicU64); 10] {
        [
            ("hits", &self.hits),
            ("misses", &self.misses),
            ("inserts", &self.inserts),
            ("replaced", &self.replaced),
            ("evicted", &self.evicted),
            ("expired", &self.expired),
            ("deleted", &self.removed),
            ("too_big", &self.too_big),
            ("lock_busy", &self.busy),
            ("lock_repairs", &self.repairs),
        ]
    }
}

// SAFETY: repr(C), atomics only, zero is a valid value of each.
unsafe impl SharedPod for Counters {}
// SAFETY: every field is an AtomicU64, changed only through atomic
// operations: shared references while other processes count are sound.
unsafe impl Concurrent for Counters {}

/// Result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Found; the value was appended to the output buffer.
    Hit {
        expires: u64,
    },
    Miss,
    /// Found but expired (and now removed).
    Expired,
    /// The shard's lock could not be taken in time.
    Busy,
}

/// Result of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Stored {
        replaced: bool,
        evicted: usize,
    },
    /// Key or value longer than the configured limits.
    TooBig,
    /// Expiry already in the past.
    Expired,
    /// The live entry under the key was one the caller wants kept
    /// ([`Store::insert_unless`]); nothing changed.
    Kept,
    Busy,
}

/// Handle to a store; cheap to share, valid in every process forked after
/// its creation.
pub struct Store {
    region: Region,
    layout: Layout,
    limits: Limits,
    /// SipHash-1-3 keys of the index, also in the region's header.
    hash_keys: [u64; 2],
}

impl Store {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Processes forked for the application from now on get private zeros
    /// instead of the store's mapping (see [`crate::shm::scrub`]).
    pub fn forget_in_app_children(&self) {
        self.region.forget_in_app_children();
    }

    /// Bytes reserved (virtual); only touched pages are resident.
    pub fn reserved_bytes(&self) -> usize {
        self.region.size()
    }

    /// Bytes of the mapping actually resident.
    pub fn resident_bytes(&self) -> io::Result<usize> {
        self.region.resident_bytes()
    }

    pub fn shard_count(&self) -> usize {
        self.layout.shards
    }

    /// Hash buckets over all shards.
    pub fn bucket_count(&self) -> usize {
        self.layout.shards * self.layout.buckets
    }

    /// Counts a value the caller could not even encode within the limits.
    pub fn note_too_big(&self) {
        self.counters().too_big.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &Counters {
        self.region.shared_ref(self.layout.counters_at)
    }

    /// The latest expiry (unix seconds) of a session this store evicted to
    /// make room, 0 if none: of the sessions it took, it still holds every
    /// one that expires later, and one that expires sooner may be gone.
    /// Repair compares only above it, and brings back nothing below it (a
    /// full store would otherwise churn: each session brought back evicts
    /// another that a peer then sends back).
    pub fn evicted_until(&self) -> u64 {
        self.counters().evicted_until.load(Ordering::Relaxed)
    }

    fn head(&self, shard: usize) -> &ShardHead {
        self.region
            .shared_ref::<PaddedHead>(self.layout.heads_at + shard * HEAD_STRIDE)
    }

    fn shard_len(&self, shard: usize) -> &AtomicU32 {
        self.region.shared_ref(self.layout.lens_at + shard * 4)
    }

    /// Live entries, summed over shards without locking.
    pub fn len(&self) -> u64 {
        (0..self.layout.shards)
            .map(|s| self.shard_len(s).load(Ordering::Relaxed) as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values stored.
    pub fn stored_bytes(&self) -> u64 {
        (0..self.layout.shards)
            .map(|s| self.head(s).bytes.load(Ordering::Relaxed))
            .sum()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.hash_keys[0], self.hash_keys[1]);
        hasher.write(key);
        hasher.finish()
    }

    fn shard_of(&self, hash: u64) -> usize {
        // High bits pick the shard, low bits the bucket inside it.
        (hash >> 32) as usize & (self.layout.shards - 1)
    }

    /// Runs `f` on the locked shard; `None` when the lock was not obtained.
    fn with_shard<R>(&self, shard: usize, f: impl FnOnce(&mut ShardView<'_>) -> R) -> Option<R> {
        let head = self.head(shard);
        let now_ms = monotonic_ms();
        let stalled = head.stalled_until.load(Ordering::Relaxed) > now_ms;
        let locked = head.lock.lock(if stalled { STALLED_WAIT } else { LOCK_TIMEOUT });
        if locked == Locked::TimedOut {
            if !stalled {
                head.stalled_until.store(now_ms + STALL_BACKOFF_MS, Ordering::Relaxed);
            }
            self.counters().busy.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if stalled {
            head.stalled_until.store(0, Ordering::Relaxed);
        }
        let mut view = self.view(shard);
        if locked == Locked::OwnerDied {
            view.repair();
            self.counters().repairs.fetch_add(1, Ordering::Relaxed);
            head.lock.mark_consistent();
        }
        // A panic half-way through a mutation leaves the shard as a killed
        // holder would: repair it before letting anyone else in.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut view)));
        if result.is_err() {
            view.repair();
            self.counters().repairs.fetch_add(1, Ordering::Relaxed);
        }
        self.shard_len(shard).store(view.len(), Ordering::Relaxed);
        head.bytes.store(view.bytes(), Ordering::Relaxed);
        head.lock.unlock();
        match result {
            Ok(r) => Some(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The arrays of one shard. Only called with the shard's lock held.
    fn view(&self, shard: usize) -> ShardView<'_> {
        let l = &self.layout;
        let base = l.shard_base + shard * l.shard_stride;
        let meta = self
            .region
            .ptr_at::<ShardMeta>(l.metas_at + shard * std::mem::size_of::<ShardMeta>(), 1);
        let buckets = self.region.ptr_at::<u32>(base, l.buckets);
        let entries = self.region.ptr_at::<Entry>(base + l.entries_off, l.slots);
        let next = self.region.ptr_at::<u32>(base + l.next_off, l.chunks);
        let chunks = self.region.ptr_at::<Chunk>(base + l.chunks_off, l.chunks);
        // SAFETY: the caller holds this shard's lock, so no other process or
        // thread touches these arrays while the view lives; the pointers are
        // in bounds and aligned (ptr_at) and the arrays do not overlap
        // (Layout places them one after the other); the types are SharedPod.
        unsafe {
            ShardView {
                meta: &mut *meta,
                buckets: std::slice::from_raw_parts_mut(buckets, l.buckets),
                entries: std::slice::from_raw_parts_mut(entries, l.slots),
                chunk_next: std::slice::from_raw_parts_mut(next, l.chunks),
                chunks: std::slice::from_raw_parts_mut(chunks, l.chunks),
            }
        }
    }

    /// Looks `key` up at time `now` (unix seconds); on a hit, appends the
    /// value to `out`.
    pub fn get(&self, key: &[u8], now: u64, out: &mut Vec<u8>) -> Lookup {
        let counters = self.counters();
        let lookup = self.look(key, now, out);
        match lookup {
            Lookup::Busy => {}
            Lookup::Miss => {
                counters.misses.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Expired => {
                counters.misses.fetch_add(1, Ordering::Relaxed);
                counters.expired.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Hit { .. } => {
                counters.hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        lookup
    }

    /// Looks again for `key` after [`get`](Self::get) missed it (waiting
    /// for it to arrive): a hit turns that miss into a hit in the counters,
    /// anything else counts nothing more.
    pub fn get_again(&self, key: &[u8], now: u64, out: &mut Vec<u8>) -> Lookup {
        let lookup = self.look(key, now, out);
        let counters = self.counters();
        match lookup {
            Lookup::Hit { .. } => {
                counters.hits.fetch_add(1, Ordering::Relaxed);
                // The miss `get` counted: never below zero.
                let _ = counters
                    .misses
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(1));
            }
            Lookup::Expired => {
                counters.expired.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Miss | Lookup::Busy => {}
        }
        lookup
    }

    fn look(&self, key: &[u8], now: u64, out: &mut Vec<u8>) -> Lookup {
        let hash = self.hash(key);
        let result = self.with_shard(self.shard_of(hash), |view| {
            let found = view.lookup(hash, key)?;
            if found.expires <= now {
                view.remove_found(hash, key, found);
                return Some(Err(()));
            }
            view.read_value(found.slot, out);
            Some(Ok(found.expires))
        });
        match result {
            None => Lookup::Busy,
            Some(None) => Lookup::Miss,
            Some(Some(Err(()))) => Lookup::Expired,
            Some(Some(Ok(expires))) => Lookup::Hit { expires },
        }
    }

    /// Stores `value` under `key` until `expires` (unix seconds), evicting
    /// the least recently used entries when the store is full.
    pub fn insert(&self, key: &[u8], value: &[u8], expires: u64, now: u64) -> Insert {
        self.insert_unless(key, value, expires, now, |_| false)
    }

    /// As [`insert`](Self::insert), unless the live value already under
    /// `key` is one `keep` says must stay (checked under the same lock).
    pub fn insert_unless(
        &self,
        key: &[u8],
        value: &[u8],
        expires: u64,
        now: u64,
        keep: impl FnOnce(&[u8]) -> bool,
    ) -> Insert {
        let counters = self.counters();
        if key.is_empty() || key.len() > self.limits.keysize as usize || value.len() > self.limits.blocksize as usize {
            counters.too_big.fetch_add(1, Ordering::Relaxed);
            return Insert::TooBig;
        }
        if expires <= now {
            return Insert::Expired;
        }
        let hash = self.hash(key);
        // Store-wide capacity: sums are read without locks, so concurrent
        // inserts may overshoot by at most one entry each, corrected by the
        // next insert.
        let full = self.len() >= self.limits.capacity;
        let result = self.with_shard(self.shard_of(hash), |view| {
            if let Some(found) = view.lookup(hash, key).filter(|f| f.expires > now) {
                let mut current = Vec::new();
                view.read_value(found.slot, &mut current);
                if keep(&current) {
                    return None;
                }
            }
            Some(view.insert(hash, key, value, expires, full))
        });
        match result {
            None => Insert::Busy,
            Some(None) => Insert::Kept,
            Some(Some(Err(NoRoom::TooBig))) => {
                counters.too_big.fetch_add(1, Ordering::Relaxed);
                Insert::TooBig
            }
            Some(Some(Ok(done))) => {
                counters.inserts.fetch_add(1, Ordering::Relaxed);
                if done.replaced {
                    counters.replaced.fetch_add(1, Ordering::Relaxed);
                }
                if done.evicted > 0 {
                    counters.evicted.fetch_add(done.evicted as u64, Ordering::Relaxed);
                    counters.evicted_until.fetch_max(done.latest_evicted, Ordering::Relaxed);
                }
                counters.last_modified.store(now, Ordering::Relaxed);
                Insert::Stored {
                    replaced: done.replaced,
                    evicted: done.evicted,
                }
            }
        }
    }

    /// Removes `key`; `Some(true)` if it was there, `None` if busy.
    pub fn remove(&self, key: &[u8], now: u64) -> Option<bool> {
        let hash = self.hash(key);
        let removed = self.with_shard(self.shard_of(hash), |view| view.remove(hash, key))?;
        if removed {
            let counters = self.counters();
            counters.removed.fetch_add(1, Ordering::Relaxed);
            counters.last_modified.store(now, Ordering::Relaxed);
        }
        Some(removed)
    }

    /// Calls `f(key, value, expires)` for every live entry of one shard
    /// that expires after `now`, under that shard's lock (so `f` must be
    /// quick); `false` when the lock was busy. Lookups are not counted and
    /// recency is not changed.
    pub fn scan_shard(&self, shard: usize, now: u64, f: impl FnMut(&[u8], &[u8], u64)) -> bool {
        let mut scratch = Vec::with_capacity(self.limits.keysize as usize + self.limits.blocksize as usize);
        self.with_shard(shard, |view| view.for_each_live(now, &mut scratch, f))
            .is_some()
    }

    /// [`scan_shard`](Self::scan_shard) over every shard; returns how many
    /// shards were busy (and skipped).
    pub fn scan(&self, now: u64, mut f: impl FnMut(&[u8], &[u8], u64)) -> usize {
        (0..self.layout.shards)
            .filter(|&shard| !self.scan_shard(shard, now, &mut f))
            .count()
    }

    /// Drops every entry expired at `now`; returns how many. Shards whose
    /// lock is busy are skipped until the next sweep.
    ///
    /// Its cost follows the sessions stored, not the capacity: a shard
    /// whose live count (read without its lock) is zero is not locked, and
    /// in the others only the live entries are visited (see
    /// `ShardView::sweep`), so the sweep reads no page of the region that
    /// no stored session uses. A count left stale by a holder killed
    /// mid-insert only delays that shard's sweep until its next use; a
    /// lookup never returns an expired session anyway.
    pub fn sweep(&self, now: u64) -> u64 {
        let mut removed = 0;
        for shard in 0..self.layout.shards {
            if self.shard_len(shard).load(Ordering::Relaxed) == 0 {
                continue;
            }
            removed += self.with_shard(shard, |view| view.sweep(now)).unwrap_or(0) as u64;
        }
        if removed > 0 {
            self.counters().expired.fetch_add(removed, Ordering::Relaxed);
        }
        removed
    }

    /// The sweep as it was before (every bucket of every shard, whatever
    /// is stored): the reference the tests and `benches/store.rs` compare
    /// [`sweep`](Self::sweep) with. Not for production use.
    #[doc(hidden)]
    pub fn sweep_every_bucket(&self, now: u64) -> u64 {
        let mut removed = 0;
        for shard in 0..self.layout.shards {
            removed += self.with_shard(shard, |view| view.sweep_every_bucket(now)).unwrap_or(0) as u64;
        }
        if removed > 0 {
            self.counters().expired.fetch_add(removed, Ordering::Relaxed);
        }
        removed
    }
}

#[cfg(test)]
mod tests;
