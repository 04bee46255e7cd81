//! The exported `sslcache_plugin` and its hooks.
//!
//! Hook order in uWSGI (generic plugin): `on_load` when the .so is loaded →
//! options parsed and applied → `jail` (master, single-threaded, before the
//! core creates caches and before any fork) → `init` (master, after the core
//! created its caches and locks) → `post_init` (master, after the core bound
//! its sockets and, on a reload, closed the ones it did not know) → router
//! processes fork → `master_cycle` in the master about once a second.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sslcache_core::boundary::Boundary;
use sslcache_core::clock::unix_secs;
use sslcache_core::config::options::{Arg, Owner, OPTIONS};
use sslcache_core::config::{self, Settings};
use sslcache_core::shm::Shared;
use sslcache_core::store::{Limits, Store};
use sslcache_core::tickets::{Schedule, TicketKeys};

use super::handover::{self, Origin};
use super::server::{ContextKind, Server};
use super::sni::UwsgiSni;
use super::sys::{self, uwsgi_option, uwsgi_plugin};
use super::{abi, isolation, logger, metrics, repeater, replication, stats_entry, symbols};
use crate::tls::fingerprint::{self, Verify};
use crate::tls::{self, SessionCache, SessionCounters, SessionEvents};

/// How often the master drops expired sessions (as uWSGI's cache sweeper).
const SWEEP_EVERY_SECS: u64 = 3;

/// How many `uwsgi_option` entries the plugin's options take: one per name.
const OPTION_ENTRIES: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < OPTIONS.len() {
        if let Owner::Plugin(_) = OPTIONS[i].owner {
            n += OPTIONS[i].names.len();
        }
        i += 1;
    }
    n
};

/// uWSGI's view of the option table ([`OPTIONS`]), built at compile time:
/// every name of every plugin-owned option, then an all-zero end marker.
/// uWSGI reads it through `sslcache_plugin.options`.
static mut UWSGI_OPTIONS: [uwsgi_option; OPTION_ENTRIES + 1] = {
    // SAFETY: every field of uwsgi_option is a pointer, an optional function
    // pointer or an integer, for which all-zero is valid; an all-zero entry
    // (null name) is the end marker uWSGI looks for.
    let mut table: [uwsgi_option; OPTION_ENTRIES + 1] = unsafe { std::mem::zeroed() };
    let (mut i, mut k) = (0, 0);
    while i < OPTIONS.len() {
        if let Owner::Plugin(arg) = OPTIONS[i].owner {
            let mut j = 0;
            while j < OPTIONS[i].names.len() {
                table[k] = uwsgi_option {
                    name: OPTIONS[i].names[j].as_ptr() as *mut c_char,
                    type_: match arg {
                        Arg::Required => sys::required_argument,
                        Arg::Optional => sys::optional_argument,
                    } as c_int,
                    shortcut: 0,
                    help: OPTIONS[i].help.as_ptr() as *mut c_char,
                    func: Some(option_seen),
                    data: std::ptr::null_mut(),
                    flags: sys::UWSGI_OPT_MASTER as u64,
                };
                j += 1;
                k += 1;
            }
        }
        i += 1;
    }
    table
};

/// The symbol uWSGI looks up in `sslcache_plugin.so`.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut sslcache_plugin: uwsgi_plugin = {
    // SAFETY: every field of uwsgi_plugin is a pointer, an optional function
    // pointer or an integer, for which zero means "not provided".
    let mut p: uwsgi_plugin = unsafe { std::mem::zeroed() };
    p.name = c"sslcache".as_ptr();
    p.on_load = Some(on_load);
    p.options = &raw mut UWSGI_OPTIONS as *mut uwsgi_option;
    p.jail = Some(jail);
    p.init = Some(init);
    p.post_init = Some(post_init);
    p.master_cycle = Some(master_cycle);
    p.master_cleanup = Some(master_cleanup);
    p
};

/// Values are read from `uwsgi.exported_opts` in `jail`, where every option
/// is known whatever its position in the configuration; uWSGI only needs a
/// handler to call.
unsafe extern "C" fn option_seen(_key: *mut c_char, _value: *mut c_char, _data: *mut c_void) {}

