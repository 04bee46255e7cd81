//! Cluster tickets (`ssl-sessions-tickets = cluster`): OpenSSL's session
//! tickets, with keys every node derives from the cluster key
//! ([`sslcache_core::tickets`]), so that a ticket made on any node resumes
//! on any other node of the cluster, and nowhere else.
//!
//! Three OpenSSL callbacks on each listener context (OpenSSL makes and
//! opens tickets with the callbacks of the connection's first context, the
//! listener's, whatever SNI switches to):
//!
//! - the generate callback ([`on_generate`]), right before a ticket is
//!   made: gives the session the fingerprint of the context that serves the
//!   connection (as a stored session gets), the time the client was first
//!   authenticated (a full handshake's; kept along a resumption chain, in
//!   the ticket's appdata), and a lifetime that never takes the chain past
//!   that time + the ticket lifetime (RFC 8446 §4.6.1);
//! - the key callback ([`on_ticket_key`]): to make a ticket, the keys of the
//!   current epoch for that fingerprint; to open one, the keys its key name
//!   names, derived for the fingerprint of where the connection lands (the
//!   same [`super::admit::landing`] check as stored sessions, made before SNI
//!   switches the context) — so a ticket made for another fingerprint
//!   cannot even be decrypted; refused key names are counted;
//! - the decrypt callback ([`on_decrypt`]), with the opened session: checks
//!   its fingerprint and age once more, points OpenSSL and uWSGI's SNI at
//!   the context that was checked ([`super::admit::land_here`]), and counts what
//!   did not open (forged, truncated).
//!
//! Nothing of this touches the store: TLS 1.2 clients that send the ticket
//! extension get a ticket and no session id (OpenSSL gives such sessions
//! none), TLS 1.3 tickets are stateless, and resumptions by ticket store
//! nothing; so they cause no replication at all.

use std::ffi::{c_int, c_uchar, c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use openssl_sys::{EVP_CIPHER, EVP_CIPHER_CTX, EVP_MAC_CTX, SSL, SSL_CTX, SSL_SESSION};

use sslcache_core::boundary::Boundary;
use sslcache_core::clock::unix_secs;
use sslcache_core::tickets::{self, Material, Refused};

use super::admit::{land_here, landing};
use super::codec::session_context;
use super::connection::conn;
use super::fingerprint::{Fingerprint, Verify};
use super::{bump, hex, installed, SessionCache};
use crate::ffi;

/// What the ticket callbacks of one connection tell each other.
#[derive(Default)]
pub struct TicketState {
    /// Set by the generate callback for the key callback: the fingerprint
    /// the ticket about to be made is for (`None`: make none).
    issue_for: Option<Fingerprint>,
    /// Set by the key callback for the decrypt callback: the key name
    /// opened, for this fingerprint.
    opened: Option<Opened>,
    /// The key callback refused (and counted) the ticket being opened.
    counted: bool,
    /// A refusal was counted on this connection: a HelloRetryRequest makes
    /// OpenSSL open the same ticket again for the second ClientHello.
    refusal_counted: bool,
    /// The handshake resumes a ticket's session.
    resuming: bool,
}

struct Opened {
    fp: Fingerprint,
    renew: bool,
    ahead: bool,
}

static GENERATE: Boundary = Boundary::new("the ticket generate callback");
static TICKET_KEY: Boundary = Boundary::new("the ticket key callback");
static DECRYPT: Boundary = Boundary::new("the ticket decrypt callback");

/// AES-256-CBC, fetched once (OpenSSL 3 fetches an implementation by name
/// at every initialisation otherwise).
static AES_256_CBC: AtomicUsize = AtomicUsize::new(0);

fn aes_256_cbc() -> *const EVP_CIPHER {
    let cached = AES_256_CBC.load(Ordering::Relaxed);
    if cached != 0 {
        return cached as *const EVP_CIPHER;
    }
    // SAFETY: fetches the default provider's implementation; the reference
    // is kept for the life of the process (never freed).
    let fetched =
        unsafe { openssl_sys::EVP_CIPHER_fetch(std::ptr::null_mut(), c"AES-256-CBC".as_ptr(), std::ptr::null()) };
    if fetched.is_null() {
        // SAFETY: drops the error of the failed fetch; the legacy constant
        // is always valid.
        unsafe {
            openssl_sys::ERR_clear_error();
            return openssl_sys::EVP_aes_256_cbc();
        }
    }
    AES_256_CBC.store(fetched as usize, Ordering::Relaxed);
    fetched
}

/// Turns tickets on for a listener context, with the cluster callbacks.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX` no other thread uses yet.
pub(super) unsafe fn hook(ctx: *mut SSL_CTX) -> Result<(), String> {
    aes_256_cbc();
    // SAFETY: `ctx` is a valid SSL_CTX no other thread uses yet (the
    // caller's promise: hook_listener, from the master's `jail` before any
    // fork); these calls set its options and callbacks, `extern "C"` fns of
    // this .so, which uWSGI never unloads.
    unsafe {
        openssl_sys::SSL_CTX_clear_options(ctx, openssl_sys::SSL_OP_NO_TICKET as _);
        if ffi::SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, Some(on_ticket_key)) != 1
            || ffi::SSL_CTX_set_session_ticket_cb(ctx, Some(on_generate), Some(on_decrypt), std::ptr::null_mut()) != 1
        {
            openssl_sys::ERR_clear_error();
            return Err("OpenSSL refused the session ticket callbacks".into());
        }
    }
    Ok(())
}

