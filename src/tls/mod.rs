//! OpenSSL session cache callbacks backed by the shared store.
//!
//! Every listener context gets server-side caching without OpenSSL's
//! internal cache, no session tickets (TLS 1.2 resumes by session id, TLS
//! 1.3 gets stateful tickets whose identity is the session id), the
//! configured timeout, and callbacks: `new` (store the DER session), `get`
//! (decode it back), `remove`, a ClientHello callback that tags the
//! connection, and a per-connection info callback. With cluster tickets
//! ([`tickets`]) tickets are on instead, with keys derived from the
//! cluster key: TLS 1.2 clients that send tickets and TLS 1.3 resume
//! statelessly, session-id clients through the store as before.
//!
//! **A session resumes only where it was made.** Each session carries, as
//! its session id context, the [`fingerprint`] of the context that made it
//! (operator context string, certificate, client-verification policy). In
//! both TLS 1.2 and 1.3 OpenSSL looks the session up *before* the SNI
//! callback switches the connection to the SNI host's context, so the get
//! callback works out where uWSGI's SNI callback will send the connection
//! (from the server name in the ClientHello, through the host's
//! [`SniResolver`]) and resumes only if that context's fingerprint is the
//! session's. It then tells OpenSSL (the connection's session id context)
//! and uWSGI (the session's host name, which uWSGI's SNI callback reads on a
//! TLS 1.2 resumption) the same thing, so the connection lands where it was
//! checked. A session learnt from a plain datagram ([`record::Origin`]) never
//! resumes a context that verifies clients and never carries a client
//! certificate.
//!
//! **Removals.** OpenSSL removes a session on any fatal alert, including
//! alerts provoked by someone who merely saw its id (a ClientHello whose
//! cipher list excludes the session's cipher, a wrong Finished). RFC 5246
//! §7.2.2 asks to invalidate "the failed session"; a handshake whose client
//! never proved knowledge of the master secret is not that session's
//! failure, so such removals are ignored (counted); removals from
//! connections that completed their handshake (the peer proved it) evict
//! here and on the peers.
//!
//! Connections freed without close_notify: OpenSSL removes their session
//! (`ssl_clear_bad_session`, uWSGI never calls SSL_shutdown), and OpenSSL 3
//! treats a peer's TCP close without close_notify as a fatal error that
//! removes it too. TLS 1.1 and later no longer require that (RFC 4346,
//! 7.2.1); nginx marks such connections shut down for the same reason. The
//! tag's ex_data free hook, which OpenSSL runs before
//! `ssl_clear_bad_session`, marks the connection shut down, and the remove
//! callback ignores the unexpected-EOF reason.
//!
//! **Timing.** In a TLS 1.2 full handshake OpenSSL calls the new-session
//! callback only after the server's Finished is written: a client that
//! reconnects at once could reach another router process first. The info
//! callback stores the session as soon as the client's Finished has been
//! verified, before the server's Finished goes out.
//!
//! The callbacks run on the handshake path of a router process: they never
//! block beyond the store's bounded lock wait, never panic across the FFI
//! boundary (a panic is caught, logged once, and answered with "no
//! session"), never write to a context other threads may be using, and
//! never keep a reference to OpenSSL's objects beyond a connection.

pub mod fingerprint;
pub mod tickets;

use std::collections::HashSet;
use std::ffi::{c_int, c_long, c_uchar, c_uint, c_void, CString};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use sslcache_core::boundary::Boundary;
use sslcache_core::client_hello::{self, ServerName};
use sslcache_core::clock::{unix_ms, unix_secs};
use sslcache_core::fresh;
use sslcache_core::record::{self, Origin};
use sslcache_core::shm::{Concurrent, Shared, SharedPod};
use sslcache_core::store::{Insert, Lookup, Store};

use crate::ffi;
use fingerprint::{Fingerprint, Verify};

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
// SAFETY: atomics only.
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
    /// common case of [`landing`], without hashing.
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

/// The panic boundary of each callback: a panic is logged once and
/// answered with "no session" / "nothing done".
static CLIENT_HELLO: Boundary = Boundary::new("the client hello callback");
static SSL_FREE: Boundary = Boundary::new("the connection free hook");
static INFO: Boundary = Boundary::new("the info callback");
static NEW_SESSION: Boundary = Boundary::new("the new session callback");
static GET_SESSION: Boundary = Boundary::new("the get session callback");
static REMOVE_SESSION: Boundary = Boundary::new("the remove session callback");
static GENERATE_ID: Boundary = Boundary::new("the session id callback");

/// This router process's waiting for sessions made an instant ago.
static WAIT_BUDGET: Mutex<fresh::WaitBudget> = Mutex::new(fresh::WaitBudget::new());

