//! Return routability for sync messages: a node answers only addresses that
//! proved they receive what is sent to them, and answers nobody faster than
//! a rate.
//!
//! A datagram's source address can be forged, and a stopped peer's address
//! taken. As DTLS (`HelloVerifyRequest`) and QUIC (`Retry`) do, a node gives
//! each address it hears from a **cookie**: a keyed hash of that address and
//! the current epoch, under a secret drawn at startup, so nothing is kept
//! per address. Every sync message carries, as its proof, the cookie its
//! recipient gave the sender, and as its grant the sender's cookie for the
//! recipient (the envelope of every sync message). A message whose proof does not
//! verify is not acted on: it is answered with a `Cookie` message (no
//! larger than itself) to the address it names, and only at a bounded rate
//! per address and in all. Only the holder of the address sees that
//! answer, so only it can go on. Cookies last one to two epochs; every
//! message a peer acts on brings a fresh grant back.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher24;

/// How long a cookie is minted for; it verifies for one epoch more.
pub const EPOCH_SECS: u64 = 60;

/// Mints and verifies this node's cookies.
pub struct Cookies {
    keys: (u64, u64),
}

impl Cookies {
    /// With a secret of 128 random bits.
    pub fn new() -> Cookies {
        let mut secret = [0u8; 16];
        // A failed draw would leave cookies guessable: no cookies then, so
        // that no answer larger than a question goes anywhere.
        if openssl::rand::rand_bytes(&mut secret).is_err() {
            log::error!("no random bytes for the sync cookies: warm start and repair answer nobody");
            return Cookies { keys: (0, 0) };
        }
        let (a, b) = secret.split_at(8);
        Cookies {
            keys: (
                u64::from_ne_bytes(a.try_into().expect("8 bytes")),
                u64::from_ne_bytes(b.try_into().expect("8 bytes")),
            ),
        }
    }

    #[cfg(test)]
    fn with_keys(a: u64, b: u64) -> Cookies {
        Cookies { keys: (a, b) }
    }

    fn at(&self, addr: &SocketAddr, epoch: u64) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.keys.0, self.keys.1);
        h.write_u64(epoch);
        match addr.ip() {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
        h.write_u16(addr.port());
        // Never 0, which says "no cookie".
        h.finish() | 1
    }

    /// The cookie for `addr` now.
    pub fn mint(&self, addr: &SocketAddr, now_secs: u64) -> u64 {
        if self.keys == (0, 0) {
            return 0;
        }
        self.at(addr, now_secs / EPOCH_SECS)
    }

    /// Whether `cookie` is one this node gave `addr` in this epoch or the
    /// one before.
    pub fn verify(&self, addr: &SocketAddr, cookie: u64, now_secs: u64) -> bool {
        if cookie == 0 || self.keys == (0, 0) {
            return false;
        }
        let epoch = now_secs / EPOCH_SECS;
        cookie == self.at(addr, epoch) || (epoch > 0 && cookie == self.at(addr, epoch - 1))
    }
}

impl Default for Cookies {
    fn default() -> Self {
        Cookies::new()
    }
}

/// A token bucket: `per_sec` a second, at most `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    per_sec: u64,
    burst: u64,
    /// Thousandths of a token.
    millis: u64,
    refilled_ms: u64,
}

impl Bucket {
    pub fn new(per_sec: u64, burst: u64, now_ms: u64) -> Bucket {
        Bucket {
            per_sec,
            burst,
            millis: burst * 1000,
            refilled_ms: now_ms,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.millis = (self.millis + elapsed * self.per_sec).min(self.burst * 1000);
        self.refilled_ms = now_ms;
        if self.millis >= 1000 {
            self.millis -= 1000;
            true
        } else {
            false
        }
    }
}

/// A token bucket per address, for a bounded number of addresses (beyond
/// it, addresses not heard from lately are forgotten; while all are
/// recent, a new address gets nothing).
pub struct PerAddress {
    per_sec: u64,
    burst: u64,
    buckets: HashMap<SocketAddr, Bucket>,
}

/// Addresses a [`PerAddress`] keeps.
const MAX_ADDRESSES: usize = 4096;

impl PerAddress {
    pub fn new(per_sec: u64, burst: u64) -> PerAddress {
        PerAddress {
            per_sec,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `addr`'s bucket if there is one.
    pub fn take(&mut self, addr: SocketAddr, now_ms: u64) -> bool {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= MAX_ADDRESSES {
            // A full bucket refills in burst / per_sec seconds: older ones
            // are as good as new.
            let full_ms = self.burst * 1000 / self.per_sec.max(1);
            self.buckets
                .retain(|_, b| now_ms.saturating_sub(b.refilled_ms) < full_ms);
            if self.buckets.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets
            .entry(addr)
            .or_insert_with(|| Bucket::new(per_sec, burst, now_ms))
            .take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn cookies_verify_for_their_address_and_two_epochs_only() {
        let c = Cookies::with_keys(1, 2);
        let a: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:4001".parse().unwrap();
        let cookie = c.mint(&a, NOW);
        assert_ne!(cookie, 0);
        assert!(c.verify(&a, cookie, NOW));
        assert!(c.verify(&a, cookie, NOW + EPOCH_SECS));
        assert!(!c.verify(&a, cookie, NOW + 2 * EPOCH_SECS));
        assert!(!c.verify(&b, cookie, NOW));
        assert!(!c.verify(&a, 0, NOW));
        assert!(!c.verify(&a, cookie ^ 2, NOW));
        // Another node's secret: another cookie.
        assert!(!Cookies::with_keys(1, 3).verify(&a, cookie, NOW));
        let fresh = Cookies::new();
        assert!(fresh.verify(&a, fresh.mint(&a, NOW), NOW));
        assert!(!fresh.verify(&a, cookie, NOW));
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = Bucket::new(10, 2, 0);
        assert!(b.take(0) && b.take(0));
        assert!(!b.take(0));
        assert!(!b.take(50));
        assert!(b.take(100));
        assert!(!b.take(100));
        // Idle for long: no more than the burst.
        assert!(b.take(10_000) && b.take(10_000) && !b.take(10_000));
    }

    #[test]
    fn per_address_buckets_are_separate_and_bounded() {
        let mut p = PerAddress::new(1, 1);
        let a: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:4000".parse().unwrap();
        assert!(p.take(a, 0));
        assert!(!p.take(a, 0));
        assert!(p.take(b, 0));
        for port in 0..MAX_ADDRESSES as u16 {
            p.take(SocketAddr::new(a.ip(), 10_000 + port), 10);
        }
        // Full of recent addresses: a new one waits.
        assert!(!p.take("127.0.0.9:1".parse().unwrap(), 10));
        // A second later all are full again: forgotten, the new one is heard.
        assert!(p.take("127.0.0.9:1".parse().unwrap(), 2_000));
    }
}
