//! The session store's entry in `uwsgi.caches`, so that the stats server
//! lists it under `caches` with the usual fields.
//!
//! Anything linked into `uwsgi.caches` is also found by
//! `uwsgi_cache_by_name()` and may be used by core code: the Python/Perl
//! cache API, internal routing, the cache plugin, the sweeper thread. The
//! entry is therefore a real, valid, *empty* uWSGI cache whose hash table
//! never has a slot: lookups miss, sets find no free block and fail (without
//! logging), deletes and clears find nothing. Its arrays are private
//! zero-filled mappings reserved at full size but never resident unless
//! written (only `cache clear` writes, zeros). `no_expire` keeps the core's
//! sweeper away; no `udp_servers`/`nodes`/`store` keep the core's UDP and
//! persistence code away. The counters shown (items, hits, miss, full,
//! last_modified_at) are copied from the store by whichever process changed
//! it, with atomic max so they never go backwards.

use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};

use sslcache_core::config::{CacheDef, CacheOrigin};
use sslcache_core::shm::Region;
use sslcache_core::store::Store;

use super::server::Server;
use super::sys::{self, link_at};

/// Always an empty slot: the entry's hash table is all zeros anyway.
unsafe extern "C" fn no_slot(_key: *mut c_char, _len: u64) -> u32 {
    0
}

/// Name shown in the stats' `hash` field: the store hashes keys with keyed
/// SipHash (std's `RandomState`).
static mut HASH_ALGO: sys::uwsgi_hash_algo = sys::uwsgi_hash_algo {
    name: c"siphash".as_ptr() as *mut c_char,
    func: Some(no_slot),
    next: std::ptr::null_mut(),
};

/// The linked `struct uwsgi_cache`, in shared memory; null before `link`.
static ENTRY: AtomicPtr<sys::uwsgi_cache> = AtomicPtr::new(std::ptr::null_mut());

/// The memory behind the entry; kept for the life of the process.
struct Mappings {
    _shared: Region,
    _hashtable: Region,
    _items: Region,
}

/// Creates the entry and links it into `uwsgi.caches` at the position the
/// core would have given that cache (default first, then cache2 order).
pub fn link(server: &mut Server, def: &CacheDef, store: &Store, hashsize: u32) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("cannot map the stats entry's {what}: {e}");
    let shared = Region::shared(std::mem::size_of::<sys::uwsgi_cache>()).map_err(|e| fail("header", e))?;
    let hashtable = Region::private(hashsize as usize * 8).map_err(|e| fail("hash table", e))?;
    let item_size = std::mem::size_of::<sys::uwsgi_cache_item>() as u64 + def.keysize as u64;
    let items_len = item_size
        .checked_mul(def.items)
        .ok_or("cache too large for a stats entry")? as usize;
    let items = Region::private(items_len.max(1)).map_err(|e| fail("items", e))?;

    let lock = server.new_rwlock(c"sslcache");
    if lock.is_null() {
        return Err("uWSGI locking is not set up".into());
    }
    let name = CString::new(def.name.clone()).map_err(|_| "cache name contains NUL")?;
    let uc = shared
        .ptr_at::<u8>(0, std::mem::size_of::<sys::uwsgi_cache>())
        .cast::<sys::uwsgi_cache>();
    // SAFETY: `uc` points to a fresh zeroed mapping big enough for the
    // struct; every pointer stored in it stays valid for the process's life
    // (mappings are leaked below, the name is leaked, HASH_ALGO is static).
    unsafe {
        let c = &mut *uc;
        c.name = name.into_raw();
        c.name_len = def.name.len() as u16;
        c.keysize = def.keysize as u64;
        c.blocks = def.items;
        c.blocksize = def.blocksize as u64;
        c.max_item_size = def.blocksize as u64;
        c.hash = std::ptr::addr_of_mut!(HASH_ALGO);
        c.hashtable = hashtable.ptr_at::<u8>(0, hashsize as usize * 8).cast();
        c.hashsize = hashsize;
        c.max_items = def.items;
        c.items = items.ptr_at::<u8>(0, 1).cast();
        c.data = items.ptr_at::<u8>(0, 1).cast();
        c.no_expire = 1;
        c.ignore_full = 1;
        c.udp_node_socket = -1;
        c.lock = lock;
    }
    std::mem::forget(Mappings {
        _shared: shared,
        _hashtable: hashtable,
        _items: items,
    });

    let position = match def.origin {
        CacheOrigin::Default => 0,
        CacheOrigin::Cache2 { index } => index + usize::from(server.has_core_default_cache()),
    };
    // SAFETY: uwsgi.caches is the core's list, built before plugins' init
    // and not used by anyone else in the master before fork; we insert one
    // node, as uwsgi_cache_create appends.
    unsafe {
        let link = link_at(server.caches_head(), position);
        (*uc).next = *link;
        *link = uc;
    }
    ENTRY.store(uc, Ordering::Release);
    publish(store);
    Ok(())
}

/// Copies the store's figures into the stats entry. Called by any process
/// after it changed the store; safe to call before `link` (does nothing).
pub fn publish(store: &Store) {
    let uc = ENTRY.load(Ordering::Acquire);
    if uc.is_null() {
        return;
    }
    let counters = store.counters();
    // SAFETY: `uc` is the entry made by `link` in a MAP_SHARED mapping that
    // every router process inherited; its u64/i64 fields are naturally
    // aligned, and all concurrent writers use atomics.
    unsafe {
        let max = |field: *mut u64, value: u64| {
            AtomicU64::from_ptr(field).fetch_max(value, Ordering::Relaxed);
        };
        max(&raw mut (*uc).hits, counters.hits.load(Ordering::Relaxed));
        max(&raw mut (*uc).miss, counters.misses.load(Ordering::Relaxed));
        max(&raw mut (*uc).full, counters.evicted.load(Ordering::Relaxed));
        AtomicU64::from_ptr(&raw mut (*uc).n_items).store(store.len(), Ordering::Relaxed);
        AtomicI64::from_ptr(&raw mut (*uc).last_modified_at)
            .fetch_max(counters.last_modified.load(Ordering::Relaxed) as i64, Ordering::Relaxed);
    }
}