impl SessionCache {
    /// The digest of `ctx`: precomputed for the master's contexts.
    ///
    /// # Safety
    /// `ctx` must be a valid `SSL_CTX`.
    unsafe fn digest(&self, ctx: *const SSL_CTX) -> [u8; 32] {
        match self.digests.iter().find(|(c, _)| *c == ctx as usize) {
            Some((_, d)) => *d,
            // SAFETY: per the contract; uWSGI never changes a context's
            // certificates or CA lists after making it.
            None => unsafe { fingerprint::context_digest(ctx) },
        }
    }

    /// The fingerprint of sessions made (or resumed) on `ctx` under
    /// `listener`, with `verify`.
    ///
    /// # Safety
    /// `ctx` must be a valid `SSL_CTX`.
    unsafe fn fingerprint_of(&self, listener: &Listener, ctx: *const SSL_CTX, verify: Verify) -> Fingerprint {
        // SAFETY: per the contract.
        fingerprint::fingerprint(&listener.context, &unsafe { self.digest(ctx) }, verify)
    }
}

/// What a connection carries from its ClientHello to its end, behind an
/// SSL ex_data slot (freed by [`on_ssl_free`]).
struct Conn {
    listener: &'static Listener,
    /// The server name its (last) ClientHello asked for.
    asked: ServerName,
    /// Its TLS 1.2 session was stored at the client's Finished.
    stored_early: bool,
    /// The session found by the first lookup, for the second ClientHello
    /// of a HelloRetryRequest, which looks the same id up again.
    last_lookup: Option<(Vec<u8>, Vec<u8>)>,
    /// Cluster tickets: what the callbacks of one ticket tell each other.
    ticket: tickets::TicketState,
}

/// SSL ex_data index of the connection's [`Conn`]; SSL_SESSION ex_data
/// index of the "resumed, not yet proven" mark; -1 until created.
static CONN_INDEX: AtomicI32 = AtomicI32::new(-1);
static UNPROVEN_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Creates the ex_data indexes (once per process image).
fn ensure_indexes() -> Result<(), String> {
    if CONN_INDEX.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    // SAFETY: registers a free hook for a new SSL ex_data index.
    let conn = unsafe { openssl_sys::SSL_get_ex_new_index(0, std::ptr::null_mut(), None, None, Some(on_ssl_free)) };
    // SAFETY: a plain SSL_SESSION ex_data index: the mark is an integer,
    // nothing to free or duplicate.
    let unproven = unsafe {
        openssl_sys::CRYPTO_get_ex_new_index(
            ffi::CRYPTO_EX_INDEX_SSL_SESSION,
            0,
            std::ptr::null_mut(),
            None,
            None,
            None,
        )
    };
    if conn < 0 || unproven < 0 {
        return Err("OpenSSL could not allocate an ex_data index".into());
    }
    CONN_INDEX.store(conn, Ordering::Relaxed);
    UNPROVEN_INDEX.store(unproven, Ordering::Relaxed);
    Ok(())
}

/// The connection's [`Conn`], set by the ClientHello callback.
///
/// # Safety
/// `ssl` must be a live connection used by this thread only (OpenSSL runs
/// a connection's callbacks on the thread that drives it).
unsafe fn conn<'a>(ssl: *const SSL) -> Option<&'a mut Conn> {
    let index = CONN_INDEX.load(Ordering::Relaxed);
    if index < 0 || ssl.is_null() {
        return None;
    }
    // SAFETY: per the contract; the value is null or a Box<Conn> this
    // module leaked into the slot, freed only by on_ssl_free.
    unsafe { openssl_sys::SSL_get_ex_data(ssl, index).cast::<Conn>().as_mut() }
}

/// Marks (or clears) a session handed to a resumption whose client has not
/// yet proven that it knows the session's secrets.
///
/// # Safety
/// `sess` must be a valid session.
unsafe fn set_unproven(sess: *mut SSL_SESSION, unproven: bool) {
    let index = UNPROVEN_INDEX.load(Ordering::Relaxed);
    if index >= 0 && !sess.is_null() {
        // SAFETY: per the contract; the value is a flag, not a pointer.
        unsafe { ffi::SSL_SESSION_set_ex_data(sess, index, unproven as usize as *mut c_void) };
    }
}

/// # Safety
/// `sess` must be a valid session.
unsafe fn is_unproven(sess: *const SSL_SESSION) -> bool {
    let index = UNPROVEN_INDEX.load(Ordering::Relaxed);
    // SAFETY: per the contract.
    index >= 0 && !sess.is_null() && !unsafe { ffi::SSL_SESSION_get_ex_data(sess, index) }.is_null()
}

