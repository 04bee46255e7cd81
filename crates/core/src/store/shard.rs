// Over 600 lines on purpose: one data structure whose crash-safety order and repair must be read together.
//! One shard of the store: a hash index, an LRU list and a pool of 64-byte
//! chunks holding `key || value`, all in shared memory and all guarded by the
//! shard's robust mutex.
//!
//! Links are 1-based slot numbers (`0` = none), so a freshly mapped, all-zero
//! shard is a valid empty shard and nothing is written at creation.
//!
//! Crash safety: a holder may die at any instruction. The only invariant the
//! code keeps in order is that an entry's chunk chain is complete before the
//! entry is marked live, and that an entry is marked dead before its chunks
//! are released. Everything else (bucket chains, LRU list, free lists,
//! counts) is derivable from the live entries, and [`ShardView::repair`]
//! derives it again after a holder died.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};

use crate::shm::SharedPod;

/// Test builds can make the process die at a numbered step of a mutation,
/// with the shard lock held, to prove that a repair recovers from there.
#[cfg(test)]
pub mod crash {
    use std::sync::atomic::{AtomicU32, Ordering};

    pub static AT: AtomicU32 = AtomicU32::new(0);

    pub fn point(n: u32) {
        if AT.load(Ordering::Relaxed) == n {
            // SAFETY: kill(2) on our own pid has no memory-safety effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

#[cfg(not(test))]
mod crash {
    #[inline(always)]
    pub fn point(_: u32) {}
}

/// Bytes of `key || value` per chunk.
pub const CHUNK: usize = 64;

type Link = u32;

/// Index entry of one stored session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    hash: u64,
    /// Absolute expiry, unix seconds.
    expires: u64,
    /// LRU clock value of the last use: larger is more recent.
    stamp: u64,
    val_len: u32,
    key_len: u16,
    live: u8,
    _pad: u8,
    first_chunk: Link,
    /// Next entry in the bucket chain, or in the free list when not live.
    next: Link,
    lru_prev: Link,
    lru_next: Link,
}

// SAFETY: repr(C), integers only, all-zero is "free entry".
unsafe impl SharedPod for Entry {}

/// Bookkeeping of a shard, only touched under its lock.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ShardMeta {
    lru_head: Link,
    lru_tail: Link,
    free_entries: Link,
    /// Entries ever handed out: slots above it were never touched.
    entries_used: u32,
    free_chunks: Link,
    chunks_used: u32,
    chunks_free: u32,
    len: u32,
    tick: u64,
    bytes: u64,
}

// SAFETY: repr(C), integers only, all-zero is "empty shard".
unsafe impl SharedPod for ShardMeta {}

/// Payload chunk.
pub type Chunk = [u8; CHUNK];

/// What a live entry holds, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub slot: Link,
    pub expires: u64,
}

/// Why an insert did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The value needs more chunks than the whole shard holds.
    TooBig,
}

/// A locked shard: exclusive access to its arrays for the lock's duration.
pub struct ShardView<'a> {
    pub meta: &'a mut ShardMeta,
    pub buckets: &'a mut [Link],
    pub entries: &'a mut [Entry],
    pub chunk_next: &'a mut [Link],
    pub chunks: &'a mut [Chunk],
}

fn chunks_for(bytes: usize) -> usize {
    bytes.div_ceil(CHUNK).max(1)
}

