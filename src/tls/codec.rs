//! A session's DER encoding, both ways, and what is read off a session:
//! its id and its session id context.

use std::ffi::{c_long, c_uint};

use openssl_sys::SSL_SESSION;

use crate::ffi;

/// The id of a session.
///
/// # Safety
/// `sess` must be a valid session for the lifetime `'a`.
pub(super) unsafe fn session_id<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
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
pub(super) unsafe fn session_context<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
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
pub(super) unsafe fn encode(sess: *mut SSL_SESSION, max: usize) -> Option<Vec<u8>> {
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
pub(super) fn decode(der: &[u8], id: &[u8]) -> Option<*mut SSL_SESSION> {
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