/// The authentication time a session's ticket appdata carries, if the
/// session came from (or is going into) a cluster ticket.
///
/// # Safety
/// `sess` must be a valid session.
unsafe fn authenticated_at(sess: *mut SSL_SESSION) -> Option<u64> {
    let mut data: *mut c_void = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: `sess` is a valid session (the caller's promise: the session
    // of a remove, generate or decrypt callback in progress); OpenSSL points
    // `data` into it (or at null, checked) at `len` bytes valid while the
    // session is, and the slice lives only for this call.
    unsafe {
        if ffi::SSL_SESSION_get0_ticket_appdata(sess, &mut data, &mut len) != 1 || data.is_null() {
            return None;
        }
        tickets::authenticated_at(std::slice::from_raw_parts(data.cast::<u8>(), len))
    }
}

/// Whether `sess` is a session from a cluster ticket (never stored).
///
/// # Safety
/// `sess` must be a valid session.
pub(super) unsafe fn is_ticket_session(sess: *mut SSL_SESSION) -> bool {
    // SAFETY: `sess` is a valid session (the caller's promise: the one
    // OpenSSL passed to the remove callback that calls this).
    installed().is_some_and(|c| c.tickets.is_some()) && unsafe { authenticated_at(sess) }.is_some()
}

/// Counts a refused ticket, once per connection.
fn count_refusal(state: &mut TicketState, counter: &std::sync::atomic::AtomicU64) {
    if !std::mem::replace(&mut state.refusal_counted, true) {
        bump(counter);
    }
}

/// Counts a resumption by ticket when the handshake is done.
///
/// # Safety
/// `ssl` must be a live connection driven by this thread.
pub(super) unsafe fn handshake_done(cache: &SessionCache, ssl: *mut SSL) {
    // SAFETY: `ssl` is the connection of the info callback that calls this,
    // alive and driven by this thread (the caller's promise), as conn
    // requires.
    let Some(conn) = (unsafe { conn(ssl) }) else { return };
    if std::mem::take(&mut conn.ticket.resuming) {
        // SAFETY: `ssl` is that same live connection; SSL_session_reused
        // only reads it.
        if unsafe { openssl_sys::SSL_session_reused(ssl) } == 1 {
            bump(&cache.counters.get().tickets_resumed);
        }
    }
}

unsafe extern "C" fn on_generate(ssl: *mut SSL, _arg: *mut c_void) -> c_int {
    // 0 would abort the handshake: never.
    GENERATE.guard(1, || {
        let Some(cache) = installed() else { return 1 };
        let Some(keys) = &cache.tickets else { return 1 };
        // SAFETY: OpenSSL passes the live connection, driven by this thread.
        let Some(conn) = (unsafe { conn(ssl) }) else { return 1 };
        conn.ticket.issue_for = None;
        // SAFETY: `ssl` is this callback's live connection, driven by this
        // thread; SSL_get_session returns its current session (null
        // checked), the one about to go into the ticket, which only this
        // connection holds; its context is alive while the connection holds
        // it, as fingerprint_of requires; the id context and appdata set on
        // the session are copied.
        unsafe {
            let sess = openssl_sys::SSL_get_session(ssl);
            if sess.is_null() {
                return 1;
            }
            // The context that serves the connection now (after SNI), and
            // its policy: where the ticket may resume.
            let made = cache.fingerprint_of(conn.listener, openssl_sys::SSL_get_SSL_CTX(ssl), Verify::of_ssl(ssl));
            if ffi::SSL_SESSION_set1_id_context(sess, made.as_ptr(), made.len() as c_uint) != 1 {
                openssl_sys::ERR_clear_error();
                return 1;
            }
            let now = unix_secs();
            // A resumed session keeps its chain's first authentication; a
            // new one (or one from the store) was authenticated when made.
            let authenticated =
                authenticated_at(sess).unwrap_or_else(|| openssl_sys::SSL_SESSION_get_time(sess).max(0) as u64);
            let lifetime = tickets::remaining(authenticated, now, keys.schedule().lifetime);
            if lifetime == 0 {
                if cache.verbose {
                    log::info!("no ticket: the client's first authentication is older than the ticket lifetime");
                }
                return 1;
            }
            ffi::SSL_SESSION_set_timeout(sess, lifetime as _);
            let appdata = tickets::appdata(authenticated);
            if ffi::SSL_SESSION_set1_ticket_appdata(sess, appdata.as_ptr().cast(), appdata.len()) != 1 {
                openssl_sys::ERR_clear_error();
                return 1;
            }
            conn.ticket.issue_for = Some(made);
        }
        1
    })
}

/// Sets up the ticket's cipher and MAC contexts with `m`'s keys and `iv`.
///
/// # Safety
/// `cctx` and `hctx` must be the contexts OpenSSL passed to the key
/// callback; `iv` must hold [`ffi::TICKET_IV_LENGTH`] bytes.
unsafe fn init_contexts(
    m: &Material<'_>,
    iv: *const c_uchar,
    cctx: *mut EVP_CIPHER_CTX,
    hctx: *mut EVP_MAC_CTX,
    encrypt: bool,
) -> bool {
    let mut digest = *b"SHA256\0";
    // SAFETY: `cctx` and `hctx` are the contexts OpenSSL passed to the key
    // callback for this ticket, and `iv` holds TICKET_IV_LENGTH bytes (the
    // caller's promise: on_ticket_key passes its own arguments); the
    // parameters point at the HMAC key and the digest name, which outlive
    // the call (OpenSSL copies the key, and only reads both).
    unsafe {
        let params = [
            openssl_sys::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                m.hmac.as_ptr().cast_mut().cast(),
                m.hmac.len(),
            ),
            ffi::OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
            openssl_sys::OSSL_PARAM_construct_end(),
        ];
        let cipher = aes_256_cbc();
        let ok = if encrypt {
            openssl_sys::EVP_EncryptInit_ex(cctx, cipher, std::ptr::null_mut(), m.aes.as_ptr(), iv)
        } else {
            openssl_sys::EVP_DecryptInit_ex(cctx, cipher, std::ptr::null_mut(), m.aes.as_ptr(), iv)
        } == 1
            && openssl_sys::EVP_MAC_CTX_set_params(hctx, params.as_ptr()) == 1;
        if !ok {
            openssl_sys::ERR_clear_error();
        }
        ok
    }
}