/// What `jail` set up, for the later hooks of the master.
struct Active {
    settings: Settings,
    hashsize: u32,
    /// No sessions were handed over by a reload: ask the peers for theirs.
    warm_start: bool,
    /// The replication engine, made by `post_init`: the handle the session
    /// cache's [`Events`] hold too.
    replicator: replication::Slot,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();
static NEXT_SWEEP: AtomicU64 = AtomicU64::new(0);
static NEXT_STORE_SYNC: AtomicU64 = AtomicU64::new(0);

/// Runs a hook body; an error ends the process with one line, as uWSGI
/// does for configuration errors, and so does a panic (a bug: logged by
/// the boundary).
fn hook(boundary: &Boundary, body: impl FnOnce() -> Result<(), String>) {
    match boundary.guard(Err(None), || body().map_err(Some)) {
        Ok(()) => {}
        Err(Some(msg)) => logger::fatal(&msg),
        // The boundary logged the panic.
        Err(None) => std::process::exit(1),
    }
}

static ON_LOAD: Boundary = Boundary::new("the on_load hook");
static JAIL: Boundary = Boundary::new("the jail hook");
static INIT: Boundary = Boundary::new("the init hook");
static POST_INIT: Boundary = Boundary::new("the post_init hook");
static MASTER_CYCLE: Boundary = Boundary::new("the master_cycle hook");
static MASTER_CLEANUP: Boundary = Boundary::new("the master_cleanup hook");

unsafe extern "C" fn on_load() {
    hook(&ON_LOAD, || {
        logger::install();
        let host = symbols::get().ok_or("not loaded by uWSGI: the uwsgi symbols are missing")?;
        abi::check(&host)
    });
}

unsafe extern "C" fn jail(_start: Option<unsafe extern "C" fn(*mut c_void) -> c_int>, _argv: *mut *mut c_char) {
    hook(&JAIL, setup);
}

/// Forwards store changes to the peers and to the stats entry.
struct Events {
    /// The replication engine, once `post_init` made it (the cache is
    /// installed in `jail`, before): empty while it is not, and for good
    /// on a node that does not replicate.
    replicator: replication::Slot,
}

impl SessionEvents for Events {
    fn stored(&self, id: &[u8], der: &[u8], expires: u64, origin: sslcache_core::record::Origin) {
        if let Some(r) = self.replicator.get() {
            r.stored(id, der, expires, origin);
        }
    }

    fn removed(&self, id: &[u8]) {
        if let Some(r) = self.replicator.get() {
            r.removed(id);
        }
    }