unsafe extern "C" fn on_client_hello(ssl: *mut SSL, _alert: *mut c_int, _arg: *mut c_void) -> c_int {
    CLIENT_HELLO.guard((), || {
        let (Some(cache), index) = (installed(), CONN_INDEX.load(Ordering::Relaxed)) else {
            return;
        };
        // SAFETY: OpenSSL passes the live connection; before SNI, its
        // context is the listener's.
        let ctx = unsafe { openssl_sys::SSL_get_SSL_CTX(ssl) } as usize;
        let Some(listener) = cache.listeners.iter().find(|l| l.ctx == ctx) else {
            return;
        };
        let mut ext: *const c_uchar = std::ptr::null();
        let mut len: usize = 0;
        // SAFETY: reads the raw extension from the ClientHello being
        // processed; the pointer is valid during this callback.
        let asked = if unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl, 0, &mut ext, &mut len) } == 1 {
            // SAFETY: OpenSSL returned `len` readable bytes at `ext`.
            client_hello::parse_server_name(unsafe { std::slice::from_raw_parts(ext, len) })
        } else {
            ServerName::Absent
        };
        // SAFETY: as above; a second ClientHello (after a HelloRetryRequest)
        // finds the Conn of the first.
        match unsafe { conn(ssl) } {
            Some(c) => c.asked = asked,
            None => {
                let c = Box::into_raw(Box::new(Conn {
                    listener,
                    asked,
                    stored_early: false,
                    last_lookup: None,
                    ticket: tickets::TicketState::default(),
                }));
                // SAFETY: hands the Box to the slot; on_ssl_free frees it.
                unsafe {
                    openssl_sys::SSL_set_ex_data(ssl, index, c.cast());
                    ffi::SSL_set_info_callback(ssl, Some(on_info));
                }
            }
        }
    });
    openssl_sys::SSL_CLIENT_HELLO_SUCCESS
}

/// Runs when OpenSSL frees a connection, before it would drop the session
/// of a connection not shut down: see the module docs.
unsafe extern "C" fn on_ssl_free(
    parent: *mut c_void,
    data: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    SSL_FREE.guard((), || {
        if parent.is_null() || data.is_null() {
            return;
        }
        let ssl = parent.cast::<SSL>();
        // SAFETY: OpenSSL calls this with the SSL being freed, still intact;
        // setting the shutdown flags only changes an int in it. `data` is the
        // Box<Conn> leaked by on_client_hello, freed exactly once, here.
        unsafe {
            openssl_sys::SSL_set_shutdown(ssl, openssl_sys::SSL_get_shutdown(ssl) | openssl_sys::SSL_SENT_SHUTDOWN);
            drop(Box::from_raw(data.cast::<Conn>()));
        }
    })
}

/// Handshake progress of a connection tagged by the ClientHello callback.
unsafe extern "C" fn on_info(ssl: *const SSL, what: c_int, _value: c_int) {
    INFO.guard((), || {
        let Some(cache) = installed() else { return };
        let ssl = ssl.cast_mut();
        if what & ffi::SSL_CB_HANDSHAKE_DONE != 0 {
            // The client proved it knows the session: removals count now.
            // Only a marked session is touched (setting ex_data on a
            // session allocates its table).
            // SAFETY: the live connection and its current session.
            unsafe {
                let sess = openssl_sys::SSL_get_session(ssl);
                if is_unproven(sess) {
                    set_unproven(sess, false);
                }
            }
            // SAFETY: the live connection, driven by this thread.
            unsafe { tickets::handshake_done(cache, ssl) };
            if cache.quickack {
                // SAFETY: the live connection, driven by this thread.
                unsafe { push_final_ack(ssl) };
            }
            return;
        }
        if what != ffi::SSL_CB_ACCEPT_LOOP {
            return;
        }
        // SAFETY: the live connection.
        match unsafe { ffi::SSL_get_state(ssl) } {
            // The ClientHello is processed (SNI switch done), the
            // ServerHello is next: a context made at run time is set up
            // here, before its first session needs it.
            // SAFETY: the live connection and its current context.
            ffi::TLS_ST_SR_CLNT_HELLO => unsafe { prepare_runtime_context(cache, ssl) },
            // Write side, right after the client's Finished verified.
            // SAFETY: as above.
            ffi::TLS_ST_SR_FINISHED => unsafe { store_early(cache, ssl) },
            _ => {}
        }
    })
}

