//! OpenSSL session cache callbacks backed by the shared store.
//!
//! Every listener context gets server-side caching without OpenSSL's
//! internal cache, no session tickets (TLS 1.2 resumes by session id, TLS
//! 1.3 gets stateful tickets whose identity is the session id), the
//! configured timeout and session id context, and four callbacks: `new`
//! (store the DER session), `get` (decode it back), `remove`, and a
//! ClientHello callback that tags the connection with its listener.
//!
//! Two OpenSSL behaviours would otherwise lose sessions:
//! - SNI: OpenSSL looks the session up with the listener's session id
//!   context, before the SNI callback switches the connection to the SNI
//!   context (and to *its* session id context, the host name). A session
//!   created after such a switch is stored with the listener's context, so
//!   that it matches at the next lookup (uWSGI issue 580 was this).
//! - Connections freed without close_notify: OpenSSL removes their session
//!   (`ssl_clear_bad_session`), and OpenSSL 3 treats a peer's TCP close
//!   without close_notify as a fatal error that removes it too. TLS 1.1 and
//!   later no longer require that (RFC 4346, 7.2.1); nginx marks such
//!   connections shut down for the same reason. The tag's ex_data free hook,
//!   which OpenSSL runs before `ssl_clear_bad_session`, marks the connection
//!   shut down, and the remove callback ignores the unexpected-EOF reason.
//!   Sessions still go away on any other fatal alert, on expiry, or by LRU.
//!
//! The callbacks run on the handshake path of a router process: they never
//! block beyond the store's bounded lock wait, never panic across the FFI
//! boundary (a panic is caught, logged once, and answered with "no
//! session"), and never keep a reference to OpenSSL's objects.

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
    fn SSL_SESSION_get0_id_context(s: *const SSL_SESSION, len: *mut c_uint) -> *const c_uchar;
    fn SSL_SESSION_set1_id_context(s: *mut SSL_SESSION, sid: *const c_uchar, len: c_uint) -> c_int;
}

pub use crate::config::MAX_SESSION_CONTEXT as MAX_SID_CTX;
/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (OpenSSL 3), and `ERR_LIB_SSL`.
const UNEXPECTED_EOF: c_int = 294;
const ERR_LIB_SSL: c_int = 20;
/// `SSL_CTX_get_session_cache_mode` is a macro over this control.
const SSL_CTRL_GET_SESS_CACHE_MODE: c_int = 45;

/// Told about every change the callbacks make to the store.
pub trait SessionEvents: Send + Sync {
    /// A session created here was stored, valid until `expires`.
    fn stored(&self, _id: &[u8], _der: &[u8], _expires: u64) {}
    /// OpenSSL asked to forget a session.
    fn removed(&self, _id: &[u8]) {}
    /// The store changed (for stats).
    fn changed(&self, _store: &Store) {}
}

/// A listening context and the session id context its sessions carry.
pub struct Listener {
    /// The `SSL_CTX`, as an address (only compared, never dereferenced).
    pub ctx: usize,
    pub sid_ctx: Vec<u8>,
}

/// The state the callbacks use, set once in the master before fork.
pub struct SessionCache {
    pub store: Store,
    /// Session lifetime, seconds.
    pub timeout: u32,
    pub events: Box<dyn SessionEvents>,
    /// Log every callback (uWSGI's `ssl-verbose`).
    pub verbose: bool,
    /// Every hooked listener; fixed once installed.
    pub listeners: Vec<Listener>,
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

fn hex(id: &[u8]) -> String {
    id.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

static PANICKED: AtomicBool = AtomicBool::new(false);

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
            log::once(
                &PANICKED,
                &format!("internal error in the {what} callback ({msg}); the session is not cached"),
            );
            fallback
        }
    }
}

