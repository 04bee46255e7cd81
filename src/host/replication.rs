//! The host's side of replication; the engine itself is
//! [`sslcache_core::replication`]. Keys are read in `jail` (uWSGI drops
//! privileges before `post_init`), the engine is made in `post_init` (after
//! uWSGI closed the descriptors it does not know of on a reload), receivers
//! start from the first `master_cycle` (after the first fork), its counters
//! are uWSGI metrics, and each applied datagram refreshes the stats entry.
//!
//! The engine lives in a [`Slot`], made empty in `jail` and filled by
//! [`setup`] in `post_init`: the session cache's events (installed in
//! `jail`) hold one handle of it, the plugin's later hooks another.

use std::path::Path;
use std::sync::{Arc, Mutex, Once, OnceLock};

use sslcache_core::config::Replication;
use sslcache_core::os;
use sslcache_core::replication::keys::{self, Key};
use sslcache_core::replication::{Applied, Observer, Replicator, PLAIN_WARNING};
use sslcache_core::store::Store;

use super::{metrics, stats_entry};

/// Where the engine is, once [`setup`] made it: a handle shared by the
/// session cache's events and the plugin's later hooks.
pub type Slot = Arc<OnceLock<Arc<Replicator>>>;

/// Keys read in `jail`, taken by `setup`.
static PRELOADED_KEYS: Mutex<Option<Vec<Key>>> = Mutex::new(None);

/// Reads the replication keys, if any (master, before privileges drop).
pub fn preload_keys(replication: &Replication) -> Result<(), String> {
    let Some((option, path)) = &replication.key_file else {
        return Ok(());
    };
    let keys = keys::load(option, Path::new(path), os::effective_uid())?;
    *PRELOADED_KEYS.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    Ok(())
}

/// Runs `f` with the keys read in `jail`, if any (cluster tickets derive
/// theirs from them before the engine takes them).
pub fn with_preloaded_keys<R>(f: impl FnOnce(&[Key]) -> R) -> Option<R> {
    PRELOADED_KEYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        .map(f)
}

/// Drops the keys read in `jail` when no engine will take them (cluster
/// tickets on a node that does not replicate): their pages are zeroed.
pub fn drop_preloaded_keys() {
    PRELOADED_KEYS.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Makes the engine (master, before fork) into `slot`, logs where it
/// replicates, and registers its counters as uWSGI metrics.
pub fn setup(
    slot: &'static OnceLock<Arc<Replicator>>,
    replication: &Replication,
    cache: &str,
    store: Arc<Store>,
    timeout: u32,
    verbose: bool,
) -> Result<(), String> {
    let keys = PRELOADED_KEYS.lock().unwrap_or_else(|e| e.into_inner()).take();
    let replicator = Replicator::new(replication, keys, store, timeout, verbose, cache)?;
    log::info!("{}", replicator.summary(replication, cache));
    if replicator.sealed_with().is_none() {
        log::warn!("{PLAIN_WARNING}");
        if !replication.redis.is_empty() || !replication.redis_cluster.is_empty() {
            log::warn!(
                "sessions are written to Redis in clear under their ids: whoever reads Redis reads their master \
                 secrets, whoever writes to it can plant sessions (set cache-udp-key, or udp_key= in cache2, to \
                 seal them)"
            );
        }
    }
    // Registered from the engine that stays: uWSGI's metrics thread reads
    // these counters for the life of the process.
    let replicator = slot.get_or_init(|| Arc::new(replicator));
    metrics::register(cache, metrics::Kind::Counter, &replicator.counters().fields());
    Ok(())
}

/// In a process forked for the application: drops the engine's sealing
/// and opening contexts, if it was made (see `isolation`). False if one
/// was busy.
pub fn forget_secrets(slot: &OnceLock<Arc<Replicator>>) -> bool {
    slot.get().is_none_or(|r| r.forget_secrets())
}

/// Refreshes the stats entry after each datagram.
struct StatsEntry(Arc<Store>);

impl Observer for StatsEntry {
    fn applied(&self, _key: &[u8], _outcome: Applied) {
        stats_entry::publish(&self.0);
    }
}

/// Starts the receiver and sync threads, once (master, after the first
/// fork); `warm_start`: pull the peers' sessions first.
pub fn start_receivers(slot: &OnceLock<Arc<Replicator>>, store: &Arc<Store>, warm_start: bool) {
    static STARTED: Once = Once::new();
    if let Some(replicator) = slot.get() {
        STARTED.call_once(|| replicator.start_receivers(Arc::new(StatsEntry(Arc::clone(store))), warm_start));
    }
}
