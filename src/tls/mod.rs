//! OpenSSL session cache callbacks backed by the shared store.
//!
//! The plugin's [`SessionCache`] (installed once, in the master before
//! fork) and the callbacks OpenSSL calls on every listener context, one job
//! a file: [`contexts`] sets contexts up, [`handshake`] follows a
//! connection (ClientHello, info and free callbacks), [`connection`] is
//! what a connection carries, [`sessions`] the new/get/remove/id
//! callbacks, [`codec`] a session's DER and metadata, [`admit`] where a
//! found session may resume; [`tickets`] cluster tickets.
//!
//! The callbacks run on the handshake path of a router process: they never
//! block beyond the store's bounded lock wait, never panic across the FFI
//! boundary (a panic is caught, logged once, and answered with "no
//! session"), never write to a context other threads may be using, and
//! never keep a reference to OpenSSL's objects beyond a connection.

mod admit;
mod codec;
mod connection;
mod contexts;
pub mod fingerprint;
mod handshake;
mod sessions;
pub mod tickets;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openssl_sys::SSL_CTX;

use sslcache_core::record::Origin;
use sslcache_core::shm::{Concurrent, Shared, SharedPod};
use sslcache_core::store::Store;

use crate::ffi;
use fingerprint::{Fingerprint, Verify};

pub use contexts::{hook_listener, prepare_sni_context};

/// What the TLS callbacks refused or did besides storing and finding, in
/// shared memory (uWSGI metrics `sslcache.<cache>.<name>`).
#[repr(C)]
#[derive(Default)]
pub struct SessionCounters {
    /// Sessions offered on a context other than (and not equivalent to)
    /// the one that made them: not resumed.
    pub refused_context: AtomicU64,
    /// Sessions from plain datagrams offered on a context that verifies
    /// clients, or carrying a client certificate: not resumed.
    pub refused_plain_identity: AtomicU64,
    /// Removals OpenSSL asked for after a failed resumption whose client
    /// never proved it knew the session: ignored.
    pub kept_unproven: AtomicU64,
    /// TLS 1.2 sessions stored as soon as the client's Finished verified,
    /// before the server's Finished went out.
    pub stored_early: AtomicU64,
    /// Sessions that came back with the store at the last reload.
    pub restored: AtomicU64,
    /// Stores of a previous process image that could not be taken over.
    pub restore_discarded: AtomicU64,
    /// Misses for a session made an instant ago that were waited for, those
    /// found in the wait (replication brought them), and the microseconds
    /// spent waiting ([`sslcache_core::fresh`]).
    pub fresh_waits: AtomicU64,
    pub fresh_found: AtomicU64,
    pub fresh_wait_us: AtomicU64,
    /// Cluster tickets ([`tickets`]): issued; handshakes resumed by one;
    /// opened with an older key (older epoch or a later cluster key of the
    /// key file) and renewed; opened with the key of a later epoch (a node
    /// whose clock is ahead).
    pub tickets_issued: AtomicU64,
    pub tickets_resumed: AtomicU64,
    pub tickets_renewed: AtomicU64,
    pub tickets_ahead: AtomicU64,
    /// Tickets refused (each a full handshake): made with a key of no
    /// cluster key here; with a key past its window or a chain past its
    /// lifetime; for a context with another fingerprint; that do not open
    /// (altered, truncated, made up).
    pub tickets_refused_cluster: AtomicU64,
    pub tickets_refused_expired: AtomicU64,
    pub tickets_refused_context: AtomicU64,
    pub tickets_refused_forged: AtomicU64,
}

// SAFETY: repr(C), atomics only, zero is a valid value of each.
unsafe impl SharedPod for SessionCounters {}
// SAFETY: every field is an AtomicU64: the processes and threads that map
// these counters only ever touch them through atomic operations.
unsafe impl Concurrent for SessionCounters {}

impl SessionCounters {
    pub fn fields(&self) -> [(&'static str, &AtomicU64); 17] {
        [
            ("refused_context", &self.refused_context),
            ("refused_plain_identity", &self.refused_plain_identity),
            ("kept_unproven", &self.kept_unproven),
            ("stored_early", &self.stored_early),
            ("restored", &self.restored),
            ("restore_discarded", &self.restore_discarded),
            ("fresh_waits", &self.fresh_waits),
            ("fresh_found", &self.fresh_found),
            ("fresh_wait_us", &self.fresh_wait_us),
            ("tickets_issued", &self.tickets_issued),
            ("tickets_resumed", &self.tickets_resumed),
            ("tickets_renewed", &self.tickets_renewed),
            ("tickets_ahead", &self.tickets_ahead),
            ("tickets_refused_cluster", &self.tickets_refused_cluster),
            ("tickets_refused_expired", &self.tickets_refused_expired),
            ("tickets_refused_context", &self.tickets_refused_context),
            ("tickets_refused_forged", &self.tickets_refused_forged),
        ]
    }
}

/// Told about every change the callbacks make to the store.
pub trait SessionEvents: Send + Sync {
    /// A session created here was stored, valid until `expires`; `origin`
    /// says whether it carries a client identity.
    fn stored(&self, _id: &[u8], _der: &[u8], _expires: u64, _origin: Origin) {}
    /// OpenSSL asked to forget a session.
    fn removed(&self, _id: &[u8]) {}
    /// The store changed (for stats).
    fn changed(&self, _store: &Store) {}
}

/// Where uWSGI's SNI callback will put a connection that asks for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniTarget {
    /// It stays on its listener's context.
    Listener,
    /// It moves to this context; `copies_verify`: uWSGI also copies the
    /// context's verification policy onto the connection (exact `sni`
    /// names do, `sni-regexp` and `sni-dir` do not).
    Context { ctx: usize, copies_verify: bool },
    /// Cannot be told before uWSGI's callback runs (an `sni-dir` host whose
    /// context this process has not made yet): no resumption.
    Unknown,
}