/// In an abbreviated TLS 1.2 handshake the client speaks last: its
/// Finished gets no answer, so the kernel delays its ACK (up to 40 ms on
/// Linux). A balancer that relays the client's request right behind the
/// Finished without TCP_NODELAY (uWSGI's rawrouter) holds the request
/// until that ACK comes (Nagle). TCP_QUICKACK sends a pending ACK at once.
/// TLS 1.3 and full handshakes end with the server speaking, which
/// carries the ACK.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
unsafe fn push_final_ack(ssl: *mut SSL) {
    // SAFETY: per the contract.
    let (reused, version, fd) = unsafe {
        (
            openssl_sys::SSL_session_reused(ssl) == 1,
            openssl_sys::SSL_version(ssl),
            ffi::SSL_get_fd(ssl),
        )
    };
    if !reused || version >= openssl_sys::TLS1_3_VERSION || fd < 0 {
        return;
    }
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt on the connection's descriptor, with a
    // c_int option value that outlives the call; a descriptor that is not
    // a TCP socket only makes it fail, which changes nothing.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Sets a context uWSGI made at run time (sni-dir, subscriptions) up for
/// caching, if this process runs handshakes on one thread only; keeps
/// tickets off on the connection itself, unless cluster tickets are on.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
unsafe fn prepare_runtime_context(cache: &SessionCache, ssl: *mut SSL) {
    // SAFETY: per the contract.
    unsafe {
        let cluster_tickets = cache.tickets.is_some();
        if !cluster_tickets {
            ffi::SSL_set_options(ssl, openssl_sys::SSL_OP_NO_TICKET);
        }
        let ctx = openssl_sys::SSL_get_SSL_CTX(ssl);
        // Contexts of the master are set up; in a process with several
        // handshake threads a context is never changed at run time.
        if cache.digests.iter().any(|(c, _)| *c == ctx as usize) || !cache.sni.single_threaded() {
            return;
        }
        // One thread: the lock is never contended, and nobody reads the
        // context while it changes.
        let mut prepared = cache.runtime_prepared.lock().unwrap_or_else(|e| e.into_inner());
        if prepared.insert(ctx as usize) {
            prepare_sni_context(ctx, cluster_tickets);
        }
    }
}

/// Stores a TLS 1.2 session as soon as the client's Finished verified.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
unsafe fn store_early(cache: &SessionCache, ssl: *mut SSL) {
    // SAFETY: per the contract.
    unsafe {
        if openssl_sys::SSL_session_reused(ssl) != 0 || openssl_sys::SSL_version(ssl) >= openssl_sys::TLS1_3_VERSION {
            return;
        }
        let Some(conn) = conn(ssl) else { return };
        let sess = openssl_sys::SSL_get_session(ssl);
        if sess.is_null() || conn.stored_early {
            return;
        }
        if store_session(cache, ssl, sess) {
            conn.stored_early = true;
            bump(&cache.counters.get().stored_early);
        }
    }
}

/// The id of a session.
///
/// # Safety
/// `sess` must be a valid session for the lifetime `'a`.
unsafe fn session_id<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
    let mut len: c_uint = 0;
    // SAFETY: per the contract; OpenSSL returns a pointer into the session.
    unsafe {
        let id = openssl_sys::SSL_SESSION_get_id(sess, &mut len);
        if id.is_null() || len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(id, len as usize)
    }
}

/// The session id context of a session.
///
/// # Safety
/// `sess` must be a valid session for the lifetime `'a`.
unsafe fn session_context<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
    let mut len: c_uint = 0;
    // SAFETY: per the contract.
    unsafe {
        let sid = ffi::SSL_SESSION_get0_id_context(sess, &mut len);
        if sid.is_null() {
            return &[];
        }
        std::slice::from_raw_parts(sid, len as usize)
    }
}

/// DER encoding of a session, or `None` if it is longer than `max`.
///
/// # Safety
/// `sess` must be a valid session.
unsafe fn encode(sess: *mut SSL_SESSION, max: usize) -> Option<Vec<u8>> {
    // SAFETY: i2d with a null output only measures.
    let len = unsafe { openssl_sys::i2d_SSL_SESSION(sess, std::ptr::null_mut()) };
    if len <= 0 || len as usize > max {
        return None;
    }
    let mut der = vec![0u8; len as usize];
    let mut out = der.as_mut_ptr();
    // SAFETY: `der` holds exactly `len` bytes, as measured above.
    let written = unsafe { openssl_sys::i2d_SSL_SESSION(sess, &mut out) };
    (written == len).then_some(der)
}

/// Decodes a stored session, checking that it is the one asked for.
fn decode(der: &[u8], id: &[u8]) -> Option<*mut SSL_SESSION> {
    let mut p = der.as_ptr();
    // SAFETY: d2i reads at most `der.len()` bytes from `p`.
    let sess = unsafe { openssl_sys::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        // SAFETY: d2i may leave errors on the thread's queue; drop them so
        // they do not surface in the router's next SSL call.
        unsafe { openssl_sys::ERR_clear_error() };
        return None;
    }
    // SAFETY: `sess` is a valid session we own.
    if unsafe { session_id(sess) } != id {
        // SAFETY: we own the only reference.
        unsafe { openssl_sys::SSL_SESSION_free(sess) };
        return None;
    }
    Some(sess)
}

