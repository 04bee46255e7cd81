//! Session id contexts derived from what a TLS context enforces.
//!
//! OpenSSL's only check on a looked-up session is its session id context,
//! so sslcache gives every session the fingerprint of the context that made
//! it and resumes it only where the fingerprint is the same. As nginx does
//! (`ngx_ssl_session_id_context`), the fingerprint hashes the operator's
//! context string with the server certificate and the client-verification
//! policy: verify mode and depth, the client CA names sent to clients and
//! the certificates trusted to verify them. Nodes with the same
//! configuration and certificates derive the same fingerprints (sessions
//! move between them); contexts that differ in any of these never share a
//! session. SHA-256 gives exactly the 32 bytes a session id context holds:
//! derived, never truncated.

use std::ffi::{c_int, c_uint};

use openssl::sha::Sha256;
use openssl_sys::{SSL, SSL_CTX, X509};

use super::ffi;

/// Bytes of a fingerprint (`SSL_MAX_SID_CTX_LENGTH`).
pub const LEN: usize = 32;
pub type Fingerprint = [u8; LEN];

/// What the verification policy of a connection is, besides its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verify {
    pub mode: c_int,
    pub depth: c_int,
}

impl Verify {
    /// The policy a context gives the connections it starts.
    ///
    /// # Safety
    /// `ctx` must be a valid `SSL_CTX`.
    pub unsafe fn of_ctx(ctx: *const SSL_CTX) -> Verify {
        // SAFETY: `ctx` is a valid SSL_CTX (the caller's promise: a
        // listener context uWSGI made, in `jail`, or an SNI context read
        // from uWSGI's table during a callback, alive meanwhile); both
        // getters only read it.
        unsafe {
            Verify {
                mode: openssl_sys::SSL_CTX_get_verify_mode(ctx),
                depth: ffi::SSL_CTX_get_verify_depth(ctx),
            }
        }
    }

    /// The policy in force on a connection (uWSGI's SNI callback may have
    /// copied it from the SNI context).
    ///
    /// # Safety
    /// `ssl` must be a valid connection.
    pub unsafe fn of_ssl(ssl: *const SSL) -> Verify {
        // SAFETY: `ssl` is a valid connection (the caller's promise: the
        // connection of an OpenSSL callback in progress, on this thread);
        // both getters only read it.
        unsafe {
            Verify {
                mode: openssl_sys::SSL_get_verify_mode(ssl),
                depth: ffi::SSL_get_verify_depth(ssl),
            }
        }
    }

    pub fn checks_clients(&self) -> bool {
        self.mode & openssl_sys::SSL_VERIFY_PEER != 0
    }
}

/// SHA-256 of a certificate's DER, zeros for none.
///
/// # Safety
/// `cert` must be null or a valid certificate.
unsafe fn cert_digest(cert: *const X509) -> [u8; 32] {
    let mut out = [0u8; 32];
    if cert.is_null() {
        return out;
    }
    let mut len: c_uint = 0;
    // SAFETY: `cert` is not null (checked) and valid (the caller's promise:
    // a certificate of a live context, read from it just before); `out`
    // holds the 32 bytes SHA-256 writes, `len` is a local.
    let ok = unsafe { openssl_sys::X509_digest(cert, openssl_sys::EVP_sha256(), out.as_mut_ptr(), &mut len) };
    if ok != 1 || len != 32 {
        // SAFETY: drops the error X509_digest may have queued.
        unsafe { openssl_sys::ERR_clear_error() };
        out = [0xff; 32];
    }
    out
}

