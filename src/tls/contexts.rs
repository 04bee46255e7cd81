//! Setting contexts up for the cache.
//!
//! Every listener context gets server-side caching without OpenSSL's
//! internal cache, no session tickets (TLS 1.2 resumes by session id, TLS
//! 1.3 gets stateful tickets whose identity is the session id), the
//! configured timeout, and callbacks: `new` (store the DER session), `get`
//! (decode it back), `remove`, a ClientHello callback that tags the
//! connection, and a per-connection info callback. With cluster tickets
//! ([`super::tickets`]) tickets are on instead, with keys derived from the
//! cluster key: TLS 1.2 clients that send tickets and TLS 1.3 resume
//! statelessly, session-id clients through the store as before.

use std::ffi::{c_long, c_uint};

use openssl_sys::{SSL, SSL_CTX};

use super::connection::ensure_indexes;
use super::fingerprint::Fingerprint;
use super::handshake::on_client_hello;
use super::sessions::{on_generate_id, on_get_session, on_new_session, on_remove_session};
use super::{tickets, SessionCache};
use crate::ffi;

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
    // SAFETY: `ctx` is a valid SSL_CTX no other thread uses yet (the
    // caller's promise: `setup` passes uWSGI's listener contexts in `jail`,
    // the master's only thread, before any fork). These calls set its mode,
    // options, timeout and callbacks (`extern "C"` fns of this .so, which
    // uWSGI never unloads) and copy `sid`.
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
    // SAFETY: `ctx` is not null (checked above) and valid, and no other
    // thread uses it (the caller's promise: the master's SNI contexts in
    // `jail` before fork, or, from prepare_runtime_context, a context of a
    // process that runs handshakes on one thread). These calls read and set
    // its options and cache mode.
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

/// Sets a context uWSGI made at run time (sni-dir, subscriptions) up for
/// caching, if this process runs handshakes on one thread only; keeps
/// tickets off on the connection itself, unless cluster tickets are on.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
pub(super) unsafe fn prepare_runtime_context(cache: &SessionCache, ssl: *mut SSL) {
    // SAFETY: `ssl` is the connection of the info callback in progress,
    // driven by this thread (the caller's promise); SSL_set_options changes
    // only this connection. `ctx` is the context SNI switched it to, which
    // the connection holds; it is changed (prepare_sni_context) only in a
    // process that runs handshakes on one thread, this one, so nobody reads
    // it meanwhile.
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
