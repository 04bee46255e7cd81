//! Where a found session may resume.
//!
//! **A session resumes only where it was made.** Each session carries, as
//! its session id context, the [`fingerprint`](super::fingerprint) of the
//! context that made it (operator context string, certificate,
//! client-verification policy). In both TLS 1.2 and 1.3 OpenSSL looks the
//! session up *before* the SNI callback switches the connection to the SNI
//! host's context, so the get callback works out where uWSGI's SNI callback
//! will send the connection (from the server name in the ClientHello,
//! through the host's [`SniResolver`](super::SniResolver)) and resumes only
//! if that context's fingerprint is the session's. It then tells OpenSSL
//! (the connection's session id context) and uWSGI (the session's host
//! name, which uWSGI's SNI callback reads on a TLS 1.2 resumption) the same
//! thing, so the connection lands where it was checked. A session learnt
//! from a plain datagram ([`Origin`]) never resumes a context that verifies
//! clients and never carries a client certificate.

use std::ffi::{c_uint, CString};

use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use sslcache_core::client_hello::ServerName;
use sslcache_core::record::Origin;

use super::codec::session_context;
use super::connection::{set_unproven, Conn};
use super::fingerprint::{Fingerprint, Verify};
use super::{SessionCache, SniTarget};
use crate::ffi;

/// The fingerprint of where the connection will be served, and the policy
/// it will be served under, for the session lookup (which OpenSSL makes
/// before the SNI switch); `None` when that cannot be told.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
pub(super) unsafe fn landing(cache: &SessionCache, ssl: *mut SSL, conn: &Conn) -> Option<(Fingerprint, Verify)> {
    // SAFETY: `ssl` is the connection of the get session or ticket key
    // callback in progress, driven by this thread (the caller's promise);
    // SSL_get_SSL_CTX and Verify::of_ssl only read it. Every context handed
    // to Verify::of_ctx and fingerprint_of is alive for the whole callback:
    // the listener's (made by uWSGI at startup, never freed), the
    // connection's current one (the connection holds a reference to it), or
    // one uWSGI's SNI table holds, read as uWSGI's own SNI callback reads it
    // (host/sni.rs) to switch to it right after.
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
pub(super) enum Refusal {
    Context,
    PlainIdentity,
}

/// Checks a decoded session against where the connection lands.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread; `sess` a valid
/// session owned by the caller.
pub(super) unsafe fn admit(
    cache: &SessionCache,
    ssl: *mut SSL,
    conn: &Conn,
    sess: *mut SSL_SESSION,
    origin: Origin,
) -> Result<(), Refusal> {
    // SAFETY: `ssl` is the connection of the get session callback in
    // progress, driven by this thread, and `sess` a session that callback
    // decoded and still owns (the caller's promise): landing,
    // session_context and SSL_SESSION_get0_peer only read them; land_here and
    // set_unproven write to `sess`, which nobody else holds yet.
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
pub(super) unsafe fn land_here(ssl: *mut SSL, conn: &Conn, sess: *mut SSL_SESSION, expected: &Fingerprint) {
    let name = match &conn.asked {
        ServerName::Name(name) => CString::new(name.clone()).ok(),
        _ => None,
    };
    // SAFETY: `ssl` is the connection of the get session or decrypt callback
    // in progress, driven by this thread, and `sess` the session it is about
    // to resume, not yet shared with another thread (the caller's promise);
    // both setters copy their bytes (`expected`, and `name`, a CString alive
    // across the call, or null).
    unsafe {
        ffi::SSL_set_session_id_context(ssl, expected.as_ptr(), expected.len() as c_uint);
        ffi::SSL_SESSION_set1_hostname(sess, name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()));
    }
}
