//! OpenSSL session cache callbacks backed by the shared store.
//!
//! Every listener context gets server-side caching without OpenSSL's
//! internal cache, no session tickets (TLS 1.2 resumes by session id, TLS
//! 1.3 gets stateful tickets whose identity is the session id), the
//! configured timeout and session id context, and three callbacks:
//! `new` (store the DER session), `get` (decode it back) and `remove`.
//!
//! OpenSSL also removes a session when its connection is freed without the
//! server having sent close_notify (`ssl_clear_bad_session`): with uWSGI,
//! every client that just drops the TCP connection would lose its session.
//! TLS 1.1 and later no longer require that (RFC 4346, 7.2.1), and nginx
//! marks such connections shut down for the same reason. Connections whose
//! session went through the callbacks carry an ex_data marker; its free hook,
//! which OpenSSL runs before `ssl_clear_bad_session`, marks them shut down.
//! OpenSSL 3 also treats a TCP close without close_notify while reading as a
//! fatal error and removes the session from there; the remove callback
//! ignores that one reason (and only that one). Sessions still go away on
//! any other fatal alert, on expiry, or by LRU eviction.
//!
//! The callbacks run on the handshake path of a router process: they never
//! block beyond the store's bounded lock wait, never panic across the FFI
//! boundary (a panic is caught, logged once, and answered with "no session"),
//! and never keep a reference to OpenSSL's objects.

