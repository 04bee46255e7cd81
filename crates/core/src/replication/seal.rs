//! Sealed datagrams: authenticated, encrypted and replay-proof replication.
//!
//! A sealed datagram carries a plain frame (the stock format of
//! [`super::wire`]) encrypted with AES-256-GCM through the host's OpenSSL:
//!
//! ```text
//! 0  u8    'S'             |
//! 1  u8    version = 1     |
//! 2  u32   key id          |  authenticated data (big endian)
//! 6  u64   sender id       |
//! 14 u64   sequence        |
//! 22 u64   timestamp, ms   |
//! 30       ciphertext of the plain frame
//! end-16   GCM tag
//! ```
//!
//! Nonces never repeat: each sender (a node, for the life of its process
//! image) draws a random 64-bit id at startup and seals with a key derived
//! for that id (HMAC-SHA256 of the configured key); the nonce is the
//! sequence number, taken from a counter in shared memory that all router
//! processes of the node increment. A restart draws a new id, hence a new
//! derived key.
//!
//! The receiver keeps, per sender, the highest sequence seen and a window
//! of the last [`WINDOW`] sequences: a replay or a sequence older than the
//! window is rejected. Timestamps further than the allowed clock skew from
//! the receiver's clock are rejected. A receiver that restarts has forgotten
//! the windows: the first datagram it accepts from a sender must be stamped
//! after it started, and every sequence older than that first one counts
//! as seen, so that nothing captured before its restart replays.
//! Checks run in that order: the tag first (nothing unauthenticated touches
//! any state), then the clock, then the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use super::keys::Key;

use super::wire::SEALED_MAGIC as MAGIC;
pub const VERSION: u8 = 1;
const HEADER: usize = 30;
const TAG: usize = 16;
/// Sequences remembered per sender, behind its highest.
pub const WINDOW: u64 = 4096;
/// Senders remembered; the least recently heard is forgotten beyond this.
const MAX_SENDERS: usize = 4096;

/// Why a sealed datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// Too short, or not a sealed datagram of a known version.
    Malformed,
    /// Sealed with a key this node does not hold.
    UnknownKey,
    /// The tag does not verify: altered, or made without the key.
    Forged,
    /// Timestamp outside the allowed clock skew.
    Stale,
    /// A sequence number already accepted from this sender (or older than
    /// the first one heard from it).
    Replayed,
    /// A sequence number older than the window, or a first datagram from a
    /// sender stamped before this receiver started (its window is unknown).
    TooOld,
    /// Sealed by this node itself: its own datagram sent back (a reflection
    /// by someone on the path, or multicast loopback and Redis echoing it).
    Own,
}

/// The key a sender id seals with.
fn sender_key(key: &Key, sender: u64) -> [u8; 32] {
    let pkey = PKey::hmac(key.bytes()).expect("HMAC key");
    let mut signer = Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).expect("HMAC-SHA256");
    signer.update(b"sslcache v1 sender key\0").expect("HMAC update");
    signer.update(&sender.to_be_bytes()).expect("HMAC update");
    let mut out = [0u8; 32];
    out.copy_from_slice(&signer.sign_to_vec().expect("HMAC"));
    out
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// An AES-256-GCM context holding the expanded key, reused for every
/// datagram (only the nonce changes): making one per datagram costs more
/// than the encryption itself.
struct Gcm {
    ctx: CipherCtx,
}

impl Gcm {
    fn new(key: &[u8; 32]) -> Gcm {
        let mut ctx = CipherCtx::new().expect("cipher context");
        ctx.encrypt_init(Some(Cipher::aes_256_gcm()), Some(key), None)
            .expect("AES-256-GCM key");
        Gcm { ctx }
    }

    /// Appends the ciphertext of `plain` and the tag to `out`, whose bytes
    /// so far are the authenticated header.
    fn seal(&mut self, seq: u64, out: &mut Vec<u8>, plain: &[u8]) {
        let ctx = &mut self.ctx;
        ctx.encrypt_init(None, None, Some(&nonce(seq))).expect("GCM nonce");
        ctx.cipher_update(out, None).expect("GCM header");
        ctx.cipher_update_vec(plain, out).expect("GCM encrypt");
        ctx.cipher_final_vec(out).expect("GCM final");
        let mut tag = [0u8; TAG];
        ctx.tag(&mut tag).expect("GCM tag");
        out.extend_from_slice(&tag);
    }