/// SSL ex_data index of the connection's tag (a `&'static Listener`);
/// -1 until created.
static TAG_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Creates the tag's ex_data index (once per process image).
fn ensure_tag_index() -> Result<c_int, String> {
    let index = TAG_INDEX.load(Ordering::Relaxed);
    if index >= 0 {
        return Ok(index);
    }
    // SAFETY: registers a free hook for a new SSL ex_data index.
    let index = unsafe { openssl_sys::SSL_get_ex_new_index(0, std::ptr::null_mut(), None, None, Some(on_ssl_free)) };
    if index < 0 {
        return Err("OpenSSL could not allocate an SSL ex_data index".into());
    }
    TAG_INDEX.store(index, Ordering::Relaxed);
    Ok(index)
}

/// The listener a connection was tagged with by the ClientHello callback.
///
/// # Safety
/// `ssl` must be a live connection.
unsafe fn tag(ssl: *const SSL) -> Option<&'static Listener> {
    let index = TAG_INDEX.load(Ordering::Relaxed);
    if index < 0 || ssl.is_null() {
        return None;
    }
    // SAFETY: per the contract; the value is null or a pointer into the
    // installed cache's listeners, which live as long as the process.
    unsafe { openssl_sys::SSL_get_ex_data(ssl, index).cast::<Listener>().as_ref() }
}

unsafe extern "C" fn on_client_hello(ssl: *mut SSL, _alert: *mut c_int, _arg: *mut c_void) -> c_int {
    guard("client hello", (), || {
        let (Some(cache), index) = (installed(), TAG_INDEX.load(Ordering::Relaxed)) else {
            return;
        };
        // SAFETY: OpenSSL passes the live connection; before SNI, its
        // context is the listener's.
        let ctx = unsafe { openssl_sys::SSL_get_SSL_CTX(ssl) } as usize;
        if let Some(listener) = cache.listeners.iter().find(|l| l.ctx == ctx) {
            // SAFETY: stores a pointer to a listener that outlives the
            // connection (the cache is never dropped).
            unsafe { openssl_sys::SSL_set_ex_data(ssl, index, listener as *const Listener as *mut c_void) };
        }
    });
    openssl_sys::SSL_CLIENT_HELLO_SUCCESS
}

/// Runs when OpenSSL frees a connection, before it would drop the session
/// of a connection not shut down: see the module docs.
unsafe extern "C" fn on_ssl_free(
    parent: *mut c_void,
    tag: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if parent.is_null() || tag.is_null() {
        return;
    }
    let ssl = parent.cast::<SSL>();
    // SAFETY: OpenSSL calls this with the SSL being freed, still intact
    // (its context is released later in SSL_free); setting the shutdown
    // flags only changes an int in it. `tag` is a listener of the installed
    // cache (see on_client_hello).
    unsafe {
        openssl_sys::SSL_set_shutdown(ssl, openssl_sys::SSL_get_shutdown(ssl) | openssl_sys::SSL_SENT_SHUTDOWN);
        let listener = &*tag.cast::<Listener>();
        let ctx = openssl_sys::SSL_get_SSL_CTX(ssl);
        if ctx as usize != listener.ctx {
            prepare_sni_context(ctx, Some(&listener.sid_ctx));
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

/// Gives the session the listener's session id context, if SNI changed it.
///
/// # Safety
/// `sess` must be a valid session not used by another thread.
unsafe fn restore_sid_ctx(sess: *mut SSL_SESSION, sid: &[u8]) {
    let mut len: c_uint = 0;
    // SAFETY: per the contract.
    unsafe {
        let current = SSL_SESSION_get0_id_context(sess, &mut len);
        let current = if current.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(current, len as usize)
        };
        if current != sid {
            SSL_SESSION_set1_id_context(sess, sid.as_ptr(), sid.len() as c_uint);
        }
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
        // SAFETY: `ssl` is the live connection this session belongs to.
        unsafe {
            if let Some(listener) = tag(ssl) {
                restore_sid_ctx(sess, &listener.sid_ctx);
                let ctx = openssl_sys::SSL_get_SSL_CTX(ssl);
                if ctx as usize != listener.ctx {
                    prepare_sni_context(ctx, Some(&listener.sid_ctx));
                }
            }
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
                let result = cache.store.insert(id, &der, expires, now);
                if cache.verbose {
                    log::line(&format!("new session {}.. ({} bytes): {result:?}", hex(id), der.len()));
                }
                if let Insert::Stored { .. } = result {
                    cache.events.stored(id, &der, expires);
                }
            }
            None => {
                cache.store.note_too_big();
                if cache.verbose {
                    log::line(&format!(
                        "new session {}.. larger than blocksize {}: not cached",
                        hex(id),
                        limits.blocksize
                    ));
                }
            }
        }
        cache.events.changed(&cache.store);
        // We keep no reference to `sess`.
        0
    })
}