use std::ffi::{c_int, c_long, c_uchar, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use crate::host::log;
use crate::store::{Insert, Lookup, Store};

extern "C" {
    // Real functions in every OpenSSL >= 1.1; not declared by openssl-sys.
    fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
}

/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (OpenSSL 3), and `ERR_LIB_SSL`.
const UNEXPECTED_EOF: c_int = 294;
const ERR_LIB_SSL: c_int = 20;

/// Longest session id context OpenSSL accepts (SSL_MAX_SID_CTX_LENGTH).
pub const MAX_SID_CTX: usize = 32;

/// Told about every change the callbacks make to the store.
pub trait SessionEvents: Send + Sync {
    /// A session created here was stored, valid until `expires`.
    fn stored(&self, _id: &[u8], _der: &[u8], _expires: u64) {}
    /// OpenSSL asked to forget a session.
    fn removed(&self, _id: &[u8]) {}
    /// The store changed (for stats).
    fn changed(&self, _store: &Store) {}
}

/// The state the callbacks use, set once in the master before fork.
pub struct SessionCache {
    pub store: Store,
    /// Session lifetime, seconds.
    pub timeout: u32,
    pub events: Box<dyn SessionEvents>,
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

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// SSL ex_data index of the "session is ours" marker; -1 until created.
static OURS_INDEX: AtomicI32 = AtomicI32::new(-1);
/// The marker's value: any non-null address.
static OURS: u8 = 1;

/// Runs when OpenSSL frees a connection, before it would drop the session of
/// a connection not shut down: see the module docs.
unsafe extern "C" fn on_ssl_free(
    parent: *mut c_void,
    ptr: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if parent.is_null() || ptr.is_null() {
        return;
    }
    let ssl = parent.cast::<SSL>();
    // SAFETY: OpenSSL calls this with the SSL being freed, still intact;
    // setting the shutdown flags only changes an int in it.
    unsafe {
        openssl_sys::SSL_set_shutdown(ssl, openssl_sys::SSL_get_shutdown(ssl) | openssl_sys::SSL_SENT_SHUTDOWN);
    }
}

/// Marks a connection whose session is in the store.
///
/// # Safety
/// `ssl` must be a live connection used by this thread.
unsafe fn mark_ours(ssl: *mut SSL) {
    let index = OURS_INDEX.load(Ordering::Relaxed);
    if index >= 0 && !ssl.is_null() {
        // SAFETY: per the contract; the marker is a static address.
        unsafe { openssl_sys::SSL_set_ex_data(ssl, index, std::ptr::addr_of!(OURS) as *mut c_void) };
    }
}

/// Creates the marker's ex_data index (once per process image).
fn ensure_marker_index() -> Result<(), String> {
    if OURS_INDEX.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    // SAFETY: registers a free hook for a new SSL ex_data index.
    let index = unsafe {
        openssl_sys::SSL_get_ex_new_index(0, std::ptr::null_mut(), None, None, Some(on_ssl_free))
    };
    if index < 0 {
        return Err("OpenSSL could not allocate an SSL ex_data index".into());
    }
    OURS_INDEX.store(index, Ordering::Relaxed);
    Ok(())
}

/// Runs a callback body; a panic becomes `fallback` and one log line.
fn guard<T>(what: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::once(&PANICKED, &format!("internal error in the {what} callback ({msg}); the session is not cached"));
            fallback
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

unsafe extern "C" fn on_new_session(ssl: *mut SSL, sess: *mut SSL_SESSION) -> c_int {
    guard("new session", 0, || {
        let Some(cache) = installed() else { return 0 };
        // SAFETY: OpenSSL passes a valid session for the duration of the call.
        let id = unsafe { session_id(sess) };
        if id.is_empty() {
            return 0;
        }
        let now = unix_now();
        // SAFETY: as above.
        let (established, lifetime) = unsafe {
            (
                openssl_sys::SSL_SESSION_get_time(sess).max(0) as u64,
                openssl_sys::SSL_SESSION_get_timeout(sess).max(0) as u64,
            )
        };
        let expires = (established + lifetime).min(now + cache.timeout as u64);
        let limits = cache.store.limits();
        // SAFETY: as above.
        match unsafe { encode(sess, limits.blocksize as usize) } {
            Some(der) => {
                if let Insert::Stored { .. } = cache.store.insert(id, &der, expires, now) {
                    cache.events.stored(id, &der, expires);
                }
            }
            None => cache.store.note_too_big(),
        }
        cache.events.changed(&cache.store);
        // SAFETY: `ssl` is the live connection this session belongs to.
        unsafe {
            mark_ours(ssl);
            keep_tickets_off(openssl_sys::SSL_get_SSL_CTX(ssl));
        }
        // We keep no reference to `sess`.
        0
    })
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
    guard("get session", std::ptr::null_mut(), || {
        let Some(cache) = installed() else {
            return std::ptr::null_mut();
        };
        if id.is_null() || len <= 0 {
            return std::ptr::null_mut();
        }
        // SAFETY: OpenSSL passes `len` readable bytes at `id`.
        let id = unsafe { std::slice::from_raw_parts(id, len as usize) };
        let now = unix_now();
        let mut der = Vec::new();
        let found = match cache.store.get(id, now, &mut der) {
            Lookup::Hit { .. } => match decode(&der, id) {
                Some(sess) => {
                    // SAFETY: `ssl` is the live connection asking.
                    unsafe { mark_ours(ssl) };
                    sess
                }
                None => {
                    // Undecodable or not this id: never offer it again.
                    cache.store.remove(id, now);
                    std::ptr::null_mut()
                }
            },
            Lookup::Miss | Lookup::Expired | Lookup::Busy => std::ptr::null_mut(),
        };
        cache.events.changed(&cache.store);
        found
    })
}

/// Whether OpenSSL is removing a session only because the peer closed the
/// connection without close_notify (the error is still on the queue).
fn removed_for_unexpected_eof() -> bool {
    // SAFETY: peeks at this thread's error queue without consuming it.
    let e = unsafe { openssl_sys::ERR_peek_last_error() };
    e != 0 && openssl_sys::ERR_GET_LIB(e) == ERR_LIB_SSL && openssl_sys::ERR_GET_REASON(e) == UNEXPECTED_EOF
}

unsafe extern "C" fn on_remove_session(_ctx: *mut SSL_CTX, sess: *mut SSL_SESSION) {
    guard("remove session", (), || {
        let Some(cache) = installed() else { return };
        if removed_for_unexpected_eof() {
            return;
        }
        // SAFETY: OpenSSL passes a valid session for the duration of the call.
        let id = unsafe { session_id(sess) };
        if id.is_empty() {
            return;
        }
        if cache.store.remove(id, unix_now()) == Some(true) {
            cache.events.removed(id);
        }
        cache.events.changed(&cache.store);
    })
}

/// Makes `ctx` cache sessions in the store.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` not yet used by another thread (the
/// master sets contexts up before the router processes fork).
pub unsafe fn hook_listener(ctx: *mut SSL_CTX, sid_ctx: Option<&[u8]>, timeout: u32) -> Result<(), String> {
    if let Some(sid) = sid_ctx {
        if sid.len() > MAX_SID_CTX {
            return Err(format!("a session id context is at most {MAX_SID_CTX} bytes"));
        }
    }
    ensure_marker_index()?;
    // SAFETY: per the contract.
    unsafe {
        openssl_sys::SSL_CTX_set_session_cache_mode(
            ctx,
            openssl_sys::SSL_SESS_CACHE_SERVER
                | openssl_sys::SSL_SESS_CACHE_NO_INTERNAL
                | openssl_sys::SSL_SESS_CACHE_NO_AUTO_CLEAR,
        );
        openssl_sys::SSL_CTX_set_options(ctx, openssl_sys::SSL_OP_NO_TICKET as _);
        SSL_CTX_set_timeout(ctx, timeout as c_long);
        openssl_sys::SSL_CTX_sess_set_new_cb(ctx, Some(on_new_session));
        openssl_sys::SSL_CTX_sess_set_get_cb(ctx, Some(on_get_session));
        openssl_sys::SSL_CTX_sess_set_remove_cb(ctx, Some(on_remove_session));
        if let Some(sid) = sid_ctx {
            if openssl_sys::SSL_CTX_set_session_id_context(ctx, sid.as_ptr(), sid.len() as c_uint) != 1 {
                openssl_sys::ERR_clear_error();
                return Err("OpenSSL refused the session id context".into());
            }
        }
    }
    Ok(())
}

/// Keeps session tickets off on a context that SNI may switch to: uWSGI's
/// SNI callback copies the SNI context's options onto the connection.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` (or null) used by this thread only.
pub unsafe fn keep_tickets_off(ctx: *mut SSL_CTX) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: per the contract.
    unsafe {
        let no_ticket = openssl_sys::SSL_OP_NO_TICKET as _;
        if openssl_sys::SSL_CTX_get_options(ctx) & no_ticket == 0 {
            openssl_sys::SSL_CTX_set_options(ctx, no_ticket);
        }
    }
}
