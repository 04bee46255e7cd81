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
    // SAFETY: `sess` is a valid session for `'a` (the caller's promise: the
    // session of an OpenSSL callback in progress, or one `decode` made and
    // still owns); SSL_SESSION_get_id only reads it and points at `len`
    // bytes inside it, which live as long as the session.
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
    // SAFETY: `sess` is a valid session for `'a` (the caller's promise: the
    // session of an OpenSSL callback in progress, or one `decode` made and
    // still owns); SSL_SESSION_get0_id_context only reads it and points at
    // `len` bytes inside it, which live as long as the session.
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
    // SAFETY: `sess` is a valid session (the caller's promise: the session
    // of the connection in a new-session or info callback); with a null
    // output i2d only measures it.
    let len = unsafe { openssl_sys::i2d_SSL_SESSION(sess, std::ptr::null_mut()) };
    if len <= 0 || len as usize > max {
        return None;
    }
    let mut der = vec![0u8; len as usize];
    let mut out = der.as_mut_ptr();
    // SAFETY: `der` holds exactly `len` bytes, what i2d measured for this
    // same session, which only this thread uses meanwhile; i2d writes that
    // many bytes at `out` (the start of `der`).
    let written = unsafe { openssl_sys::i2d_SSL_SESSION(sess, &mut out) };
    (written == len).then_some(der)
}

/// Decodes a stored session, checking that it is the one asked for.
pub(super) fn decode(der: &[u8], id: &[u8]) -> Option<*mut SSL_SESSION> {
    let mut p = der.as_ptr();
    // SAFETY: d2i reads at most `der.len()` bytes from `p`.
    let sess = unsafe { openssl_sys::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        // SAFETY: ERR_clear_error has no precondition: it empties this
        // thread's error queue, where d2i may have left errors that would
        // surface in the router's next SSL call.
        unsafe { openssl_sys::ERR_clear_error() };
        return None;
    }
    // SAFETY: `sess` was just made by d2i (not null, checked): valid, and
    // its only reference is ours.
    if unsafe { session_id(sess) } != id {
        // SAFETY: `sess` came from d2i above and was handed to nobody: ours
        // is its only reference, dropped here once.
        unsafe { openssl_sys::SSL_SESSION_free(sess) };
        return None;
    }
    Some(sess)
}
