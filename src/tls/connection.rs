//! What a connection carries from its ClientHello to its end (a [`Conn`]
//! behind an SSL ex_data slot), and the "resumed, not yet proven" mark a
//! session carries (SSL_SESSION ex_data): the indexes, made once per
//! process image, and their accessors.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, Ordering};

use openssl_sys::{SSL, SSL_SESSION};

use sslcache_core::client_hello::ServerName;

use super::handshake::on_ssl_free;
use super::{tickets, Listener};
use crate::ffi;

/// What a connection carries from its ClientHello to its end, behind an
/// SSL ex_data slot (freed by [`on_ssl_free`]).
pub(super) struct Conn {
    pub(super) listener: &'static Listener,
    /// The server name its (last) ClientHello asked for.
    pub(super) asked: ServerName,
    /// Its TLS 1.2 session was stored at the client's Finished.
    pub(super) stored_early: bool,
    /// The session found by the first lookup, for the second ClientHello
    /// of a HelloRetryRequest, which looks the same id up again.
    pub(super) last_lookup: Option<(Vec<u8>, Vec<u8>)>,
    /// Cluster tickets: what the callbacks of one ticket tell each other.
    pub(super) ticket: tickets::TicketState,
}

/// SSL ex_data index of the connection's [`Conn`]; SSL_SESSION ex_data
/// index of the "resumed, not yet proven" mark; -1 until created.
pub(super) static CONN_INDEX: AtomicI32 = AtomicI32::new(-1);
pub(super) static UNPROVEN_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Creates the ex_data indexes (once per process image).
pub(super) fn ensure_indexes() -> Result<(), String> {
    if CONN_INDEX.load(Ordering::Relaxed) >= 0 {
        return Ok(());
    }
    // SAFETY: no pointer is passed but the free hook, `on_ssl_free`, an
    // `extern "C"` fn with OpenSSL's CRYPTO_EX_free signature, in this .so,
    // which uWSGI never unloads.
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
pub(super) unsafe fn conn<'a>(ssl: *const SSL) -> Option<&'a mut Conn> {
    let index = CONN_INDEX.load(Ordering::Relaxed);
    if index < 0 || ssl.is_null() {
        return None;
    }
    // SAFETY: `ssl` is not null (checked) and alive, used by this thread
    // only (the caller's promise: every caller is an OpenSSL callback for
    // this connection, on the thread driving it). `index` is the index
    // ensure_indexes made (>= 0, checked); its slot holds null or the
    // Box<Conn> on_client_hello put there, freed only by on_ssl_free when
    // OpenSSL frees the connection, so the Conn outlives the callback that
    // borrows it. Callers hold the reference they get no longer than the
    // calls that cannot take another (store_early lets go of its own before
    // store_session takes one), so no two are alive at once.
    unsafe { openssl_sys::SSL_get_ex_data(ssl, index).cast::<Conn>().as_mut() }
}

/// Marks (or clears) a session handed to a resumption whose client has not
/// yet proven that it knows the session's secrets.
///
/// # Safety
/// `sess` must be a valid session.
pub(super) unsafe fn set_unproven(sess: *mut SSL_SESSION, unproven: bool) {
    let index = UNPROVEN_INDEX.load(Ordering::Relaxed);
    if index >= 0 && !sess.is_null() {
        // SAFETY: `sess` is not null (checked) and valid (the caller's
        // promise: the session admit is handing to OpenSSL, or the current
        // session of the connection in an info callback); `index` is the
        // index ensure_indexes made, with no free or dup hook; the value is
        // 0 or 1 cast to a pointer, never dereferenced.
        unsafe { ffi::SSL_SESSION_set_ex_data(sess, index, unproven as usize as *mut c_void) };
    }
}

/// # Safety
/// `sess` must be a valid session.
pub(super) unsafe fn is_unproven(sess: *const SSL_SESSION) -> bool {
    let index = UNPROVEN_INDEX.load(Ordering::Relaxed);
    // SAFETY: `sess` is not null (checked first) and valid (the caller's
    // promise: the session of the OpenSSL callback in progress); `index` is
    // ensure_indexes's (>= 0, checked first); get_ex_data only reads the
    // session's table.
    index >= 0 && !sess.is_null() && !unsafe { ffi::SSL_SESSION_get_ex_data(sess, index) }.is_null()
}
