//! Session replication between nodes over UDP.
//!
//! A router process that stores a new session sends it to every peer
//! ([`net::Sender`], non-blocking, drops counted); a receiver thread in each
//! node's master decodes what arrives ([`wire`]) and applies it to the local
//! store ([`Applier`]). Expiry travels as an absolute unix time; a session
//! that arrives expired is ignored, and the local timeout caps any remote
//! expiry.

pub mod addr;
pub mod net;
pub mod wire;

use crate::stats::ReplicationCounters;
use crate::store::{Insert, Store};
use wire::{Format, Frame, FrameLimits, WireError};

/// What one datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Stored,
    Removed,
    /// A delete of a session this node does not have.
    Absent,
    /// Expired before it arrived.
    Stale,
    /// Well formed, but the store did not take it (too big, lock busy).
    NotStored,
    Rejected(WireError),
}

/// Applies peers' datagrams to the local store.
pub struct Applier<'a> {
    pub store: &'a Store,
    /// Session lifetime here, seconds: caps remote expiries.
    pub timeout: u32,
    pub counters: &'a ReplicationCounters,
}

impl Applier<'_> {
    pub fn limits(&self) -> FrameLimits {
        let l = self.store.limits();
        FrameLimits {
            max_key: l.keysize as usize,
            max_value: l.blocksize as usize,
        }
    }

    /// Decodes and applies one datagram received at `now` (unix seconds).
    pub fn apply(&self, datagram: &[u8], now: u64) -> Applied {
        ReplicationCounters::bump(&self.counters.received);
        let decoded = match Format::of(datagram) {
            Format::Plain => wire::decode_plain(datagram, self.limits()),
            Format::Unknown(_) => Err(WireError::BadModifier),
        };
        let outcome = match decoded {
            Err(e) => Applied::Rejected(e),
            Ok(frame) => self.apply_frame(frame, now),
        };
        let counter = match outcome {
            Applied::Stored => &self.counters.applied,
            Applied::Removed => &self.counters.removed,
            Applied::Absent => return outcome,
            Applied::Stale => &self.counters.stale,
            Applied::NotStored => &self.counters.not_stored,
            Applied::Rejected(_) => &self.counters.rejected,
        };
        ReplicationCounters::bump(counter);
        outcome
    }

    fn apply_frame(&self, frame: Frame<'_>, now: u64) -> Applied {
        match frame {
            Frame::Set { key, value, expires } => {
                let local_limit = now + self.timeout as u64;
                let expires = match expires {
                    0 => local_limit,
                    e if e <= now => return Applied::Stale,
                    e => e.min(local_limit),
                };
                match self.store.insert(key, value, expires, now) {
                    Insert::Stored { .. } => Applied::Stored,
                    Insert::Expired => Applied::Stale,
                    Insert::TooBig | Insert::Busy => Applied::NotStored,
                }
            }
            Frame::Delete { key } => match self.store.remove(key, now) {
                Some(true) => Applied::Removed,
                Some(false) => Applied::Absent,
                None => Applied::NotStored,
            },
        }
    }
}

/// Encodes a stored session for peers.
pub fn encode_set(key: &[u8], value: &[u8], expires: u64, out: &mut Vec<u8>) -> Result<(), WireError> {
    wire::encode_plain(&Frame::Set { key, value, expires }, out)
}

/// Encodes a removal for peers.
pub fn encode_delete(key: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    wire::encode_plain(&Frame::Delete { key }, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SharedCounters;
    use crate::store::{Limits, Lookup};
    use std::sync::atomic::Ordering;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (Store, SharedCounters) {
        let store = Store::create(Limits {
            capacity: 100,
            keysize: 64,
            blocksize: 1024,
        })
        .unwrap();
        (store, SharedCounters::create().unwrap())
    }

    fn set(key: &[u8], value: &[u8], expires: u64) -> Vec<u8> {
        let mut d = Vec::new();
        encode_set(key, value, expires, &mut d).unwrap();
        d
    }

    #[test]
    fn applies_sets_and_deletes_with_expiry_policy() {
        let (store, counters) = setup();
        let a = Applier {
            store: &store,
            timeout: 300,
            counters: counters.get(),
        };
        assert_eq!(a.apply(&set(b"k1", b"v1", NOW + 100), NOW), Applied::Stored);
        // No expiry from a stock sender: the local timeout.
        assert_eq!(a.apply(&set(b"k2", b"v2", 0), NOW), Applied::Stored);
        // A remote expiry beyond the local timeout is capped.
        assert_eq!(a.apply(&set(b"k3", b"v3", NOW + 100_000), NOW), Applied::Stored);
        assert_eq!(a.apply(&set(b"old", b"v", NOW - 1), NOW), Applied::Stale);
        assert_eq!(a.apply(&set(b"now", b"v", NOW), NOW), Applied::Stale);
        let mut out = Vec::new();
        assert_eq!(store.get(b"k1", NOW, &mut out), Lookup::Hit { expires: NOW + 100 });
        assert_eq!(store.get(b"k2", NOW, &mut out), Lookup::Hit { expires: NOW + 300 });
        assert_eq!(store.get(b"k3", NOW, &mut out), Lookup::Hit { expires: NOW + 300 });
        assert_eq!(store.get(b"old", NOW, &mut out), Lookup::Miss);

        let mut d = Vec::new();
        encode_delete(b"k1", &mut d).unwrap();
        assert_eq!(a.apply(&d, NOW), Applied::Removed);
        assert_eq!(a.apply(&d, NOW), Applied::Absent);
        assert_eq!(store.get(b"k1", NOW, &mut out), Lookup::Miss);

        let c = counters.get();
        assert_eq!(c.received.load(Ordering::Relaxed), 7);
        assert_eq!(c.applied.load(Ordering::Relaxed), 3);
        assert_eq!(c.stale.load(Ordering::Relaxed), 2);
        assert_eq!(c.removed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rejects_and_counts_bad_datagrams_without_touching_the_store() {
        let (store, counters) = setup();
        let a = Applier {
            store: &store,
            timeout: 300,
            counters: counters.get(),
        };
        let good = set(b"key", b"value", NOW + 10);
        let mut bad = vec![
            vec![],
            vec![0x53, 1, 2, 3],
            good[..good.len() - 2].to_vec(),
            set(&[7; 65], b"v", NOW + 10),
            set(b"k", &[7; 1025], NOW + 10),
        ];
        let mut flipped = good.clone();
        flipped[3] = 99;
        bad.push(flipped);
        for d in &bad {
            assert!(matches!(a.apply(d, NOW), Applied::Rejected(_)), "{d:?}");
        }
        assert!(store.is_empty());
        assert_eq!(counters.get().rejected.load(Ordering::Relaxed), bad.len() as u64);
    }
}
