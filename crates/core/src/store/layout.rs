//! The store's region, laid out: a header that says what it is and how it
//! is laid out (so that a store handed to a new process image, or found in
//! a store file, is recognised before any use), the counters, the shard
//! heads (each on cache lines of its own), then per shard its metadata,
//! buckets, entries, chunk links and chunks, at the offsets [`Layout`]
//! computes from the [`Limits`].

use std::hash::Hasher;
use std::io;
use std::sync::atomic::AtomicU64;

use crossbeam_utils::CachePadded;
use siphasher::sip::SipHasher13;

use super::shard::{Entry, ShardMeta, CHUNK};
use super::{Counters, Limits, MAX_ITEMS, MAX_RESERVED};
use crate::shm::{Concurrent, RobustMutex, SharedPod};

/// Upper bound on shards.
const MAX_SHARDS: usize = 64;
/// Entries per shard below which a smaller store uses fewer shards.
const MIN_ENTRIES_PER_SHARD: u64 = 128;
/// Keys are session ids; a longer key only costs chunks, so the chunk pool
/// is sized for keys of up to this many bytes.
const POOL_KEY_BYTES: u64 = 64;

/// The part of a shard that is shared without its lock. Each sits on cache
/// lines of its own ([`PaddedHead`]): processes locking different shards
/// must not pull each other's lines back and forth.
#[repr(C)]
pub(super) struct ShardHead {
    pub(super) lock: RobustMutex,
    /// Bytes of keys and values stored, mirrored from the shard's metadata
    /// for lock-free sums.
    pub(super) bytes: AtomicU64,
    /// Until this time (monotonic ms), waits are cut short: the holder
    /// seemed stuck.
    pub(super) stalled_until: AtomicU64,
}

// SAFETY: repr(C); the mutex is initialised before use, atomics are zero-valid.
unsafe impl SharedPod for ShardHead {}
// SAFETY: a robust mutex (used only through pthread calls) and atomics.
unsafe impl Concurrent for ShardHead {}

/// A shard head padded to the platform's cache line pair.
pub(super) type PaddedHead = CachePadded<ShardHead>;
/// Distance between consecutive shard heads in the region.
pub(super) const HEAD_STRIDE: usize = std::mem::size_of::<PaddedHead>();

/// What sits at the start of a store's region: what it is, how it is laid
/// out and how it hashes, so that a store handed from one process image to
/// the next (across uWSGI's reload exec) is recognised before any use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    magic: [u8; 8],
    /// [`FORMAT`]: changes with the layout code.
    pub(super) format: u64,
    /// Sizes of the structs in the region, as this build lays them out.
    shapes: u64,
    capacity: u64,
    keysize: u64,
    blocksize: u64,
    shards: u64,
    total: u64,
    /// SipHash keys of the index: the same keys find the same buckets.
    pub(super) hash_keys: [u64; 2],
    /// SipHash (fixed keys) of everything above: a damaged header is
    /// refused.
    pub(super) check: u64,
}

// SAFETY: repr(C), integers only, all-zero is a (refused) header.
unsafe impl SharedPod for Header {}

pub(super) const MAGIC: [u8; 8] = *b"SSLCSTOR";

/// Whether the first bytes of a file are those of a store's region (the
/// first test [`Header::refusal`] makes): a store file, possibly of other
/// sizes, another format or damaged, but one this store may overwrite.
pub(super) fn is_store_prefix(first: &[u8]) -> bool {
    first.len() >= MAGIC.len() && first[..MAGIC.len()] == MAGIC
}
/// Version of the region's layout; bump when it changes meaning.
pub(super) const FORMAT: u64 = 2;

/// The sizes that decide the layout, packed: a build whose structs differ
/// does not take over the store.
fn shapes() -> u64 {
    let sizes = [
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<ShardMeta>(),
        HEAD_STRIDE,
        std::mem::size_of::<Counters>(),
        CHUNK,
    ];
    sizes.iter().fold(0u64, |acc, s| acc.rotate_left(12) ^ *s as u64)
}

impl Header {
    pub(super) fn new(limits: Limits, layout: &Layout, hash_keys: [u64; 2]) -> Header {
        let mut h = Header {
            magic: MAGIC,
            format: FORMAT,
            shapes: shapes(),
            capacity: limits.capacity,
            keysize: limits.keysize as u64,
            blocksize: limits.blocksize as u64,
            shards: layout.shards as u64,
            total: layout.total as u64,
            hash_keys,
            check: 0,
        };
        h.check = h.checksum();
        h
    }

    pub(super) fn checksum(&self) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(0x7373_6c63_6163_6865, FORMAT);
        for word in [
            u64::from_le_bytes(self.magic),
            self.format,
            self.shapes,
            self.capacity,
            self.keysize,
            self.blocksize,
            self.shards,
            self.total,
            self.hash_keys[0],
            self.hash_keys[1],
        ] {
            hasher.write_u64(word);
        }
        hasher.finish()
    }

    /// Why a header found in a region is not this store's, if it is not.
    pub(super) fn refusal(&self, expected: &Header) -> Option<String> {
        if self.magic != MAGIC {
            return Some("not a session store".into());
        }
        if self.check != self.checksum() {
            return Some("its header is damaged".into());
        }
        if self.format != FORMAT || self.shapes != expected.shapes {
            return Some(format!("made by another version of sslcache (format {})", self.format));
        }
        let sizes = |h: &Header| (h.capacity, h.keysize, h.blocksize);
        if sizes(self) != sizes(expected) {
            let (c, k, b) = sizes(self);
            return Some(format!("made for items={c}, keysize={k}, blocksize={b}"));
        }
        if (self.shards, self.total) != (expected.shards, expected.total) {
            return Some("laid out differently".into());
        }
        None
    }
}