/// What a context contributes: its certificate, the client CA names it
/// sends, and the certificates it trusts to verify clients.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` whose certificate, CA list and trust
/// store no thread changes meanwhile (uWSGI sets them when it makes the
/// context and never again).
pub unsafe fn context_digest(ctx: *const SSL_CTX) -> [u8; 32] {
    let mut h = Sha256::new();
    // SAFETY: `ctx` is a valid SSL_CTX whose certificate, CA list and trust
    // store no thread changes meanwhile (the caller's promise: uWSGI sets
    // them when it makes the context, never again). Every call below only
    // reads them; each pointer read from them (certificate, names, store,
    // objects) is checked for null and used only while `ctx` holds it, and
    // `der` holds the `len` bytes i2d measured.
    unsafe {
        h.update(&cert_digest(openssl_sys::SSL_CTX_get0_certificate(ctx)));
        let names = ffi::SSL_CTX_get_client_CA_list(ctx).cast::<openssl_sys::OPENSSL_STACK>();
        let count = if names.is_null() {
            0
        } else {
            openssl_sys::OPENSSL_sk_num(names).max(0)
        };
        h.update(&(count as u32).to_be_bytes());
        for i in 0..count {
            let name = openssl_sys::OPENSSL_sk_value(names, i).cast::<openssl_sys::X509_NAME>();
            let len = openssl_sys::i2d_X509_NAME(name, std::ptr::null_mut());
            if len <= 0 {
                continue;
            }
            let mut der = vec![0u8; len as usize];
            let mut out = der.as_mut_ptr();
            openssl_sys::i2d_X509_NAME(name, &mut out);
            h.update(&(len as u32).to_be_bytes());
            h.update(&der);
        }
        {
            let store = openssl_sys::SSL_CTX_get_cert_store(ctx);
            let objects = if store.is_null() {
                std::ptr::null_mut()
            } else {
                openssl_sys::X509_STORE_get0_objects(store)
            };
            let mut trusted: Vec<[u8; 32]> = Vec::new();
            let count = if objects.is_null() {
                0
            } else {
                openssl_sys::OPENSSL_sk_num(objects.cast()).max(0)
            };
            for i in 0..count {
                let object = openssl_sys::OPENSSL_sk_value(objects.cast(), i).cast::<openssl_sys::X509_OBJECT>();
                let cert = openssl_sys::X509_OBJECT_get0_X509(object);
                if !cert.is_null() {
                    trusted.push(cert_digest(cert));
                }
            }
            // The store's order is its own business: the set counts.
            trusted.sort_unstable();
            h.update(&(trusted.len() as u32).to_be_bytes());
            trusted.iter().for_each(|d| h.update(d));
        }
    }
    h.finish()
}

/// The fingerprint of sessions made under `context` (the operator's
/// session context string, or uWSGI's default for the listener) by a
/// context whose [`context_digest`] is `digest`, with policy `verify`.
pub fn fingerprint(context: &[u8], digest: &[u8; 32], verify: Verify) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"sslcache session context v1\0");
    h.update(&(context.len() as u32).to_be_bytes());
    h.update(context);
    h.update(digest);
    h.update(&verify.mode.to_be_bytes());
    // The depth only matters when clients are verified.
    let depth = if verify.checks_clients() { verify.depth } else { 0 };
    h.update(&depth.to_be_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Verify = Verify { mode: 0, depth: 9 };
    const REQUIRE: Verify = Verify { mode: 3, depth: 9 };

    #[test]
    fn every_input_counts() {
        let base = fingerprint(b"foobar", &[1; 32], NONE);
        assert_eq!(base, fingerprint(b"foobar", &[1; 32], NONE));
        assert_ne!(base, fingerprint(b"foobaz", &[1; 32], NONE));
        assert_ne!(base, fingerprint(b"foobar", &[2; 32], NONE));
        assert_ne!(base, fingerprint(b"foobar", &[1; 32], REQUIRE));
        assert_ne!(
            fingerprint(b"foobar", &[1; 32], REQUIRE),
            fingerprint(b"foobar", &[1; 32], Verify { mode: 3, depth: 1 })
        );
        // Without client verification the depth is not a policy.
        assert_eq!(base, fingerprint(b"foobar", &[1; 32], Verify { mode: 0, depth: 1 }));
    }

    #[test]
    fn long_default_contexts_do_not_collide() {
        // uWSGI's defaults cut "http-" + address to its last 32 bytes, so
        // these two were the same context.
        let a = b"http-[fd00:0001:0000:0000:1234:5678:9abc:def0]:8443";
        let b = b"http-[fd00:0002:0000:0000:1234:5678:9abc:def0]:8443";
        assert_eq!(a[a.len() - 32..], b[b.len() - 32..]);
        assert_ne!(fingerprint(a, &[1; 32], NONE), fingerprint(b, &[1; 32], NONE));
    }
}
