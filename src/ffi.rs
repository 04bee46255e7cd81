//! C declarations and constants that neither uWSGI's generated bindings nor
//! openssl-sys nor the libc crate provide, in one place, each with where it
//! comes from. The OpenSSL ones exist in 1.1.1 and 3.x (the
//! host's libssl). The core crate's own (glibc) ones are in
//! `sslcache_core::os`.

use std::ffi::{c_char, c_int, c_long, c_uchar, c_uint, c_void};

use openssl_sys::{EVP_CIPHER_CTX, EVP_MAC_CTX, OSSL_PARAM, SSL, SSL_CTX, SSL_SESSION, X509};

// uWSGI's functions (uwsgi.h), called through addresses found with dlsym
// (`host::symbols`): the bindings hold types only, the plugin links no
// uWSGI symbol.

/// `void uwsgi_log(const char *fmt, ...)`.
pub type LogFn = unsafe extern "C" fn(*const c_char, ...);
/// `uwsgi_regexp_match(pcre *, pcre_extra *, char *subject, int len)` up to
/// uWSGI 2.0.2x; build.rs tells which from the bindings.
#[cfg(uwsgi_regexp = "split")]
pub type RegexpMatch = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_char, c_int) -> c_int;
/// `uwsgi_regexp_match(uwsgi_pcre *, const char *subject, int len)` since.
#[cfg(uwsgi_regexp = "wrapped")]
pub type RegexpMatch = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
/// `void uwsgi_add_safe_fd(int fd)` (core/io.c): a descriptor uWSGI's reload
/// keeps open.
pub type AddSafeFdFn = unsafe extern "C" fn(c_int);
/// `struct uwsgi_gateway *register_gateway(char *name, void (*loop)(int id,
/// void *data), void *data)` (core/gateway.c): a process the master forks
/// after the hooks and forks again whenever it dies; `name` is kept.
pub type RegisterGatewayFn =
    unsafe extern "C" fn(*mut c_char, Option<unsafe extern "C" fn(c_int, *mut c_void)>, *mut c_void) -> *mut c_void;
/// `uwsgi_register_metric(name, oid, type, collector, ptr, freq, custom)`
/// (core/metrics.c, since 1.9.19).
pub type RegisterMetricFn =
    unsafe extern "C" fn(*mut c_char, *mut c_char, u8, *mut c_char, *mut c_void, u32, *mut c_void) -> *mut c_void;

// OpenSSL (<openssl/ssl.h>).
extern "C" {
    pub fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
    pub fn SSL_CTX_set_generate_session_id(
        ctx: *mut SSL_CTX,
        cb: Option<unsafe extern "C" fn(*const SSL, *mut c_uchar, *mut c_uint) -> c_int>,
    ) -> c_int;
    pub fn SSL_CTX_get_verify_depth(ctx: *const SSL_CTX) -> c_int;
    /// Returns a `STACK_OF(X509_NAME)`.
    pub fn SSL_CTX_get_client_CA_list(ctx: *const SSL_CTX) -> *mut c_void;
    pub fn SSL_get_verify_depth(ssl: *const SSL) -> c_int;
    /// `uint64_t` in OpenSSL 3, `unsigned long` in 1.1.1: the same on LP64.
    pub fn SSL_set_options(ssl: *mut SSL, options: u64) -> u64;
    pub fn SSL_set_session_id_context(ssl: *mut SSL, sid: *const c_uchar, len: c_uint) -> c_int;
    pub fn SSL_set_info_callback(ssl: *mut SSL, cb: Option<unsafe extern "C" fn(*const SSL, c_int, c_int)>);
    /// Returns an `OSSL_HANDSHAKE_STATE`.
    pub fn SSL_get_state(ssl: *const SSL) -> c_int;
    pub fn SSL_get_fd(ssl: *const SSL) -> c_int;
    pub fn SSL_SESSION_get0_id_context(s: *const SSL_SESSION, len: *mut c_uint) -> *const c_uchar;
    pub fn SSL_SESSION_set1_id_context(s: *mut SSL_SESSION, sid: *const c_uchar, len: c_uint) -> c_int;
    pub fn SSL_SESSION_set1_hostname(s: *mut SSL_SESSION, hostname: *const c_char) -> c_int;
    pub fn SSL_SESSION_get0_peer(s: *mut SSL_SESSION) -> *mut X509;
    pub fn SSL_SESSION_set_ex_data(s: *mut SSL_SESSION, idx: c_int, data: *mut c_void) -> c_int;
    pub fn SSL_SESSION_get_ex_data(s: *const SSL_SESSION, idx: c_int) -> *mut c_void;
    pub fn SSL_SESSION_set_timeout(s: *mut SSL_SESSION, t: c_long) -> c_long;
}

// Session tickets (<openssl/ssl.h>, <openssl/tls1.h>, OpenSSL 3: the _evp_
// variant hands an EVP_MAC_CTX; the older one is a deprecated macro).