/// Where each array of each shard sits in the region.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) shards: usize,
    pub(super) slots: usize,
    pub(super) buckets: usize,
    pub(super) chunks: usize,
    pub(super) counters_at: usize,
    /// Live entries per shard (`AtomicU32` each), mirrored from the shards'
    /// metadata, packed together so that summing them reads few cache lines.
    pub(super) lens_at: usize,
    pub(super) heads_at: usize,
    pub(super) metas_at: usize,
    pub(super) shard_base: usize,
    pub(super) shard_stride: usize,
    pub(super) entries_off: usize,
    pub(super) next_off: usize,
    pub(super) chunks_off: usize,
    pub(super) total: usize,
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Layout {
    /// The layout of a store of these sizes, within [`MAX_ITEMS`],
    /// [`MAX_RESERVED`] and what 32-bit links can reach.
    pub(super) fn new(limits: Limits) -> io::Result<Layout> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if limits.capacity > MAX_ITEMS {
            return Err(invalid(format!("more than {MAX_ITEMS} items")));
        }
        let layout = Layout::compute(limits)?;
        if layout.total as u64 > MAX_RESERVED {
            return Err(invalid(format!(
                "{} GiB reserved, more than {} GiB",
                (layout.total as u64).div_ceil(1 << 30),
                MAX_RESERVED >> 30
            )));
        }
        // Links are u32 slot and chunk numbers.
        if layout.slots as u64 >= u32::MAX as u64 / 2 {
            return Err(invalid("too many items".into()));
        }
        if layout.chunks as u64 >= u32::MAX as u64 / 2 {
            return Err(invalid("items * blocksize is too large".into()));
        }
        Ok(layout)
    }

    /// Where everything goes, bounds aside (arithmetic checked: `Err` only
    /// for sizes past any address space).
    pub(super) fn compute(limits: Limits) -> io::Result<Layout> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if limits.capacity == 0 || limits.keysize == 0 || limits.blocksize == 0 {
            return Err(invalid("capacity, keysize and blocksize must be positive"));
        }
        if limits.keysize > u16::MAX as u32 {
            return Err(invalid("keysize must be below 65536"));
        }
        let too_large = || invalid("store too large");
        let shards = (limits.capacity / MIN_ENTRIES_PER_SHARD)
            .clamp(1, MAX_SHARDS as u64)
            .next_power_of_two()
            .min(MAX_SHARDS as u64) as usize;
        let per_shard = limits.capacity.div_ceil(shards as u64);
        // With one shard the count is exact; with more, hash skew can fill
        // one shard before the store is full, so each gets some slack. The
        // store-wide capacity is enforced on top (see Store::insert).
        let slots = if shards == 1 {
            per_shard
        } else {
            per_shard + per_shard / 4 + 16
        };
        let per_entry = (limits.keysize as u64).min(POOL_KEY_BYTES) + limits.blocksize as u64;
        let chunks = slots
            .checked_mul(per_entry.div_ceil(CHUNK as u64))
            .ok_or_else(too_large)?;
        let buckets = slots.checked_next_power_of_two().ok_or_else(too_large)?;
        // Each array of a shard below 2^60 bytes: the sums below cannot
        // overflow.
        let arrays = [
            buckets.checked_mul(4),
            slots.checked_mul(std::mem::size_of::<Entry>() as u64),
            chunks.checked_mul(4),
            chunks.checked_mul(CHUNK as u64),
        ];
        if arrays.iter().any(|a| a.is_none_or(|a| a > 1 << 60)) {
            return Err(too_large());
        }
        let (slots, chunks, buckets) = (slots as usize, chunks as usize, buckets as usize);

        let counters_at = align(std::mem::size_of::<Header>(), 64);
        let lens_at = align(counters_at + std::mem::size_of::<Counters>(), 64);
        let heads_at = align(lens_at + shards * 4, std::mem::align_of::<PaddedHead>());
        let metas_at = align(heads_at + shards * HEAD_STRIDE, 64);
        let shard_base = align(metas_at + shards * std::mem::size_of::<ShardMeta>(), 4096);
        let entries_off = align(buckets * 4, 64);
        let next_off = align(entries_off + slots * std::mem::size_of::<Entry>(), 64);
        let chunks_off = align(next_off + chunks * 4, 64);
        let shard_stride = align(chunks_off + chunks * CHUNK, 4096);
        let total = shards
            .checked_mul(shard_stride)
            .and_then(|t| t.checked_add(shard_base))
            .ok_or_else(too_large)?;
        Ok(Layout {
            shards,
            slots,
            buckets,
            chunks,
            counters_at,
            lens_at,
            heads_at,
            metas_at,
            shard_base,
            shard_stride,
            entries_off,
            next_off,
            chunks_off,
            total,
        })
    }
}