    /// The plaintext, if `tag` authenticates `header` and `ciphertext`.
    fn open(&mut self, seq: u64, header: &[u8], ciphertext: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
        let ctx = &mut self.ctx;
        ctx.decrypt_init(None, None, Some(&nonce(seq))).ok()?;
        ctx.cipher_update(header, None).ok()?;
        let mut plain = Vec::with_capacity(ciphertext.len() + TAG);
        ctx.cipher_update_vec(ciphertext, &mut plain).ok()?;
        ctx.set_tag(tag).ok()?;
        ctx.cipher_final_vec(&mut plain).ok()?;
        Some(plain)
    }
}

impl Gcm {
    /// Frees the context, key schedule included (OpenSSL clears it), for
    /// an empty one.
    fn forget(&mut self) {
        if let Ok(empty) = CipherCtx::new() {
            self.ctx = empty;
        }
    }
}

fn gcm_for_opening(key: &[u8; 32]) -> Gcm {
    let mut ctx = CipherCtx::new().expect("cipher context");
    ctx.decrypt_init(Some(Cipher::aes_256_gcm()), Some(key), None)
        .expect("AES-256-GCM key");
    Gcm { ctx }
}

/// Seals frames of one node (shared by its router processes; each process
/// has its own copy of the context after fork, the lock is uncontended).
pub struct Sealer {
    key_id: u32,
    sender: u64,
    gcm: Mutex<Gcm>,
}

impl Sealer {
    /// A sealer for this process image: a fresh random sender id.
    pub fn new(key: &Key) -> Sealer {
        let mut id = [0u8; 8];
        openssl::rand::rand_bytes(&mut id).expect("OpenSSL random bytes");
        Self::with_sender(key, u64::from_be_bytes(id))
    }

    pub fn with_sender(key: &Key, sender: u64) -> Sealer {
        let mut derived = sender_key(key, sender);
        let gcm = Gcm::new(&derived);
        super::keys::wipe(&mut derived);
        Sealer {
            key_id: key.id,
            sender,
            gcm: Mutex::new(gcm),
        }
    }

    pub fn sender(&self) -> u64 {
        self.sender
    }