/// The host's SNI table, as uWSGI's SNI callback reads it.
pub trait SniResolver: Send + Sync {
    fn resolve(&self, name: &[u8]) -> SniTarget;
    /// Whether the calling process runs handshakes on one thread only, so
    /// that a context it made at run time may be set up when first used.
    fn single_threaded(&self) -> bool;
}

/// A listening context and the session context string its sessions carry
/// (the configured one, or uWSGI's default "http-" + address, whole).
pub struct Listener {
    /// The `SSL_CTX`, as an address (only compared, never dereferenced).
    pub ctx: usize,
    pub context: Vec<u8>,
    /// The policy the context gives its connections, and the fingerprint
    /// of sessions made under it there (its session id context): the
    /// common case of [`landing`](admit::landing), without hashing.
    pub verify: Verify,
    pub fingerprint: Fingerprint,
}

/// The state the callbacks use, set once in the master before fork.
pub struct SessionCache {
    /// Shared with the replication engine.
    pub store: Arc<Store>,
    /// Session lifetime, seconds.
    pub timeout: u32,
    pub events: Box<dyn SessionEvents>,
    /// Log every callback (uWSGI's `ssl-verbose`).
    pub verbose: bool,
    /// Acknowledge the client's Finished at once on resumed TLS 1.2
    /// handshakes (`ssl-sessions-quickack`).
    pub quickack: bool,
    /// Longest wait for a session made an instant ago, microseconds
    /// (`ssl-sessions-fresh-wait`); 0: never wait.
    pub fresh_wait_us: u64,
    /// Every hooked listener; fixed once installed.
    pub listeners: Vec<Listener>,
    pub sni: Box<dyn SniResolver>,
    pub counters: Shared<SessionCounters>,
    /// Every context set up in the master (listeners, SNI hosts; never
    /// freed) and its [`fingerprint::context_digest`]; others are digested
    /// when needed.
    pub digests: Vec<(usize, [u8; 32])>,
    /// Contexts made by uWSGI at run time and set up since, in a
    /// single-threaded process.
    pub runtime_prepared: Mutex<HashSet<usize>>,
    /// Cluster tickets (`ssl-sessions-tickets = cluster`): the keys.
    pub tickets: Option<sslcache_core::tickets::TicketKeys>,
}

static CACHE: OnceLock<SessionCache> = OnceLock::new();

/// Installs the cache the callbacks use. Only the first call counts.
pub fn install(cache: SessionCache) -> &'static SessionCache {
    CACHE.get_or_init(|| cache)
}

/// The installed cache, if any.
pub fn installed() -> Option<&'static SessionCache> {
    CACHE.get()
}

fn hex(id: &[u8]) -> String {
    id.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SessionCache {
    /// The digest of `ctx`: precomputed for the master's contexts.
    ///
    /// # Safety
    /// `ctx` must be a valid `SSL_CTX`.
    unsafe fn digest(&self, ctx: *const SSL_CTX) -> [u8; 32] {
        match self.digests.iter().find(|(c, _)| *c == ctx as usize) {
            Some((_, d)) => *d,
            // SAFETY: `ctx` is a live SSL_CTX (this function's # Safety,
            // which every caller meets with a context alive for the whole
            // callback in progress: its listener's, the connection's current
            // one, or one uWSGI's SNI table holds); context_digest only reads
            // its certificate, CA list and trust store, which uWSGI never
            // changes after making the context.
            None => unsafe { fingerprint::context_digest(ctx) },
        }
    }

    /// The fingerprint of sessions made (or resumed) on `ctx` under
    /// `listener`, with `verify`.
    ///
    /// # Safety
    /// `ctx` must be a valid `SSL_CTX`.
    unsafe fn fingerprint_of(&self, listener: &Listener, ctx: *const SSL_CTX, verify: Verify) -> Fingerprint {
        // SAFETY: `ctx` is a live SSL_CTX (this function's # Safety, met by
        // every caller with a context alive for its callback), as digest
        // requires.
        fingerprint::fingerprint(&listener.context, &unsafe { self.digest(ctx) }, verify)
    }
}