unsafe extern "C" fn on_get_session(
    _ssl: *mut SSL,
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
        let lookup = cache.store.get(id, now, &mut der);
        if cache.verbose {
            log::line(&format!("get session {}..: {lookup:?}", hex(id)));
        }
        let found = match lookup {
            Lookup::Hit { .. } => decode(&der, id).unwrap_or_else(|| {
                // Undecodable or not this id: never offer it again.
                cache.store.remove(id, now);
                std::ptr::null_mut()
            }),
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
        // SAFETY: OpenSSL passes a valid session for the duration of the call.
        let id = unsafe { session_id(sess) };
        if id.is_empty() {
            return;
        }
        if removed_for_unexpected_eof() {
            if cache.verbose {
                log::line(&format!(
                    "kept session {}.. of a connection closed without close_notify",
                    hex(id)
                ));
            }
            return;
        }
        if cache.verbose {
            log::line(&format!("remove session {}..", hex(id)));
        }
        if cache.store.remove(id, unix_now()) == Some(true) {
            cache.events.removed(id);
        }
        cache.events.changed(&cache.store);
    })
}

/// Makes `ctx` cache sessions in the store, under session id context `sid`.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` not yet used by another thread (the
/// master sets contexts up before the router processes fork).
pub unsafe fn hook_listener(ctx: *mut SSL_CTX, sid: &[u8], timeout: u32) -> Result<(), String> {
    if sid.is_empty() || sid.len() > MAX_SID_CTX {
        return Err(format!(
            "a session id context takes 1 to {MAX_SID_CTX} bytes, not {}",
            sid.len()
        ));
    }
    ensure_tag_index()?;
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
/// whether a new session gets an id, and uWSGI's SNI callback copies that
/// context's options onto the connection: so an SNI context needs server
/// caching on and tickets off, like its listener. In TLS 1.3 the session is
/// looked up after the SNI switch, so the SNI context also needs the
/// listener's session id context (`sid`). Contexts that uWSGI makes
/// at run time (sni-dir, subscriptions) are prepared the first time one of
/// their connections ends, so only their very first session is missed.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` (or null) used by this thread only.
pub unsafe fn prepare_sni_context(ctx: *mut SSL_CTX, sid: Option<&[u8]>) {
    if ctx.is_null() {
        return;
    }
    if let Some(sid) = sid.filter(|s| !s.is_empty() && s.len() <= MAX_SID_CTX) {
        // SAFETY: per the contract.
        unsafe { openssl_sys::SSL_CTX_set_session_id_context(ctx, sid.as_ptr(), sid.len() as c_uint) };
    }
    let mode = openssl_sys::SSL_SESS_CACHE_SERVER | openssl_sys::SSL_SESS_CACHE_NO_INTERNAL;
    // SAFETY: per the contract.
    unsafe {
        let no_ticket = openssl_sys::SSL_OP_NO_TICKET as _;
        if openssl_sys::SSL_CTX_get_options(ctx) & no_ticket == 0 {
            openssl_sys::SSL_CTX_set_options(ctx, no_ticket);
        }
        if openssl_sys::SSL_CTX_ctrl(ctx, SSL_CTRL_GET_SESS_CACHE_MODE, 0, std::ptr::null_mut()) & mode != mode {
            openssl_sys::SSL_CTX_set_session_cache_mode(ctx, mode);
        }
    }
}