    /// In a process that must hold no key (forked for the application,
    /// nobody else running): drops the derived key's context. Sealing
    /// fails from then on. False if the context was busy.
    pub fn forget(&self) -> bool {
        match self.gcm.try_lock() {
            Ok(mut gcm) => gcm.forget(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().forget(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
        true
    }

    /// Seals `frame` with the next sequence of `seq` (shared memory) at
    /// `now_ms`, into `out`.
    pub fn seal(&self, frame: &[u8], seq: &AtomicU64, now_ms: u64, out: &mut Vec<u8>) {
        let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
        out.clear();
        out.push(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        self.gcm.lock().unwrap_or_else(|e| e.into_inner()).seal(seq, out, frame);
    }
}

/// What a receiver remembers of one sending node: its opening context
/// and its replay window.
struct PeerWindow {
    gcm: Gcm,
    key_id: u32,
    highest: u64,
    /// Bit i: sequence `highest - i` was accepted.
    seen: Vec<u64>,
    last_heard: u64,
}

impl PeerWindow {
    /// Accepts `seq` once; Err if replayed or too old.
    fn accept(&mut self, seq: u64) -> Result<(), SealError> {
        if seq > self.highest {
            let shift = seq - self.highest;
            shift_window(&mut self.seen, shift);
            self.highest = seq;
            set_bit(&mut self.seen, 0);
            return Ok(());
        }
        let age = self.highest - seq;
        if age >= WINDOW {
            return Err(SealError::TooOld);
        }
        if get_bit(&self.seen, age) {
            return Err(SealError::Replayed);
        }
        set_bit(&mut self.seen, age);
        Ok(())
    }
}

fn get_bit(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] >> (i % 64) & 1 == 1
}

fn set_bit(bits: &mut [u64], i: u64) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

/// Moves every bit `shift` places towards older ages.
fn shift_window(bits: &mut [u64], shift: u64) {
    if shift >= WINDOW {
        bits.iter_mut().for_each(|w| *w = 0);
        return;
    }
    let (words, rem) = ((shift / 64) as usize, (shift % 64) as u32);
    for i in (0..bits.len()).rev() {
        let hi = if i >= words { bits[i - words] } else { 0 };
        let lo = if i > words { bits[i - words - 1] } else { 0 };
        bits[i] = if rem == 0 { hi } else { hi << rem | lo >> (64 - rem) };
    }
}

/// Opens sealed datagrams for one node (its receiver threads).
pub struct Opener {
    keys: Vec<Key>,
    /// Largest accepted distance between a datagram's timestamp and now.
    max_skew_ms: u64,
    /// When this receiver started (unix ms): no sender window before it.
    started_ms: u64,
    windows: Mutex<HashMap<u64, PeerWindow>>,
    /// This node's own sender id: what it sealed is never taken back.
    own_sender: Option<u64>,
}

impl Opener {
    /// Refuses datagrams sealed under `sender` (this node's [`Sealer`]).
    pub fn refusing_own(mut self, sender: u64) -> Opener {
        self.own_sender = Some(sender);
        self
    }

    /// An opener that started at `started_ms` (unix ms).
    pub fn new(keys: Vec<Key>, max_skew_secs: u64, started_ms: u64) -> Opener {
        Opener {
            keys,
            max_skew_ms: max_skew_secs * 1000,
            started_ms,
            windows: Mutex::new(HashMap::new()),
            own_sender: None,
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// As [`Sealer::forget`]: drops the contexts of every sender heard of
    /// (the keys themselves are in key pages, see `keys`).
    pub fn forget(&self) -> bool {
        match self.windows.try_lock() {
            Ok(mut windows) => windows.clear(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clear(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
        true
    }

    /// Verifies and decrypts a sealed datagram kept as a record (Redis):
    /// the tag only, no clock or window, which a record outlives (it is as
    /// old as its session) and which only guard live datagrams against
    /// replay; the caller checks that the record is where it belongs and
    /// not expired. Touches no sender's state.
    pub fn open_record(&self, datagram: &[u8]) -> Result<Vec<u8>, SealError> {
        if datagram.len() < HEADER + TAG + 1 || datagram[0] != MAGIC || datagram[1] != VERSION {
            return Err(SealError::Malformed);
        }
        let key_id = u32::from_be_bytes(datagram[2..6].try_into().expect("4 bytes"));
        let sender = u64::from_be_bytes(datagram[6..14].try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(datagram[14..22].try_into().expect("8 bytes"));
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or(SealError::UnknownKey)?;
        let (header, rest) = datagram.split_at(HEADER);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
        let mut derived = sender_key(key, sender);
        let mut gcm = gcm_for_opening(&derived);
        super::keys::wipe(&mut derived);
        let frame = gcm.open(seq, header, ciphertext, tag).ok_or(SealError::Forged)?;
        if seq == 0 {
            return Err(SealError::Malformed);
        }
        Ok(frame)
    }

    /// Verifies, decrypts and checks freshness of `datagram` at `now_ms`;
    /// returns the plain frame it carries.
    pub fn open(&self, datagram: &[u8], now_ms: u64) -> Result<Vec<u8>, SealError> {
        if datagram.len() < HEADER + TAG + 1 || datagram[0] != MAGIC || datagram[1] != VERSION {
            return Err(SealError::Malformed);
        }
        let word = |at: usize| u64::from_be_bytes(datagram[at..at + 8].try_into().expect("8 bytes"));
        let key_id = u32::from_be_bytes(datagram[2..6].try_into().expect("4 bytes"));
        let (sender, seq, stamp) = (word(6), word(14), word(22));
        if self.own_sender == Some(sender) {
            return Err(SealError::Own);
        }
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or(SealError::UnknownKey)?;
        let (header, rest) = datagram.split_at(HEADER);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);

        let mut senders = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = None;
        let gcm = match senders.get_mut(&sender).filter(|s| s.key_id == key_id) {
            Some(known) => &mut known.gcm,
            None => {
                let mut derived = sender_key(key, sender);
                let gcm = gcm_for_opening(&derived);
                super::keys::wipe(&mut derived);
                fresh.insert(gcm)
            }
        };
        let frame = gcm.open(seq, header, ciphertext, tag).ok_or(SealError::Forged)?;
        // Authentic from here on.
        if stamp.abs_diff(now_ms) > self.max_skew_ms {
            return Err(SealError::Stale);
        }
        if seq == 0 {
            return Err(SealError::Malformed);
        }
        if stamp < self.started_ms && !senders.contains_key(&sender) {
            return Err(SealError::TooOld);
        }
        if senders.len() >= MAX_SENDERS && !senders.contains_key(&sender) {
            if let Some(oldest) = senders.iter().min_by_key(|(_, s)| s.last_heard).map(|(id, _)| *id) {
                senders.remove(&oldest);
            }
        }
        let state = match senders.entry(sender) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let state = e.into_mut();
                state.accept(seq)?;
                state
            }
            // A sender heard of for the first time: nothing older than this
            // datagram can be told apart from a replay, so all of it counts
            // as seen.
            std::collections::hash_map::Entry::Vacant(e) => e.insert(PeerWindow {
                gcm: fresh.take().expect("a new sender got a fresh context"),
                key_id,
                highest: seq,
                seen: vec![u64::MAX; (WINDOW / 64) as usize],
                last_heard: 0,
            }),
        };
        if let Some(gcm) = fresh {
            // The sender rotated keys: same sequence space, new derived key.
            state.key_id = key_id;
            state.gcm = gcm;
        }
        state.last_heard = now_ms;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key(b: u8) -> Key {
        Key::new([b; 32])
    }

    fn sealed(sealer: &Sealer, seq: &AtomicU64, frame: &[u8], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(frame, seq, at, &mut out);
        out
    }

    #[test]
    fn opens_what_it_sealed_and_hides_the_frame() {
        let sealer = Sealer::new(&key(1));
        let opener = Opener::new(vec![key(1)], 30, 0);
        let seq = AtomicU64::new(0);
        let frame = b"session-id-0123456789 and a master secret".to_vec();
        let d = sealed(&sealer, &seq, &frame, NOW);
        assert!(
            !d.windows(10).any(|w| frame.windows(10).any(|f| f == w)),
            "plaintext in the datagram"
        );
        assert_eq!(opener.open(&d, NOW + 5).unwrap(), frame);
    }

    #[test]
    fn its_own_datagrams_sent_back_are_refused_and_a_peers_still_open() {
        let own = Sealer::new(&key(1));
        let peer = Sealer::new(&key(1));
        let opener = Opener::new(vec![key(1)], 30, 0).refusing_own(own.sender());
        let seq = AtomicU64::new(0);
        for _ in 0..3 {
            let reflected = sealed(&own, &seq, b"a session this node made", NOW);
            assert_eq!(opener.open(&reflected, NOW + 1), Err(SealError::Own));
        }
        let from_peer = sealed(&peer, &AtomicU64::new(0), b"a peer's session", NOW);
        assert_eq!(opener.open(&from_peer, NOW + 1).unwrap(), b"a peer's session");
    }

    #[test]
    fn every_forgery_is_refused() {
        let sealer = Sealer::new(&key(1));
        let opener = Opener::new(vec![key(1)], 30, 0);
        let seq = AtomicU64::new(0);
        let good = sealed(&sealer, &seq, b"frame bytes", NOW);
        // A bit flipped anywhere: header fields, ciphertext, tag.
        for byte in 0..good.len() {
            for bit in [0, 3, 7] {
                let mut d = good.clone();
                d[byte] ^= 1 << bit;
                let e = opener.open(&d, NOW).unwrap_err();
                let expected = match byte {
                    0 | 1 => SealError::Malformed,
                    2..=5 => SealError::UnknownKey,
                    _ => SealError::Forged,
                };
                assert_eq!(e, expected, "byte {byte} bit {bit}");
            }
        }
        // Truncated at every length.
        for len in 0..good.len() {
            assert!(opener.open(&good[..len], NOW).is_err(), "truncated to {len}");
        }
        // Wrong key, same id space: another opener with another key.
        let other = Opener::new(vec![key(2)], 30, 0);
        assert_eq!(other.open(&good, NOW), Err(SealError::UnknownKey));
        // A forger who knows the key id but not the key.
        let forger = Sealer::with_sender(&Key::claiming(key(1).id, [9; 32]), 42);
        assert_eq!(
            opener.open(&sealed(&forger, &AtomicU64::new(0), b"evil", NOW), NOW),
            Err(SealError::Forged)
        );
        // Nothing refused above made state: the real datagram still opens.
        assert!(opener.open(&good, NOW).is_ok());
    }

    #[test]
    fn replays_old_and_stale_datagrams_are_refused() {
        let sealer = Sealer::new(&key(1));
        let opener = Opener::new(vec![key(1)], 30, 0);
        let seq = AtomicU64::new(0);
        let first = sealed(&sealer, &seq, b"one", NOW);
        let second = sealed(&sealer, &seq, b"two", NOW);
        let third = sealed(&sealer, &seq, b"three", NOW);
        assert!(opener.open(&first, NOW).is_ok());
        assert!(opener.open(&third, NOW).is_ok());
        // Out of order within the window is fine, once.
        assert!(opener.open(&second, NOW).is_ok());
        assert_eq!(opener.open(&second, NOW), Err(SealError::Replayed));
        assert_eq!(opener.open(&first, NOW), Err(SealError::Replayed));
        // Beyond the window.
        let old = sealed(&sealer, &seq, b"old", NOW);
        seq.fetch_add(WINDOW + 10, Ordering::Relaxed);
        assert!(opener.open(&sealed(&sealer, &seq, b"new", NOW), NOW).is_ok());
        assert_eq!(opener.open(&old, NOW), Err(SealError::TooOld));
        // Clock skew: 30 s tolerated, 31 s not, both ways.
        assert!(opener.open(&sealed(&sealer, &seq, b"late", NOW - 30_000), NOW).is_ok());
        assert!(opener.open(&sealed(&sealer, &seq, b"early", NOW + 30_000), NOW).is_ok());
        assert_eq!(
            opener.open(&sealed(&sealer, &seq, b"stale", NOW - 31_000), NOW),
            Err(SealError::Stale)
        );
        assert_eq!(
            opener.open(&sealed(&sealer, &seq, b"future", NOW + 31_000), NOW),
            Err(SealError::Stale)
        );
    }

    #[test]
    fn a_restarted_receiver_refuses_what_was_sealed_before_it_started() {
        let sealer = Sealer::new(&key(1));
        let seq = AtomicU64::new(0);
        let captured = sealed(&sealer, &seq, b"before", NOW - 5_000);
        let restarted = Opener::new(vec![key(1)], 30, NOW);
        assert_eq!(restarted.open(&captured, NOW), Err(SealError::TooOld));
        // What the sender seals from then on is accepted, and its window
        // then covers the older sequence.
        assert!(restarted.open(&sealed(&sealer, &seq, b"after", NOW), NOW).is_ok());
        assert_eq!(restarted.open(&captured, NOW), Err(SealError::Replayed));
    }

    #[test]
    fn keys_rotate_without_a_flag_day() {
        let (old, new) = (key(1), key(2));
        let a = Sealer::new(&old); // node holding [old, new]
        let b = Sealer::new(&new); // node holding [new, old]
        let opens_both = Opener::new(vec![old.clone(), new.clone()], 30, 0);
        let only_old = Opener::new(vec![old.clone()], 30, 0);
        let seq = AtomicU64::new(0);
        assert!(opens_both.open(&sealed(&a, &seq, b"a", NOW), NOW).is_ok());
        assert!(opens_both.open(&sealed(&b, &seq, b"b", NOW), NOW).is_ok());
        assert!(only_old.open(&sealed(&a, &seq, b"a", NOW), NOW).is_ok());
        assert_eq!(
            only_old.open(&sealed(&b, &seq, b"b", NOW), NOW),
            Err(SealError::UnknownKey)
        );
    }

    #[test]
    fn window_shifts_keep_recent_bits() {
        let mut bits = vec![0u64; (WINDOW / 64) as usize];
        set_bit(&mut bits, 0);
        set_bit(&mut bits, 70);
        shift_window(&mut bits, 65);
        assert!(get_bit(&bits, 65) && get_bit(&bits, 135));
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        shift_window(&mut bits, WINDOW);
        assert!(bits.iter().all(|&w| w == 0));
    }
}