/// Gives a new session the fingerprint of the context that made it, then
/// stores it and tells the peers. Returns whether it was stored.
///
/// # Safety
/// `ssl` must be the live connection `sess` belongs to, driven by this
/// thread.
unsafe fn store_session(cache: &SessionCache, ssl: *mut SSL, sess: *mut SSL_SESSION) -> bool {
    // SAFETY: per the contract.
    let id = unsafe { session_id(sess) }.to_vec();
    if id.is_empty() {
        return false;
    }
    // SAFETY: per the contract.
    let Some(conn) = (unsafe { conn(ssl) }) else {
        return false;
    };
    // SAFETY: per the contract: the connection's current context and
    // policy are the ones that made the session.
    let made = unsafe {
        let ctx = openssl_sys::SSL_get_SSL_CTX(ssl);
        cache.fingerprint_of(conn.listener, ctx, Verify::of_ssl(ssl))
    };
    // SAFETY: the session is this connection's, not yet shared.
    if unsafe { ffi::SSL_SESSION_set1_id_context(sess, made.as_ptr(), made.len() as c_uint) } != 1 {
        // SAFETY: drops the error OpenSSL queued.
        unsafe { openssl_sys::ERR_clear_error() };
        return false;
    }
    let now = unix_secs();
    // SAFETY: as above.
    let (established, lifetime) = unsafe {
        (
            openssl_sys::SSL_SESSION_get_time(sess).max(0) as u64,
            openssl_sys::SSL_SESSION_get_timeout(sess).max(0) as u64,
        )
    };
    let expires = (established + lifetime).min(now + cache.timeout as u64);
    // A client identity (a certificate, or a context that verifies
    // clients): the session never leaves the node in the clear.
    // SAFETY: `sess` is this connection's session and `ssl` the live
    // connection (the contract); both calls only read them.
    let identified = unsafe { !ffi::SSL_SESSION_get0_peer(sess).is_null() || Verify::of_ssl(ssl).checks_clients() };
    let origin = if identified {
        Origin::LocalIdentity
    } else {
        Origin::Local
    };
    let limits = cache.store.limits();
    let max = (limits.blocksize as usize).saturating_sub(record::OVERHEAD);
    // SAFETY: as above.
    let stored = match unsafe { encode(sess, max) } {
        Some(der) => {
            let result = cache.store.insert(&id, &record::encode(origin, &der), expires, now);
            if cache.verbose {
                log::info!("new session {}.. ({} bytes): {result:?}", hex(&id), der.len());
            }
            let stored = matches!(result, Insert::Stored { .. });
            if stored {
                let at = sslcache_core::trace::now();
                cache.events.stored(&id, &der, expires, origin);
                sslcache_core::trace::stored(&id, at);
            }
            stored
        }
        None => {
            cache.store.note_too_big();
            if cache.verbose {
                log::info!(
                    "new session {}.. larger than blocksize {}: not cached",
                    hex(&id),
                    limits.blocksize
                );
            }
            false
        }
    };
    cache.events.changed(&cache.store);
    stored
}

unsafe extern "C" fn on_new_session(ssl: *mut SSL, sess: *mut SSL_SESSION) -> c_int {
    NEW_SESSION.guard(0, || {
        let Some(cache) = installed() else { return 0 };
        // SAFETY: OpenSSL passes the live connection and its session.
        unsafe {
            // With cluster tickets TLS 1.3 tickets are stateless: OpenSSL
            // still reports each, but nothing is stored or replicated.
            if cache.tickets.is_some() && openssl_sys::SSL_version(ssl) >= openssl_sys::TLS1_3_VERSION {
                return 0;
            }
            if let Some(conn) = conn(ssl) {
                // Stored at the client's Finished already (TLS 1.2).
                if conn.stored_early && openssl_sys::SSL_version(ssl) < openssl_sys::TLS1_3_VERSION {
                    return 0;
                }
            }
            store_session(cache, ssl, sess);
        }
        // We keep no reference to `sess`.
        0
    })
}

