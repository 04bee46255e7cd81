//! The session callbacks: `new` stores a session (also called by the info
//! callback, at a TLS 1.2 client's Finished), `get` finds one (waiting
//! briefly for one made an instant ago elsewhere), `remove` forgets one,
//! and the id callback makes every session id.
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
//! tag's ex_data free hook ([`super::handshake`]), which OpenSSL runs
//! before `ssl_clear_bad_session`, marks the connection shut down, and the
//! remove callback ignores the unexpected-EOF reason.

use std::ffi::{c_int, c_uchar, c_uint};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use sslcache_core::boundary::Boundary;
use sslcache_core::clock::{unix_ms, unix_secs};
use sslcache_core::fresh;
use sslcache_core::record::{self, Origin};
use sslcache_core::store::{Insert, Lookup};

use super::admit::{admit, Refusal};
use super::codec::{decode, encode, session_id};
use super::connection::{conn, is_unproven};
use super::fingerprint::Verify;
use super::{bump, hex, installed, tickets, SessionCache};
use crate::ffi;

/// The panic boundary of each callback: a panic is logged once and
/// answered with "no session" / "nothing done".
static NEW_SESSION: Boundary = Boundary::new("the new session callback");
static GET_SESSION: Boundary = Boundary::new("the get session callback");
static REMOVE_SESSION: Boundary = Boundary::new("the remove session callback");
static GENERATE_ID: Boundary = Boundary::new("the session id callback");

/// This router process's waiting for sessions made an instant ago.
static WAIT_BUDGET: Mutex<fresh::WaitBudget> = Mutex::new(fresh::WaitBudget::new());

