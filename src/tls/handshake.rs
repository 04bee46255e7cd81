//! The callbacks that follow a connection: the ClientHello callback tags
//! it (its listener, the server name asked for: a [`Conn`]), the info
//! callback sees its handshake progress, and the ex_data free hook runs
//! when OpenSSL frees it.
//!
//! **Timing.** In a TLS 1.2 full handshake OpenSSL calls the new-session
//! callback only after the server's Finished is written: a client that
//! reconnects at once could reach another router process first. The info
//! callback stores the session as soon as the client's Finished has been
//! verified, before the server's Finished goes out.
//!
//! The free hook marks a connection freed without close_notify shut down,
//! so that OpenSSL keeps its session (see the removals in
//! [`super::sessions`]).

use std::ffi::{c_int, c_long, c_uchar, c_void};
use std::sync::atomic::Ordering;

use openssl_sys::SSL;

use sslcache_core::boundary::Boundary;
use sslcache_core::client_hello::{self, ServerName};

use super::connection::{conn, is_unproven, set_unproven, Conn, CONN_INDEX};
use super::contexts::prepare_runtime_context;
use super::sessions::store_session;
use super::{bump, installed, tickets, SessionCache};
use crate::ffi;

/// The panic boundary of each callback: a panic is logged once and
/// answered with "no session" / "nothing done".
static CLIENT_HELLO: Boundary = Boundary::new("the client hello callback");
static SSL_FREE: Boundary = Boundary::new("the connection free hook");
static INFO: Boundary = Boundary::new("the info callback");

pub(super) unsafe extern "C" fn on_client_hello(ssl: *mut SSL, _alert: *mut c_int, _arg: *mut c_void) -> c_int {
    CLIENT_HELLO.guard((), || {
        let (Some(cache), index) = (installed(), CONN_INDEX.load(Ordering::Relaxed)) else {
            return;
        };
        // SAFETY: `ssl` is the connection OpenSSL runs this ClientHello
        // callback for, alive for the call; SSL_get_SSL_CTX only reads it
        // (before SNI, its context is the listener's).
        let ctx = unsafe { openssl_sys::SSL_get_SSL_CTX(ssl) } as usize;
        let Some(listener) = cache.listeners.iter().find(|l| l.ctx == ctx) else {
            return;
        };
        let mut ext: *const c_uchar = std::ptr::null();
        let mut len: usize = 0;
        // SAFETY: `ssl` is in its ClientHello callback, the only time
        // SSL_client_hello_get0_ext may be called; it writes the locals `ext`
        // and `len`, pointing `ext` into the ClientHello being processed.
        let asked = if unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl, 0, &mut ext, &mut len) } == 1 {
            // SAFETY: OpenSSL returned 1: `len` readable bytes at `ext`,
            // inside the ClientHello, alive until this callback returns; the
            // slice does not outlive parse_server_name.
            client_hello::parse_server_name(unsafe { std::slice::from_raw_parts(ext, len) })
        } else {
            ServerName::Absent
        };
        // SAFETY: `ssl` is this callback's connection, alive and driven by
        // this thread, and no Conn reference of an earlier callback of it
        // survives; a second ClientHello (after a HelloRetryRequest) finds
        // the Conn of the first.
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
                // SAFETY: `ssl` is this callback's live connection and
                // `index` the index ensure_indexes made before the callback
                // was set (hook_listener). The Box goes to the slot: its free
                // hook, on_ssl_free, drops it when OpenSSL frees the
                // connection. on_info is an `extern "C"` fn of this .so, which
                // uWSGI never unloads.
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
/// of a connection not shut down: see the removals in [`super::sessions`].
pub(super) unsafe extern "C" fn on_ssl_free(
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
        // SAFETY: OpenSSL calls this free hook with the SSL being freed,
        // still intact, on the thread freeing it; setting the shutdown flags
        // only changes an int in it. `data` is the slot's value, not null
        // (checked): the Box<Conn> leaked by on_client_hello, freed exactly
        // once, here (OpenSSL calls the hook once per connection and index).
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
            // SAFETY: `ssl` is the connection OpenSSL runs this info callback
            // for, on the thread driving it; SSL_get_session returns its
            // current session (or null, which is_unproven checks), held by
            // the connection for the whole callback.
            unsafe {
                let sess = openssl_sys::SSL_get_session(ssl);
                if is_unproven(sess) {
                    set_unproven(sess, false);
                }
            }
            // SAFETY: `ssl` is this info callback's connection, alive for the
            // call and driven by this thread, as handshake_done requires.
            unsafe { tickets::handshake_done(cache, ssl) };
            if cache.quickack {
                // SAFETY: `ssl` is this info callback's connection, alive for
                // the call and driven by this thread, as push_final_ack
                // requires.
                unsafe { push_final_ack(ssl) };
            }
            return;
        }
        if what != ffi::SSL_CB_ACCEPT_LOOP {
            return;
        }
        // SAFETY: `ssl` is this info callback's connection, alive for the
        // call; SSL_get_state only reads it.
        match unsafe { ffi::SSL_get_state(ssl) } {
            // The ClientHello is processed (SNI switch done), the
            // ServerHello is next: a context made at run time is set up
            // here, before its first session needs it.
            // SAFETY: `ssl` is this info callback's connection, alive and
            // driven by this thread, as prepare_runtime_context requires.
            ffi::TLS_ST_SR_CLNT_HELLO => unsafe { prepare_runtime_context(cache, ssl) },
            // Write side, right after the client's Finished verified.
            // SAFETY: `ssl` is this info callback's connection, alive and
            // driven by this thread, as store_early requires.
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
    // SAFETY: `ssl` is a live connection driven by this thread (the
    // caller's promise: its info callback calls this); the three calls only
    // read it.
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

/// Stores a TLS 1.2 session as soon as the client's Finished verified.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
unsafe fn store_early(cache: &SessionCache, ssl: *mut SSL) {
    // SAFETY: `ssl` is the connection of the info callback that calls this,
    // alive and driven by this thread (the caller's promise); SSL_get_session
    // returns its current session (null checked), which the connection holds
    // for the callback: what conn and store_session require.
    unsafe {
        if openssl_sys::SSL_session_reused(ssl) != 0 || openssl_sys::SSL_version(ssl) >= openssl_sys::TLS1_3_VERSION {
            return;
        }
        // Each reference to the Conn lives for one statement: store_session
        // takes one of its own.
        let Some(stored_early) = conn(ssl).map(|c| c.stored_early) else {
            return;
        };
        let sess = openssl_sys::SSL_get_session(ssl);
        if sess.is_null() || stored_early {
            return;
        }
        if store_session(cache, ssl, sess) {
            if let Some(conn) = conn(ssl) {
                conn.stored_early = true;
            }
            bump(&cache.counters.get().stored_early);
        }
    }
}