/// The fingerprint of where the connection will be served, and the policy
/// it will be served under, for the session lookup (which OpenSSL makes
/// before the SNI switch); `None` when that cannot be told.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
unsafe fn landing(cache: &SessionCache, ssl: *mut SSL, conn: &Conn) -> Option<(Fingerprint, Verify)> {
    // SAFETY: per the contract.
    unsafe {
        let listener_ctx = conn.listener.ctx as *const SSL_CTX;
        let current = openssl_sys::SSL_get_SSL_CTX(ssl);
        let here = Verify::of_ssl(ssl);
        let (ctx, verify) = if current as usize != conn.listener.ctx {
            // Already switched (by a ClientHello callback of the host).
            (current.cast_const(), here)
        } else {
            match &conn.asked {
                ServerName::Absent => (listener_ctx, here),
                ServerName::Malformed => return None,
                ServerName::Name(name) => match cache.sni.resolve(name) {
                    SniTarget::Listener => (listener_ctx, here),
                    SniTarget::Context { ctx, copies_verify } => {
                        let ctx = ctx as *const SSL_CTX;
                        (ctx, if copies_verify { Verify::of_ctx(ctx) } else { here })
                    }
                    SniTarget::Unknown => return None,
                },
            }
        };
        if ctx == listener_ctx && verify == conn.listener.verify {
            return Some((conn.listener.fingerprint, verify));
        }
        Some((cache.fingerprint_of(conn.listener, ctx, verify), verify))
    }
}

/// Why a found session is not resumed here.
#[derive(Debug)]
enum Refusal {
    Context,
    PlainIdentity,
}

/// Checks a decoded session against where the connection lands.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread; `sess` a valid
/// session owned by the caller.
unsafe fn admit(
    cache: &SessionCache,
    ssl: *mut SSL,
    conn: &Conn,
    sess: *mut SSL_SESSION,
    origin: Origin,
) -> Result<(), Refusal> {
    // SAFETY: per the contract.
    unsafe {
        let Some((expected, verify)) = landing(cache, ssl, conn) else {
            return Err(Refusal::Context);
        };
        if session_context(sess) != expected {
            return Err(Refusal::Context);
        }
        if origin == Origin::Plain && (verify.checks_clients() || !ffi::SSL_SESSION_get0_peer(sess).is_null()) {
            return Err(Refusal::PlainIdentity);
        }
        land_here(ssl, conn, sess, &expected);
        set_unproven(sess, true);
    }
    Ok(())
}

/// Tells OpenSSL (its own session id context check) and uWSGI (its SNI
/// callback reads the session's host name on a TLS 1.2 resumption) where a
/// session about to be resumed was checked: the fingerprint `expected`, for
/// the server name the ClientHello asked for.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread; `sess` a valid
/// session it is about to resume.
unsafe fn land_here(ssl: *mut SSL, conn: &Conn, sess: *mut SSL_SESSION, expected: &Fingerprint) {
    let name = match &conn.asked {
        ServerName::Name(name) => CString::new(name.clone()).ok(),
        _ => None,
    };
    // SAFETY: per the contract.
    unsafe {
        ffi::SSL_set_session_id_context(ssl, expected.as_ptr(), expected.len() as c_uint);
        ffi::SSL_SESSION_set1_hostname(sess, name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()));
    }
}

unsafe extern "C" fn on_get_session(
    ssl: *mut SSL,
    id: *const c_uchar,
    len: c_int,
    copy: *mut c_int,
) -> *mut SSL_SESSION {
    if !copy.is_null() {
        // SAFETY: OpenSSL passes a valid out-parameter. 0: the returned
        // reference is handed over to OpenSSL.
        unsafe { *copy = 0 };
    }
    GET_SESSION.guard(std::ptr::null_mut(), || {
        let Some(cache) = installed() else {
            return std::ptr::null_mut();
        };
        // SAFETY: the live connection, driven by this thread.
        let Some(conn) = (unsafe { conn(ssl) }) else {
            return std::ptr::null_mut();
        };
        if id.is_null() || len <= 0 {
            return std::ptr::null_mut();
        }
        // SAFETY: OpenSSL passes `len` readable bytes at `id`.
        let id = unsafe { std::slice::from_raw_parts(id, len as usize) };
        let now = unix_secs();
        // The second ClientHello of a HelloRetryRequest offers the same
        // session again: answer from the first lookup.
        let mut value = match conn.last_lookup.take() {
            Some((last_id, value)) if last_id == id => value,
            _ => Vec::new(),
        };
        if value.is_empty() {
            let lookup = cache.store.get(id, now, &mut value);
            if cache.verbose {
                log::info!("get session {}..: {lookup:?}", hex(id));
            }
            cache.events.changed(&cache.store);
            if !matches!(lookup, Lookup::Hit { .. }) && !wait_for_fresh(cache, id, &mut value) {
                return std::ptr::null_mut();
            }
        }
        let (origin, der) = match record::read(&value) {
            Some(record::Record::Session(origin, der)) => (origin, der),
            Some(record::Record::Tombstone) => return std::ptr::null_mut(),
            None => {
                cache.store.remove(id, now);
                return std::ptr::null_mut();
            }
        };
        let Some(sess) = decode(der, id) else {
            // Undecodable or not this id: never offer it again.
            cache.store.remove(id, now);
            return std::ptr::null_mut();
        };
        // SAFETY: the live connection; `sess` is ours until returned.
        match unsafe { admit(cache, ssl, conn, sess, origin) } {
            Ok(()) => {
                conn.last_lookup = Some((id.to_vec(), value));
                sess
            }
            Err(refusal) => {
                let counters = cache.counters.get();
                bump(match refusal {
                    Refusal::Context => &counters.refused_context,
                    Refusal::PlainIdentity => &counters.refused_plain_identity,
                });
                if cache.verbose {
                    log::info!("session {}.. not resumed here: {refusal:?}", hex(id));
                }
                // SAFETY: we own the only reference.
                unsafe { openssl_sys::SSL_SESSION_free(sess) };
                std::ptr::null_mut()
            }
        }
    })
}