/// `SSL_CTX_set_tlsext_ticket_key_evp_cb`'s callback: `enc` 1 to make a
/// ticket (fill `key_name` and `iv`, initialise both contexts; 1 = made, 0 =
/// none), 0 to open one (1 = opened, 2 = opened and renew, 0 = not ours).
pub type TicketKeyEvpCb =
    unsafe extern "C" fn(*mut SSL, *mut c_uchar, *mut c_uchar, *mut EVP_CIPHER_CTX, *mut EVP_MAC_CTX, c_int) -> c_int;
/// `SSL_CTX_generate_session_ticket_fn`: before a ticket is made (0 aborts
/// the handshake).
pub type GenerateTicketCb = unsafe extern "C" fn(*mut SSL, *mut c_void) -> c_int;
/// `SSL_CTX_decrypt_session_ticket_fn`: after a ticket was opened (or not),
/// with its session and status; returns an `SSL_TICKET_RETURN`.
pub type DecryptTicketCb =
    unsafe extern "C" fn(*mut SSL, *mut SSL_SESSION, *const c_uchar, usize, c_int, *mut c_void) -> c_int;

extern "C" {
    pub fn SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx: *mut SSL_CTX, cb: Option<TicketKeyEvpCb>) -> c_int;
    pub fn SSL_CTX_set_session_ticket_cb(
        ctx: *mut SSL_CTX,
        gen_cb: Option<GenerateTicketCb>,
        dec_cb: Option<DecryptTicketCb>,
        arg: *mut c_void,
    ) -> c_int;
    pub fn SSL_SESSION_set1_ticket_appdata(s: *mut SSL_SESSION, data: *const c_void, len: usize) -> c_int;
    pub fn SSL_SESSION_get0_ticket_appdata(s: *mut SSL_SESSION, data: *mut *mut c_void, len: *mut usize) -> c_int;
    /// <openssl/params.h>; `bsize` 0: the length of the NUL-terminated `buf`.
    pub fn OSSL_PARAM_construct_utf8_string(key: *const c_char, buf: *mut c_char, bsize: usize) -> OSSL_PARAM;
}

/// `SSL_TICKET_STATUS` values passed to the decrypt callback.
pub const SSL_TICKET_EMPTY: c_int = 3;
pub const SSL_TICKET_NO_DECRYPT: c_int = 4;
pub const SSL_TICKET_SUCCESS: c_int = 5;
pub const SSL_TICKET_SUCCESS_RENEW: c_int = 6;
/// `SSL_TICKET_RETURN` values of the decrypt callback: do not use the
/// ticket and send a new one; use it; use it and send a new one.
pub const SSL_TICKET_RETURN_IGNORE_RENEW: c_int = 2;
pub const SSL_TICKET_RETURN_USE: c_int = 3;
pub const SSL_TICKET_RETURN_USE_RENEW: c_int = 4;
/// `TLSEXT_KEYNAME_LENGTH` (ssl/ssl_local.h): bytes of a ticket's key name;
/// OpenSSL's tickets carry a 16-byte IV after it.
pub const TLSEXT_KEYNAME_LENGTH: usize = 16;
pub const TICKET_IV_LENGTH: usize = 16;

/// `UWSGI_HTTP_SSL` (uWSGI plugins/http/common.h, not in uwsgi.h): the mode
/// of an `https` gateway socket.
pub const UWSGI_HTTP_SSL: i32 = 1;

/// `RTLD_DL_SYMENT` (glibc <dlfcn.h>): `dladdr1` returns the ELF symbol.
pub const RTLD_DL_SYMENT: c_int = 1;
/// `NT_GNU_BUILD_ID` (<elf.h>): the note type of a GNU build-id.
pub const NT_GNU_BUILD_ID: u32 = 3;

/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (ssl/sslerr.h, OpenSSL 3).
pub const SSL_R_UNEXPECTED_EOF_WHILE_READING: c_int = 294;
/// `ERR_LIB_SSL` (openssl/err.h).
pub const ERR_LIB_SSL: c_int = 20;
/// `SSL_CTRL_GET_SESS_CACHE_MODE` (openssl/ssl.h): the control behind the
/// `SSL_CTX_get_session_cache_mode` macro.
pub const SSL_CTRL_GET_SESS_CACHE_MODE: c_int = 45;
/// `CRYPTO_EX_INDEX_SSL_SESSION` (openssl/crypto.h): the class of
/// `SSL_SESSION_get_ex_new_index`, a macro over CRYPTO_get_ex_new_index.
pub const CRYPTO_EX_INDEX_SSL_SESSION: c_int = 2;
/// `SSL_CB_ACCEPT_LOOP` and `SSL_CB_HANDSHAKE_DONE` (openssl/ssl.h).
pub const SSL_CB_ACCEPT_LOOP: c_int = 0x2001;
pub const SSL_CB_HANDSHAKE_DONE: c_int = 0x20;
/// `OSSL_HANDSHAKE_STATE` values (openssl/ssl.h): the server has read the
/// ClientHello; it has read the client's Finished.
pub const TLS_ST_SR_CLNT_HELLO: c_int = 20;
pub const TLS_ST_SR_FINISHED: c_int = 32;