/// Gives a new session the fingerprint of the context that made it, then
/// stores it and tells the peers. Returns whether it was stored.
///
/// # Safety
/// `ssl` must be the live connection `sess` belongs to, driven by this
/// thread.
pub(super) unsafe fn store_session(cache: &SessionCache, ssl: *mut SSL, sess: *mut SSL_SESSION) -> bool {
    // SAFETY: `sess` is the session of the connection `ssl` in the
    // new-session or info callback that calls this (the caller's promise),
    // valid for this call; the id is copied at once.
    let id = unsafe { session_id(sess) }.to_vec();
    if id.is_empty() {
        return false;
    }
    // SAFETY: `ssl` is that callback's connection, alive and driven by this
    // thread (the caller's promise), as conn requires.
    let Some(conn) = (unsafe { conn(ssl) }) else {
        return false;
    };
    // SAFETY: `ssl` is alive for this call (the caller's promise);
    // SSL_get_SSL_CTX returns the context it holds a reference to, valid
    // meanwhile, as fingerprint_of requires; Verify::of_ssl only reads `ssl`.
    // The connection's current context and policy are the ones that made
    // the session.
    let made = unsafe {
        let ctx = openssl_sys::SSL_get_SSL_CTX(ssl);
        cache.fingerprint_of(conn.listener, ctx, Verify::of_ssl(ssl))
    };
    // SAFETY: `sess` is valid for this call (the caller's promise) and in
    // neither the store nor another thread's hands yet: the id context,
    // copied from `made`, is written while nobody else reads it.
    if unsafe { ffi::SSL_SESSION_set1_id_context(sess, made.as_ptr(), made.len() as c_uint) } != 1 {
        // SAFETY: ERR_clear_error has no precondition: it drops the error
        // OpenSSL queued on this thread.
        unsafe { openssl_sys::ERR_clear_error() };
        return false;
    }
    let now = unix_secs();
    // SAFETY: `sess` is valid for this call (the caller's promise); both
    // getters only read it.
    let (established, lifetime) = unsafe {
        (
            openssl_sys::SSL_SESSION_get_time(sess).max(0) as u64,
            openssl_sys::SSL_SESSION_get_timeout(sess).max(0) as u64,
        )
    };
    let expires = (established + lifetime).min(now + cache.timeout as u64);
    // A client identity (a certificate, or a context that verifies
    // clients): the session never leaves the node in the clear.
    // SAFETY: `sess` is the session and `ssl` the live connection of the
    // callback that calls this, on this thread; both calls only read them.
    let identified = unsafe { !ffi::SSL_SESSION_get0_peer(sess).is_null() || Verify::of_ssl(ssl).checks_clients() };
    let origin = if identified {
        Origin::LocalIdentity
    } else {
        Origin::Local
    };
    let limits = cache.store.limits();
    let max = (limits.blocksize as usize).saturating_sub(record::OVERHEAD);
    // SAFETY: `sess` is valid for this call (the session of the callback's
    // connection), as encode requires; it only serializes it.
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

pub(super) unsafe extern "C" fn on_new_session(ssl: *mut SSL, sess: *mut SSL_SESSION) -> c_int {
    NEW_SESSION.guard(0, || {
        let Some(cache) = installed() else { return 0 };
        // SAFETY: OpenSSL runs this callback for the connection `ssl` and
        // its new session `sess`, on the thread driving it, both alive for
        // the call: what SSL_version, conn and store_session require.
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

pub(super) unsafe extern "C" fn on_get_session(
    ssl: *mut SSL,
    id: *const c_uchar,
    len: c_int,
    copy: *mut c_int,
) -> *mut SSL_SESSION {
    if !copy.is_null() {
        // SAFETY: `copy` is not null (checked) and points at OpenSSL's int
        // for this call. 0: the returned reference is handed over to OpenSSL.
        unsafe { *copy = 0 };
    }
    GET_SESSION.guard(std::ptr::null_mut(), || {
        let Some(cache) = installed() else {
            return std::ptr::null_mut();
        };
        // SAFETY: `ssl` is the connection OpenSSL runs this get session
        // callback for, alive for the call and driven by this thread.
        let Some(conn) = (unsafe { conn(ssl) }) else {
            return std::ptr::null_mut();
        };
        if id.is_null() || len <= 0 {
            return std::ptr::null_mut();
        }
        // SAFETY: `id` is not null and `len` positive (checked): OpenSSL
        // passes the id the ClientHello offered, `len` readable bytes alive
        // for the callback; the slice does not outlive it.
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
        // SAFETY: `ssl` is this callback's connection, driven by this
        // thread; `sess` was made by decode and is owned here until it is
        // returned to OpenSSL or freed below.
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
                // SAFETY: `sess` came from decode and was not handed to
                // OpenSSL (admit refused it): the only reference is ours,
                // dropped here once.
                unsafe { openssl_sys::SSL_SESSION_free(sess) };
                std::ptr::null_mut()
            }
        }
    })
}

/// After a miss for a session made an instant ago (elsewhere: replication
/// may bring it any moment), looks again for `ssl-sessions-fresh-wait` at
/// most, within this process's budget. Returns whether it came.
fn wait_for_fresh(cache: &SessionCache, id: &[u8], value: &mut Vec<u8>) -> bool {
    let now_ms = unix_ms();
    if !fresh::worth_waiting(id, now_ms) {
        return false;
    }
    let allowance = WAIT_BUDGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allowance_us(now_ms, cache.fresh_wait_us);
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
pub(super) unsafe extern "C" fn on_generate_id(_ssl: *const SSL, id: *mut c_uchar, len: *mut c_uint) -> c_int {
    GENERATE_ID.guard(0, || {
        if id.is_null() || len.is_null() {
            return 0;
        }
        // SAFETY: `len` is not null (checked) and points at OpenSSL's count
        // of the bytes its buffer at `id` holds, the most it takes.
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
        // SAFETY: `n` is at most `max`, the size of OpenSSL's buffer at
        // `id`, and at most fresh::ID_LEN, the size of `made`, a local that
        // cannot overlap it; `len` is OpenSSL's, not null (checked).
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
    // SAFETY: ERR_peek_last_error has no precondition: it reads this
    // thread's error queue without consuming it.
    let e = unsafe { openssl_sys::ERR_peek_last_error() };
    e != 0
        && openssl_sys::ERR_GET_LIB(e) == ffi::ERR_LIB_SSL
        && openssl_sys::ERR_GET_REASON(e) == ffi::SSL_R_UNEXPECTED_EOF_WHILE_READING
}

pub(super) unsafe extern "C" fn on_remove_session(_ctx: *mut SSL_CTX, sess: *mut SSL_SESSION) {
    REMOVE_SESSION.guard((), || {
        let Some(cache) = installed() else { return };
        // SAFETY: OpenSSL runs this remove callback with `sess`, a session
        // it holds a reference to for the whole call; session_id only reads
        // it, and `id` is not kept past the call.
        let id = unsafe { session_id(sess) };
        if id.is_empty() {
            return;
        }
        // A session from a cluster ticket was never stored: its id is the
        // client's (TLS 1.2) or a dummy (TLS 1.3), and must not remove
        // a stored session of that id.
        // SAFETY: `sess` is the session OpenSSL holds for this call;
        // is_ticket_session only reads it.
        if unsafe { tickets::is_ticket_session(sess) } {
            return;
        }
        if removed_for_unexpected_eof() {
            if cache.verbose {
                log::info!("kept session {}.. of a connection closed without close_notify", hex(id));
            }
            return;
        }
        // SAFETY: `sess` is the session OpenSSL holds for this call;
        // is_unproven only reads its ex_data.
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