/// After a miss for a session made an instant ago (elsewhere: replication
/// may bring it any moment), looks again for a few milliseconds at most,
/// within this process's budget. Returns whether it came.
fn wait_for_fresh(cache: &SessionCache, id: &[u8], value: &mut Vec<u8>) -> bool {
    let now_ms = unix_ms();
    if !fresh::worth_waiting(id, now_ms) {
        return false;
    }
    let allowance = WAIT_BUDGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allowance_us(now_ms);
    if allowance == 0 {
        return false;
    }
    let counters = cache.counters.get();
    bump(&counters.fresh_waits);
    let started = std::time::Instant::now();
    let found = loop {
        std::thread::sleep(std::time::Duration::from_micros(fresh::POLL_US));
        if matches!(cache.store.get_again(id, unix_secs(), value), Lookup::Hit { .. }) {
            break true;
        }
        if started.elapsed().as_micros() as u64 >= allowance {
            break false;
        }
    };
    let waited = started.elapsed().as_micros() as u64;
    WAIT_BUDGET.lock().unwrap_or_else(|e| e.into_inner()).spend(waited);
    counters.fresh_wait_us.fetch_add(waited, Ordering::Relaxed);
    if found {
        bump(&counters.fresh_found);
    }
    if cache.verbose {
        log::info!(
            "session {}.. made an instant ago: waited {waited} us, found: {found}",
            hex(id)
        );
    }
    found
}

/// Makes the id of a new session: its creation time, then random bytes
/// ([`fresh`]), so that a miss can tell a session made an instant ago.
unsafe extern "C" fn on_generate_id(_ssl: *const SSL, id: *mut c_uchar, len: *mut c_uint) -> c_int {
    GENERATE_ID.guard(0, || {
        if id.is_null() || len.is_null() {
            return 0;
        }
        // SAFETY: OpenSSL passes the most it takes in `*len`, and `id`
        // holds that many bytes.
        let max = unsafe { *len } as usize;
        let mut random = [0u8; fresh::ID_LEN];
        if openssl::rand::rand_bytes(&mut random).is_err() {
            return 0;
        }
        let made = if max >= fresh::ID_LEN {
            fresh::make_id(unix_ms(), random[..fresh::ID_LEN - 6].try_into().expect("26 bytes"))
        } else {
            random
        };
        let n = max.min(fresh::ID_LEN);
        // SAFETY: `n` fits both buffers (see above).
        unsafe {
            std::ptr::copy_nonoverlapping(made.as_ptr(), id, n);
            *len = n as c_uint;
        }
        1
    })
}

/// Whether OpenSSL is removing a session only because the peer closed the
/// connection without close_notify (the error is still on the queue).
fn removed_for_unexpected_eof() -> bool {
    // SAFETY: peeks at this thread's error queue without consuming it.
    let e = unsafe { openssl_sys::ERR_peek_last_error() };
    e != 0
        && openssl_sys::ERR_GET_LIB(e) == ffi::ERR_LIB_SSL
        && openssl_sys::ERR_GET_REASON(e) == ffi::SSL_R_UNEXPECTED_EOF_WHILE_READING
}