impl ShardView<'_> {
    pub fn len(&self) -> u32 {
        self.meta.len
    }

    pub fn bytes(&self) -> u64 {
        self.meta.bytes
    }

    fn bucket_of(&self, hash: u64) -> usize {
        (hash as usize) & (self.buckets.len() - 1)
    }

    fn entry(&self, slot: Link) -> &Entry {
        &self.entries[slot as usize - 1]
    }

    fn entry_mut(&mut self, slot: Link) -> &mut Entry {
        &mut self.entries[slot as usize - 1]
    }

    /// Calls `f` on each piece of the entry's `key || value`, in order.
    fn for_each_piece(&self, slot: Link, mut f: impl FnMut(&[u8]) -> bool) {
        let e = self.entry(slot);
        let mut remaining = e.key_len as usize + e.val_len as usize;
        let mut chunk = e.first_chunk;
        while remaining > 0 && chunk != 0 {
            let take = remaining.min(CHUNK);
            if !f(&self.chunks[chunk as usize - 1][..take]) {
                return;
            }
            remaining -= take;
            chunk = self.chunk_next[chunk as usize - 1];
        }
    }

    fn key_equals(&self, slot: Link, key: &[u8]) -> bool {
        let mut rest = key;
        let mut equal = true;
        self.for_each_piece(slot, |piece| {
            let n = piece.len().min(rest.len());
            if piece[..n] != rest[..n] {
                equal = false;
                return false;
            }
            rest = &rest[n..];
            !rest.is_empty()
        });
        equal && rest.is_empty()
    }

    /// Finds the live entry for `key`; returns it and its predecessor in the
    /// bucket chain.
    fn find(&self, hash: u64, key: &[u8]) -> Option<(Link, Link)> {
        let mut prev = 0;
        let mut slot = self.buckets[self.bucket_of(hash)];
        let mut steps = 0;
        while slot != 0 && steps < self.entries.len() {
            let e = self.entry(slot);
            if e.live == 1 && e.hash == hash && e.key_len as usize == key.len() && self.key_equals(slot, key) {
                return Some((slot, prev));
            }
            prev = slot;
            slot = e.next;
            steps += 1;
        }
        None
    }

    /// Looks `key` up and, when found, marks it most recently used.
    pub fn lookup(&mut self, hash: u64, key: &[u8]) -> Option<Found> {
        let (slot, _) = self.find(hash, key)?;
        self.touch(slot);
        let e = self.entry(slot);
        Some(Found {
            slot,
            expires: e.expires,
        })
    }

    /// Appends the value of a found entry to `out`.
    pub fn read_value(&self, slot: Link, out: &mut Vec<u8>) {
        let mut skip = self.entry(slot).key_len as usize;
        self.for_each_piece(slot, |piece| {
            if skip >= piece.len() {
                skip -= piece.len();
            } else {
                out.extend_from_slice(&piece[skip..]);
                skip = 0;
            }
            true
        });
    }

    fn touch(&mut self, slot: Link) {
        self.meta.tick += 1;
        let tick = self.meta.tick;
        self.entry_mut(slot).stamp = tick;
        self.lru_unlink(slot);
        crash::point(9);
        self.lru_push_tail(slot);
    }

    fn lru_unlink(&mut self, slot: Link) {
        let (prev, next) = {
            let e = self.entry(slot);
            (e.lru_prev, e.lru_next)
        };
        if prev != 0 {
            self.entry_mut(prev).lru_next = next;
        } else if self.meta.lru_head == slot {
            self.meta.lru_head = next;
        }
        if next != 0 {
            self.entry_mut(next).lru_prev = prev;
        } else if self.meta.lru_tail == slot {
            self.meta.lru_tail = prev;
        }
        let e = self.entry_mut(slot);
        e.lru_prev = 0;
        e.lru_next = 0;
    }

    fn lru_push_tail(&mut self, slot: Link) {
        let tail = self.meta.lru_tail;
        {
            let e = self.entry_mut(slot);
            e.lru_prev = tail;
            e.lru_next = 0;
        }
        if tail != 0 {
            self.entry_mut(tail).lru_next = slot;
        } else {
            self.meta.lru_head = slot;
        }
        self.meta.lru_tail = slot;
    }

    fn chunks_available(&self) -> usize {
        self.meta.chunks_free as usize + (self.chunks.len() - self.meta.chunks_used as usize)
    }

    fn pop_chunk(&mut self) -> Link {
        if self.meta.free_chunks != 0 {
            let c = self.meta.free_chunks;
            self.meta.free_chunks = self.chunk_next[c as usize - 1];
            self.meta.chunks_free -= 1;
            c
        } else {
            self.meta.chunks_used += 1;
            self.meta.chunks_used
        }
    }

    fn push_chunk(&mut self, c: Link) {
        self.chunk_next[c as usize - 1] = self.meta.free_chunks;
        self.meta.free_chunks = c;
        self.meta.chunks_free += 1;
    }

    fn pop_entry(&mut self) -> Option<Link> {
        if self.meta.free_entries != 0 {
            let slot = self.meta.free_entries;
            self.meta.free_entries = self.entry(slot).next;
            Some(slot)
        } else if (self.meta.entries_used as usize) < self.entries.len() {
            self.meta.entries_used += 1;
            Some(self.meta.entries_used)
        } else {
            None
        }
    }

    /// Writes `key || value` into a fresh chunk chain; the caller made sure
    /// enough chunks are available.
    fn write_chain(&mut self, key: &[u8], value: &[u8]) -> Link {
        let total = key.len() + value.len();
        let mut first = 0;
        let mut last: Link = 0;
        let mut written = 0;
        while written < total || first == 0 {
            let c = self.pop_chunk();
            self.chunk_next[c as usize - 1] = 0;
            let chunk = &mut self.chunks[c as usize - 1];
            let mut filled = 0;
            while filled < CHUNK && written < total {
                let (src, at) = if written < key.len() {
                    (key, written)
                } else {
                    (value, written - key.len())
                };
                let n = (CHUNK - filled).min(src.len() - at);
                chunk[filled..filled + n].copy_from_slice(&src[at..at + n]);
                filled += n;
                written += n;
            }
            if last == 0 {
                first = c;
            } else {
                self.chunk_next[last as usize - 1] = c;
            }
            last = c;
        }
        first
    }

    /// Removes the live entry `slot` whose bucket predecessor is `prev`.
    fn remove_slot(&mut self, slot: Link, prev: Link) {
        let (hash, next, first_chunk, bytes) = {
            let e = self.entry_mut(slot);
            e.live = 0;
            (e.hash, e.next, e.first_chunk, e.key_len as u64 + e.val_len as u64)
        };
        // Dead before anything it owns is given away.
        fence(Ordering::Release);
        crash::point(6);
        if prev != 0 {
            self.entry_mut(prev).next = next;
        } else {
            let b = self.bucket_of(hash);
            self.buckets[b] = next;
        }
        crash::point(7);
        self.lru_unlink(slot);
        let mut c = first_chunk;
        let mut n = chunks_for(bytes as usize);
        while c != 0 && n > 0 {
            let following = self.chunk_next[c as usize - 1];
            self.push_chunk(c);
            crash::point(8);
            c = following;
            n -= 1;
        }
        let free_head = self.meta.free_entries;
        let e = self.entry_mut(slot);
        e.first_chunk = 0;
        e.next = free_head;
        self.meta.free_entries = slot;
        self.meta.len -= 1;
        self.meta.bytes -= bytes;
    }

    /// Removes `key`; true when it was there.
    pub fn remove(&mut self, hash: u64, key: &[u8]) -> bool {
        match self.find(hash, key) {
            Some((slot, prev)) => {
                self.remove_slot(slot, prev);
                true
            }
            None => false,
        }
    }

    /// Removes the entry found by [`lookup`](Self::lookup) (used for expiry).
    pub fn remove_found(&mut self, hash: u64, key: &[u8], found: Found) {
        if let Some((slot, prev)) = self.find(hash, key) {
            debug_assert_eq!(slot, found.slot);
            self.remove_slot(slot, prev);
        }
    }

    /// Evicts the least recently used entry: its expiry, `None` when the
    /// shard is empty.
    pub fn evict_lru(&mut self) -> Option<u64> {
        let slot = self.meta.lru_head;
        if slot == 0 {
            return None;
        }
        let (hash, expires) = (self.entry(slot).hash, self.entry(slot).expires);
        let Some(prev) = self.bucket_prev(slot, hash) else {
            // The LRU list and the index disagree: only a repair fixes that.
            self.repair();
            return if self.meta.len > 0 { self.evict_lru() } else { None };
        };
        self.remove_slot(slot, prev);
        Some(expires)
    }

    /// Whether a new entry could get a slot without evicting.
    pub fn has_free_slot(&self) -> bool {
        self.meta.free_entries != 0 || (self.meta.entries_used as usize) < self.entries.len()
    }

    /// Inserts or replaces `key`. `must_evict` asks for one eviction first
    /// (the store is over its global capacity). Returns how many entries
    /// were evicted to make room.
    pub fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires: u64,
        must_evict: bool,
    ) -> Result<Inserted, NoRoom> {
        let need = chunks_for(key.len() + value.len());
        if need > self.chunks.len() {
            return Err(NoRoom::TooBig);
        }
        let replaced = match self.find(hash, key) {
            Some((slot, prev)) => {
                self.remove_slot(slot, prev);
                true
            }
            None => false,
        };
        let (mut evicted, mut latest_evicted) = (0, 0);
        let mut note = |expires: Option<u64>| {
            let Some(e) = expires else { return false };
            evicted += 1;
            latest_evicted = latest_evicted.max(e);
            true
        };
        if must_evict && !replaced {
            note(self.evict_lru());
        }
        while (!self.has_free_slot() || self.chunks_available() < need) && note(self.evict_lru()) {}
        if !self.has_free_slot() || self.chunks_available() < need {
            return Err(NoRoom::TooBig);
        }
        crash::point(1);
        let first_chunk = self.write_chain(key, value);
        crash::point(2);
        let slot = self.pop_entry().expect("a free slot was checked above");
        self.meta.tick += 1;
        let stamp = self.meta.tick;
        let b = self.bucket_of(hash);
        let bucket_head = self.buckets[b];
        {
            let e = self.entry_mut(slot);
            *e = Entry {
                hash,
                expires,
                stamp,
                val_len: value.len() as u32,
                key_len: key.len() as u16,
                live: 0,
                _pad: 0,
                first_chunk,
                next: bucket_head,
                lru_prev: 0,
                lru_next: 0,
            };
        }
        crash::point(3);
        // The chain is complete before the entry claims it.
        fence(Ordering::Release);
        self.entry_mut(slot).live = 1;
        crash::point(4);
        self.buckets[b] = slot;
        crash::point(5);
        self.lru_push_tail(slot);
        self.meta.len += 1;
        self.meta.bytes += (key.len() + value.len()) as u64;
        Ok(Inserted {
            replaced,
            evicted,
            latest_evicted,
        })
    }

    /// Calls `f(key, value, expires)` for every live entry expiring after
    /// `now`, in slot order (no LRU change). `scratch` holds one entry's
    /// `key || value` at a time.
    pub fn for_each_live(&self, now: u64, scratch: &mut Vec<u8>, mut f: impl FnMut(&[u8], &[u8], u64)) {
        let used = (self.meta.entries_used as usize).min(self.entries.len());
        for slot in 1..=used as Link {
            let e = *self.entry(slot);
            if e.live != 1 || e.expires <= now {
                continue;
            }
            scratch.clear();
            self.for_each_piece(slot, |piece| {
                scratch.extend_from_slice(piece);
                true
            });
            let key_len = (e.key_len as usize).min(scratch.len());
            let (key, value) = scratch.split_at(key_len);
            f(key, value, e.expires);
        }
    }

    /// Removes every entry that expired at or before `now`.
    ///
    /// Walks the LRU list, which links exactly the live entries: the cost
    /// follows the sessions stored, and no page of the index is read that
    /// no stored session uses (the bucket array is sized for the capacity;
    /// walking it faulted in every page of it, every sweep). An expired
    /// entry's bucket chain is walked to unlink it.
    pub fn sweep(&mut self, now: u64) -> usize {
        let mut removed = 0;
        let mut repaired = false;
        let mut slot = self.meta.lru_head;
        let mut steps = 0;
        while slot != 0 && steps < self.entries.len() {
            steps += 1;
            let e = *self.entry(slot);
            if e.live == 1 && e.expires <= now {
                match self.bucket_prev(slot, e.hash) {
                    Some(prev) => {
                        self.remove_slot(slot, prev);
                        removed += 1;
                    }
                    // The LRU list and the index disagree: only a repair
                    // fixes that; then walk the rebuilt list once more.
                    None if !repaired => {
                        self.repair();
                        repaired = true;
                        slot = self.meta.lru_head;
                        steps = 0;
                        continue;
                    }
                    None => break,
                }
            }
            slot = e.lru_next;
        }
        removed
    }

    /// The predecessor of `slot` in the chain of the bucket of `hash` (0:
    /// it is the chain's head); `None` when `slot` is not in that chain.
    fn bucket_prev(&self, slot: Link, hash: u64) -> Option<Link> {
        let mut prev = 0;
        let mut cur = self.buckets[self.bucket_of(hash)];
        let mut steps = 0;
        while cur != 0 && steps < self.entries.len() {
            if cur == slot {
                return Some(prev);
            }
            prev = cur;
            cur = self.entry(cur).next;
            steps += 1;
        }
        None
    }

    /// The sweep as it was before it walked the LRU list: every bucket of
    /// the index, whatever is stored. Kept as the reference the tests and
    /// the bench compare [`sweep`](Self::sweep) with.
    pub fn sweep_every_bucket(&mut self, now: u64) -> usize {
        let mut removed = 0;
        for b in 0..self.buckets.len() {
            let mut prev = 0;
            let mut slot = self.buckets[b];
            let mut steps = 0;
            while slot != 0 && steps < self.entries.len() {
                let e = *self.entry(slot);
                if e.live == 1 && e.expires <= now {
                    self.remove_slot(slot, prev);
                    removed += 1;
                } else {
                    prev = slot;
                }
                slot = e.next;
                steps += 1;
            }
        }
        removed
    }

    /// Rebuilds everything derivable from the live entries: bucket chains,
    /// LRU order (by stamp), free lists and counts. Entries whose chunk chain
    /// is not intact, or that duplicate a newer entry's key, are dropped.
    pub fn repair(&mut self) -> RepairReport {
        let entries_used = (self.meta.entries_used as usize).min(self.entries.len());
        let chunks_used = (self.meta.chunks_used as usize).min(self.chunks.len());
        let mut claimed = vec![false; chunks_used];
        let mut live: Vec<Link> = Vec::new();
        let mut dropped = 0;
        for i in 0..entries_used {
            let slot = (i + 1) as Link;
            if self.entries[i].live != 1 {
                continue;
            }
            if self.claim_chain(slot, &mut claimed) {
                live.push(slot);
            } else {
                self.entries[i].live = 0;
                dropped += 1;
            }
        }
        // Same key twice (a replace interrupted half-way): keep the newest.
        let mut newest: HashMap<Vec<u8>, Link> = HashMap::new();
        for &slot in &live {
            let mut key = Vec::new();
            let mut want = self.entry(slot).key_len as usize;
            self.for_each_piece(slot, |piece| {
                let n = piece.len().min(want);
                key.extend_from_slice(&piece[..n]);
                want -= n;
                want > 0
            });
            match newest.get(&key) {
                Some(&other) if self.entry(other).stamp >= self.entry(slot).stamp => {
                    self.entry_mut(slot).live = 0;
                    dropped += 1;
                }
                Some(&other) => {
                    self.entry_mut(other).live = 0;
                    dropped += 1;
                    newest.insert(key, slot);
                }
                None => {
                    newest.insert(key, slot);
                }
            }
        }
        live.retain(|&s| self.entry(s).live == 1);
        claimed.iter_mut().for_each(|c| *c = false);
        for &slot in &live {
            self.claim_chain(slot, &mut claimed);
        }

        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.meta.lru_head = 0;
        self.meta.lru_tail = 0;
        live.sort_by_key(|&s| self.entry(s).stamp);
        let mut bytes = 0;
        let mut tick = 0;
        for &slot in &live {
            let b = self.bucket_of(self.entry(slot).hash);
            let head = self.buckets[b];
            self.entry_mut(slot).next = head;
            self.buckets[b] = slot;
            self.lru_push_tail(slot);
            let e = self.entry(slot);
            bytes += e.key_len as u64 + e.val_len as u64;
            tick = tick.max(e.stamp);
        }
        // Free lists, lowest slot first so that touched pages get reused.
        self.meta.free_entries = 0;
        for i in (0..entries_used).rev() {
            if self.entries[i].live != 1 {
                let head = self.meta.free_entries;
                self.entries[i].next = head;
                self.entries[i].first_chunk = 0;
                self.meta.free_entries = (i + 1) as Link;
            }
        }
        self.meta.free_chunks = 0;
        self.meta.chunks_free = 0;
        for i in (0..chunks_used).rev() {
            if !claimed[i] {
                self.push_chunk((i + 1) as Link);
            }
        }
        self.meta.entries_used = entries_used as u32;
        self.meta.chunks_used = chunks_used as u32;
        self.meta.len = live.len() as u32;
        self.meta.bytes = bytes;
        self.meta.tick = self.meta.tick.max(tick);
        RepairReport {
            kept: live.len(),
            dropped,
        }
    }

    /// Marks the chunks of `slot` in `claimed`; false if the chain is broken
    /// (out of range, too short, or sharing a chunk with another entry).
    fn claim_chain(&self, slot: Link, claimed: &mut [bool]) -> bool {
        let e = self.entry(slot);
        let mut c = e.first_chunk;
        let need = chunks_for(e.key_len as usize + e.val_len as usize);
        if e.key_len == 0 {
            return false;
        }
        // Claim as we walk (a chain that comes back on itself finds its own
        // mark), and give the marks back if the chain turns out broken.
        let first = c;
        let mut taken = 0;
        while taken < need {
            if c == 0 || c as usize > claimed.len() || claimed[c as usize - 1] {
                let mut back = first;
                for _ in 0..taken {
                    claimed[back as usize - 1] = false;
                    back = self.chunk_next[back as usize - 1];
                }
                return false;
            }
            claimed[c as usize - 1] = true;
            taken += 1;
            c = self.chunk_next[c as usize - 1];
        }
        true
    }
}

/// Result of a successful insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub replaced: bool,
    pub evicted: usize,
    /// The latest expiry of the entries evicted (0: none).
    pub latest_evicted: u64,
}

/// What a repair kept and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    pub kept: usize,
    pub dropped: usize,
}

#[cfg(test)]
mod tests;