unsafe extern "C" fn on_ticket_key(
    ssl: *mut SSL,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cctx: *mut EVP_CIPHER_CTX,
    hctx: *mut EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    // 0: no ticket made / not one of ours (a full handshake).
    TICKET_KEY.guard(0, || {
        let Some(cache) = installed() else { return 0 };
        let Some(keys) = &cache.tickets else { return 0 };
        // SAFETY: OpenSSL passes the live connection, driven by this thread.
        let Some(conn) = (unsafe { conn(ssl) }) else { return 0 };
        if key_name.is_null() || iv.is_null() {
            return 0;
        }
        let now = unix_secs();
        let counters = cache.counters.get();
        if enc == 1 {
            let Some(fp) = conn.ticket.issue_for.take() else {
                return 0;
            };
            let made = keys.issue(now, &fp, |m| {
                let mut fresh_iv = [0u8; ffi::TICKET_IV_LENGTH];
                if openssl::rand::rand_bytes(&mut fresh_iv).is_err() {
                    return false;
                }
                // SAFETY: OpenSSL passes a key name buffer of
                // TLSEXT_KEYNAME_LENGTH bytes and an IV buffer of
                // EVP_MAX_IV_LENGTH (16) bytes; the contexts are the ticket's.
                unsafe {
                    std::ptr::copy_nonoverlapping(m.name.as_ptr(), key_name, ffi::TLSEXT_KEYNAME_LENGTH);
                    std::ptr::copy_nonoverlapping(fresh_iv.as_ptr(), iv, fresh_iv.len());
                    init_contexts(m, iv, cctx, hctx, true)
                }
            });
            return match made {
                Ok(true) => {
                    bump(&counters.tickets_issued);
                    1
                }
                _ => 0,
            };
        }
        conn.ticket.opened = None;
        conn.ticket.counted = false;
        // SAFETY: OpenSSL passes the ticket's first TLSEXT_KEYNAME_LENGTH
        // bytes (it checked the length first).
        let name: [u8; ffi::TLSEXT_KEYNAME_LENGTH] = unsafe {
            std::slice::from_raw_parts(key_name, ffi::TLSEXT_KEYNAME_LENGTH)
                .try_into()
                .expect("16 bytes")
        };
        // SAFETY: `ssl` is this key callback's connection, driven by this
        // thread, as landing requires.
        let Some((fp, _)) = (unsafe { landing(cache, ssl, conn) }) else {
            conn.ticket.counted = true;
            count_refusal(&mut conn.ticket, &counters.tickets_refused_context);
            return 0;
        };
        // SAFETY: OpenSSL passes the 16-byte IV that follows the key name,
        // and the ticket's contexts.
        let opened = keys.open(&name, now, &fp, |m| unsafe { init_contexts(m, iv, cctx, hctx, false) });
        match opened {
            Ok((o, true)) => {
                conn.ticket.opened = Some(Opened {
                    fp,
                    renew: o.renew,
                    ahead: o.ahead,
                });
                if o.renew {
                    2
                } else {
                    1
                }
            }
            Ok((_, false)) => {
                conn.ticket.counted = true;
                count_refusal(&mut conn.ticket, &counters.tickets_refused_forged);
                0
            }
            Err(refused) => {
                conn.ticket.counted = true;
                count_refusal(
                    &mut conn.ticket,
                    match refused {
                        Refused::WrongCluster => &counters.tickets_refused_cluster,
                        Refused::Expired => &counters.tickets_refused_expired,
                        Refused::WrongContext => &counters.tickets_refused_context,
                    },
                );
                if cache.verbose {
                    log::info!("ticket {}.. not opened here: {refused:?}", hex(&name));
                }
                0
            }
        }
    })
}