unsafe extern "C" fn on_remove_session(_ctx: *mut SSL_CTX, sess: *mut SSL_SESSION) {
    REMOVE_SESSION.guard((), || {
        let Some(cache) = installed() else { return };
        // SAFETY: OpenSSL passes a valid session for the duration of the call.
        let id = unsafe { session_id(sess) };
        if id.is_empty() {
            return;
        }
        // A session from a cluster ticket was never stored: its id is the
        // client's (TLS 1.2) or a dummy (TLS 1.3), and must not remove
        // a stored session of that id.
        // SAFETY: as above.
        if unsafe { tickets::is_ticket_session(sess) } {
            return;
        }
        if removed_for_unexpected_eof() {
            if cache.verbose {
                log::info!("kept session {}.. of a connection closed without close_notify", hex(id));
            }
            return;
        }
        // SAFETY: as above.
        if unsafe { is_unproven(sess) } {
            bump(&cache.counters.get().kept_unproven);
            if cache.verbose {
                log::info!(
                    "kept session {}..: its failed resumption never proved knowledge of it",
                    hex(id)
                );
            }
            return;
        }
        if cache.verbose {
            log::info!("remove session {}..", hex(id));
        }
        if cache.store.remove(id, unix_secs()) == Some(true) {
            cache.events.removed(id);
        }
        cache.events.changed(&cache.store);
    })
}

/// Makes a listener's `ctx` cache sessions in the store: session id
/// context `sid` (its fingerprint), `timeout`, and `tls13_tickets` TLS 1.3
/// tickets per handshake. Tickets are off (TLS 1.3's stateful), unless
/// `cluster_tickets`: then tickets are on, with the keys of [`tickets`]
/// (TLS 1.3's stateless).
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` not yet used by another thread (the
/// master sets contexts up before the router processes fork).
pub unsafe fn hook_listener(
    ctx: *mut SSL_CTX,
    sid: &Fingerprint,
    timeout: u32,
    tls13_tickets: u8,
    cluster_tickets: bool,
) -> Result<(), String> {
    ensure_indexes()?;
    // SAFETY: per the contract.
    unsafe {
        openssl_sys::SSL_CTX_set_session_cache_mode(
            ctx,
            openssl_sys::SSL_SESS_CACHE_SERVER
                | openssl_sys::SSL_SESS_CACHE_NO_INTERNAL
                | openssl_sys::SSL_SESS_CACHE_NO_AUTO_CLEAR,
        );
        if cluster_tickets {
            tickets::hook(ctx)?;
        } else {
            openssl_sys::SSL_CTX_set_options(ctx, openssl_sys::SSL_OP_NO_TICKET as _);
        }
        ffi::SSL_CTX_set_timeout(ctx, timeout as c_long);
        openssl_sys::SSL_CTX_set_num_tickets(ctx, tls13_tickets as usize);
        openssl_sys::SSL_CTX_sess_set_new_cb(ctx, Some(on_new_session));
        openssl_sys::SSL_CTX_sess_set_get_cb(ctx, Some(on_get_session));
        ffi::SSL_CTX_set_generate_session_id(ctx, Some(on_generate_id));
        openssl_sys::SSL_CTX_sess_set_remove_cb(ctx, Some(on_remove_session));
        openssl_sys::SSL_CTX_set_client_hello_cb(ctx, Some(on_client_hello), std::ptr::null_mut());
        if openssl_sys::SSL_CTX_set_session_id_context(ctx, sid.as_ptr(), sid.len() as c_uint) != 1 {
            openssl_sys::ERR_clear_error();
            return Err("OpenSSL refused the session id context".into());
        }
    }
    Ok(())
}

/// Prepares a context that SNI may switch a connection to. OpenSSL takes the
/// session cache mode from the connection's current context when it decides
/// whether a new TLS 1.2 session gets an id, and uWSGI's SNI callback copies
/// an `sni` context's options onto the connection: so an SNI context needs
/// server caching on and tickets off, like its listener (on, with
/// `cluster_tickets`: OpenSSL makes and opens tickets with the listener's
/// callbacks, whatever the SNI context). The master does
/// this for every context it knows before fork; contexts made at run time
/// are prepared by the info callback before their first ServerHello.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` (or null) that no other thread uses.
pub unsafe fn prepare_sni_context(ctx: *mut SSL_CTX, cluster_tickets: bool) {
    if ctx.is_null() {
        return;
    }
    let mode = openssl_sys::SSL_SESS_CACHE_SERVER | openssl_sys::SSL_SESS_CACHE_NO_INTERNAL;
    // SAFETY: per the contract.
    unsafe {
        let no_ticket = openssl_sys::SSL_OP_NO_TICKET as _;
        let has = openssl_sys::SSL_CTX_get_options(ctx) & no_ticket != 0;
        if cluster_tickets && has {
            openssl_sys::SSL_CTX_clear_options(ctx, no_ticket);
        } else if !cluster_tickets && !has {
            openssl_sys::SSL_CTX_set_options(ctx, no_ticket);
        }
        if openssl_sys::SSL_CTX_ctrl(ctx, ffi::SSL_CTRL_GET_SESS_CACHE_MODE, 0, std::ptr::null_mut()) & mode != mode {
            openssl_sys::SSL_CTX_set_session_cache_mode(ctx, mode);
        }
    }
}