    fn changed(&self, store: &Store) {
        stats_entry::publish(store);
    }
}

fn setup() -> Result<(), String> {
    if ACTIVE.get().is_some() {
        return Ok(());
    }
    let host = symbols::get().ok_or("not loaded by uWSGI")?;
    // SAFETY: the ABI was checked in on_load; jail runs in the master's
    // only thread before any fork.
    let mut server = unsafe { Server::new(host.server) };
    let Some(settings) = config::resolve(&server.raw_options()).map_err(|e| e.to_string())? else {
        log::info!("ssl-sessions-use-cache is not set: TLS sessions are not cached by sslcache");
        return Ok(());
    };
    for warning in &settings.warnings {
        log::warn!("{warning}");
    }
    let cache = &settings.cache;
    server.take_cache(cache)?;
    let limits = Limits {
        capacity: cache.items,
        keysize: cache.keysize,
        blocksize: cache.blocksize,
    };
    let persist = cache
        .store
        .as_ref()
        .map(|(option, path)| (option.as_str(), Path::new(path)));
    let (store, origin) = handover::store(limits, persist)
        .map_err(|e| format!("cannot create the session store for cache \"{}\": {e}", cache.name))?;
    // Router processes share it; the application's never see it.
    store.forget_in_app_children();
    let store = Arc::new(store);

    let cluster_tickets = settings.tickets.is_some();

    let contexts = server.listener_contexts();
    let mut counts = [0usize; 3];
    let mut listeners = Vec::new();
    let mut digests = Vec::new();
    for c in &contexts {
        let (configured, prefix, slot) = match c.kind {
            ContextKind::Https => (&settings.https_session_context, "http-", 0),
            ContextKind::SslRouter => (&settings.sslrouter_session_context, "sslrouter-", 1),
            ContextKind::Socket => (&settings.https_session_context, "", 2),
        };
        // uWSGI's default ("http-" + address) whole: the fingerprint
        // derives from it, so long addresses never collide.
        let context = match configured {
            Some(sid) => sid.as_bytes().to_vec(),
            None => format!("{prefix}{}", c.name).into_bytes(),
        };
        // SAFETY: the contexts were made by the option handlers and are not
        // in use yet: the router processes have not forked.
        let (digest, verify) = unsafe { (fingerprint::context_digest(c.ctx), Verify::of_ctx(c.ctx)) };
        let sid = fingerprint::fingerprint(&context, &digest, verify);
        // SAFETY: `c.ctx` is the same valid SSL_CTX (listener_contexts skips
        // null ones), made by uWSGI's option handlers; no other thread uses
        // it: `setup` runs in `jail`, the master's only thread, before the
        // router processes fork.
        unsafe { tls::hook_listener(c.ctx, &sid, settings.timeout, settings.tls13_tickets, cluster_tickets) }
            .map_err(|e| format!("cannot set up the TLS context of {} for session caching: {e}", c.name))?;
        digests.push((c.ctx as usize, digest));
        listeners.push(tls::Listener {
            ctx: c.ctx as usize,
            context,
            verify,
            fingerprint: sid,
        });
        counts[slot] += 1;
    }
    let sni = server.sni_contexts();
    for ctx in &sni {
        // SAFETY: each `ctx` is a non-null SSL_CTX of uWSGI's `sni` and
        // `sni-regexp` entries (sni_contexts skips null ones), made when the
        // options were read, its certificate and trust store set then and
        // never again; no other thread uses it before the fork.
        unsafe {
            tls::prepare_sni_context(*ctx, cluster_tickets);
            digests.push((*ctx as usize, fingerprint::context_digest(*ctx)));
        }
    }
    let hashsize = store.bucket_count().min(u32::MAX as usize) as u32;
    log::info!(
        "TLS session cache \"{}\": {} sessions (keys up to {} bytes, sessions up to {} bytes), \
         {} MB reserved, resident as used, {} shards, timeout {}s; TLS contexts hooked: {} \
         (https {}, sslrouter {}, https/ssl-socket {}; sni {})",
        cache.name,
        cache.items,
        cache.keysize,
        cache.blocksize,
        store.reserved_bytes().div_ceil(1 << 20),
        store.shard_count(),
        settings.timeout,
        contexts.len(),
        counts[0],
        counts[1],
        counts[2],
        sni.len()
    );
    // Key files are readable only now (uWSGI drops privileges later): the
    // engine takes the keys in post_init, cluster tickets derive theirs here.
    if settings.replication.is_enabled() || settings.tickets.is_some() {
        replication::preload_keys(&settings.replication)?;
    }
    let ticket_keys = match settings.tickets {
        None => None,
        Some(t) => {
            let schedule = Schedule {
                interval: t.rotation,
                lifetime: t.lifetime,
                skew: settings.replication.max_skew,
            };
            let keys = replication::with_preloaded_keys(|keys| TicketKeys::new(keys, schedule))
                .ok_or("ssl-sessions-tickets = cluster: the cluster key was not read")?
                .map_err(|e| format!("ssl-sessions-tickets = cluster: {e}"))?;
            Some(keys)
        }
    };
    if !settings.replication.is_enabled() {
        replication::drop_preloaded_keys();
    }
    if let Some(keys) = &ticket_keys {
        let s = keys.schedule();
        log::info!(
            "TLS session tickets: cluster mode: ticket keys derived from the cluster key ({} key{}, the first seals), \
             rotated every {}s; tickets live {}s; keys of clocks up to {}s ahead accepted; a key decrypts \
             for {}s at most; TLS 1.2 ticket clients and TLS 1.3 resume statelessly, session-id clients through \
             the store",
            keys.key_count(),
            if keys.key_count() == 1 { "" } else { "s" },
            s.interval,
            s.lifetime,
            s.skew,
            s.key_span()
        );
    }
    // Counters are uWSGI metrics.
    server.enable_metrics();
    if contexts.is_empty() {
        log::warn!("no TLS context (https, https2, sslrouter, https-socket, ssl-socket) is configured: no session will be cached");
    }
    let counters: Shared<SessionCounters> =
        Shared::create().map_err(|e| format!("cannot map the session counters: {e}"))?;
    let warm_start = !matches!(origin, Origin::TakenOver(_));
    match origin {
        Origin::New => {}
        Origin::TakenOver(sessions) => {
            counters.get().restored.store(sessions, Ordering::Relaxed);
            log::info!(
                "TLS session cache \"{}\": {sessions} sessions came back from before the reload",
                cache.name
            );
        }
        Origin::FromFile(sessions) => {
            counters.get().restored.store(sessions, Ordering::Relaxed);
            log::info!(
                "TLS session cache \"{}\": {sessions} sessions came back from its store file",
                cache.name
            );
        }
        Origin::Discarded(why) => {
            counters.get().restore_discarded.store(1, Ordering::Relaxed);
            log::warn!("TLS session cache \"{}\": discarded {why}; starting empty", cache.name);
        }
    }
    let replicator = replication::Slot::default();
    tls::install(SessionCache {
        store,
        timeout: settings.timeout,
        events: Box::new(Events {
            replicator: Arc::clone(&replicator),
        }),
        verbose: settings.verbose,
        quickack: settings.quickack,
        fresh_wait_us: settings.fresh_wait_ms * 1000,
        listeners,
        // SAFETY: `host.server` is this process's `uwsgi` symbol
        // (symbols::get), whose layout abi::check verified in on_load, as
        // UwsgiSni::new requires.
        sni: Box::new(unsafe { UwsgiSni::new(host.server) }),
        counters,
        digests,
        runtime_prepared: Mutex::new(HashSet::new()),
        tickets: ticket_keys,
    });
    // Before any fork: the application's processes keep none of the above.
    isolation::install(counts[2] > 0);
    let _ = ACTIVE.set(Active {
        settings,
        hashsize,
        warm_start,
        replicator,
    });
    Ok(())
}

/// In a process forked for the application (`isolation`'s fork handler,
/// a C entry point with no argument of ours): drops the replication
/// engine's secrets, if `jail` set a cache up and `post_init` made the
/// engine. False if a context was busy.
pub(super) fn forget_replication_secrets() -> bool {
    ACTIVE
        .get()
        .is_none_or(|active| replication::forget_secrets(&active.replicator))
}

unsafe extern "C" fn init() -> c_int {
    hook(&INIT, || {
        let host = symbols::get().ok_or("not loaded by uWSGI")?;
        // SAFETY: init runs in the master before fork, after the core made
        // its caches and locks.
        let mut server = unsafe { Server::new(host.server) };
        // Before the gateways are forked; in an instance with or without a
        // session cache.
        repeater::init(&mut server)?;
        let (Some(active), Some(cache)) = (ACTIVE.get(), tls::installed()) else {
            return Ok(());
        };
        stats_entry::link(&mut server, &active.settings.cache, &cache.store, active.hashsize)
    });
    0
}

/// Replication sockets are made here, in the master before fork but after
/// uWSGI closed the file descriptors it does not know of (on a reload, it
/// closes every socket inherited through exec but its own).
unsafe extern "C" fn post_init() {
    hook(&POST_INIT, || {
        let (Some(active), Some(cache)) = (ACTIVE.get(), tls::installed()) else {
            return Ok(());
        };
        let name = &active.settings.cache.name;
        metrics::register_store(name, &cache.store, active.settings.cache.items);
        metrics::register(name, metrics::Kind::Counter, &cache.counters.get().fields());
        let replication = &active.settings.replication;
        if !replication.is_enabled() {
            return Ok(());
        }
        replication::setup(
            &active.replicator,
            replication,
            name,
            Arc::clone(&cache.store),
            cache.timeout,
            cache.verbose,
        )
    });
}

unsafe extern "C" fn master_cycle() {
    MASTER_CYCLE.guard((), || {
        let (Some(active), Some(cache)) = (ACTIVE.get(), tls::installed()) else {
            return;
        };
        // After the first fork: threads never live across the initial forks.
        replication::start_receivers(&active.replicator, &cache.store, active.warm_start);
        metrics::update_gauges(&cache.store);
        let now = unix_secs();
        if now < NEXT_SWEEP.load(Ordering::Relaxed) {
            return;
        }
        NEXT_SWEEP.store(now + SWEEP_EVERY_SECS, Ordering::Relaxed);
        cache.store.sweep(now);
        stats_entry::publish(&cache.store);
        if let Some(every) = active.settings.cache.store_sync {
            if now >= NEXT_STORE_SYNC.load(Ordering::Relaxed) {
                NEXT_STORE_SYNC.store(now + every, Ordering::Relaxed);
                handover::write_back(false);
            }
        }
    });
}

/// Runs in the master just before a reload's exec (and at exit).
unsafe extern "C" fn master_cleanup() {
    MASTER_CLEANUP.guard((), || {
        let Some(host) = symbols::get() else { return };
        // SAFETY: `host.server` is the checked `uwsgi` symbol; this runs on
        // the master's main thread and only reads the `status` flags, which
        // that thread sets (the children have their own copies since fork,
        // and the master's other threads do not write them).
        let reloading = unsafe { Server::new(host.server) }.is_reloading();
        handover::before_exec(reloading);
    });
}

/// ELF section uWSGI reads before loading a plugin: load the HTTP router
/// plugin first (Debian ships it separately), as the seed configs use
/// `https =` without `plugins = http`.
#[used]
#[link_section = "uwsgi"]
static UWSGI_SECTION: [u8; 14] = *b"requires=http\n";