unsafe extern "C" fn on_decrypt(
    ssl: *mut SSL,
    sess: *mut SSL_SESSION,
    _key_name: *const c_uchar,
    _key_name_len: usize,
    status: c_int,
    _arg: *mut c_void,
) -> c_int {
    // Not used, and a new ticket: a full handshake.
    const REFUSE: c_int = ffi::SSL_TICKET_RETURN_IGNORE_RENEW;
    DECRYPT.guard(REFUSE, || {
        let Some(cache) = installed() else { return REFUSE };
        let Some(keys) = &cache.tickets else { return REFUSE };
        // SAFETY: OpenSSL passes the live connection, driven by this thread.
        let Some(conn) = (unsafe { conn(ssl) }) else {
            return REFUSE;
        };
        let opened = conn.ticket.opened.take();
        let counted = std::mem::take(&mut conn.ticket.counted);
        let counters = cache.counters.get();
        match status {
            ffi::SSL_TICKET_NO_DECRYPT => {
                // Not refused by its key name: it did not verify or decrypt
                // (altered, truncated, made up).
                if !counted {
                    count_refusal(&mut conn.ticket, &counters.tickets_refused_forged);
                    if cache.verbose {
                        log::info!("ticket refused: it does not verify");
                    }
                }
                REFUSE
            }
            ffi::SSL_TICKET_SUCCESS | ffi::SSL_TICKET_SUCCESS_RENEW if !sess.is_null() => {
                let Some(opened) = opened else {
                    count_refusal(&mut conn.ticket, &counters.tickets_refused_forged);
                    return REFUSE;
                };
                let now = unix_secs();
                // SAFETY: OpenSSL passes the opened session, ours to inspect
                // and adjust until it is used or freed.
                let (context_ok, authenticated, made, lifetime) = unsafe {
                    (
                        session_context(sess) == opened.fp,
                        authenticated_at(sess),
                        openssl_sys::SSL_SESSION_get_time(sess).max(0) as u64,
                        openssl_sys::SSL_SESSION_get_timeout(sess).max(0) as u64,
                    )
                };
                // Keys derive from the fingerprint: a mismatch here means a
                // ticket this code did not make. Checked all the same.
                if !context_ok {
                    count_refusal(&mut conn.ticket, &counters.tickets_refused_context);
                    return REFUSE;
                }
                let Some(authenticated) = authenticated else {
                    count_refusal(&mut conn.ticket, &counters.tickets_refused_forged);
                    return REFUSE;
                };
                let limit = keys.schedule().lifetime;
                if now > authenticated.saturating_add(limit) || now > made.saturating_add(lifetime.min(limit)) {
                    count_refusal(&mut conn.ticket, &counters.tickets_refused_expired);
                    if cache.verbose {
                        log::info!("ticket refused: expired");
                    }
                    return REFUSE;
                }
                // SAFETY: `ssl` is this decrypt callback's connection, driven
                // by this thread, and `sess` the session it is about to
                // resume, not yet shared: what land_here requires.
                unsafe { land_here(ssl, conn, sess, &opened.fp) };
                // Counted once (a HelloRetryRequest opens the ticket again).
                if !std::mem::replace(&mut conn.ticket.resuming, true) {
                    if opened.ahead {
                        bump(&counters.tickets_ahead);
                    }
                    if opened.renew {
                        bump(&counters.tickets_renewed);
                    }
                }
                // TLS 1.3: a new ticket at every resumption, as OpenSSL's
                // own keys do (clients may use each ticket once, RFC 8446
                // §C.4); it keeps the chain's first authentication time.
                // SAFETY: `sess` is the session OpenSSL opened from the
                // ticket and passed to this callback, valid for the call; the
                // getter only reads it.
                let tls13 =
                    unsafe { openssl_sys::SSL_SESSION_get_protocol_version(sess) } >= openssl_sys::TLS1_3_VERSION;
                if opened.renew || tls13 {
                    ffi::SSL_TICKET_RETURN_USE_RENEW
                } else {
                    ffi::SSL_TICKET_RETURN_USE
                }
            }
            // No ticket, or an empty one (TLS 1.2: the client asks for one).
            _ => REFUSE,
        }
    })
}
