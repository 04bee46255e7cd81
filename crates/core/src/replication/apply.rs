//! Applying peers' datagrams to the local store: decode ([`super::wire`]),
//! open when sealed ([`super::seal`]), then the expiry and tombstone policy.
//! Expiry travels as an absolute unix time; a session that arrives expired
//! is ignored, and the local timeout caps any remote expiry.

use super::counters::ReplicationCounters;
use super::names::Names;
use super::seal::{Opener, SealError};
use super::wire::{self, Format, Frame, FrameLimits, Via, WireError};
use crate::record::{self, Origin};
use crate::store::{Insert, Store};

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
    /// Pulled or repaired, but expiring before a session the store evicted
    /// for room ([`Store::evicted_until`]).
    CrowdedOut,
    Rejected(WireError),
    /// A sealed datagram that failed verification or freshness.
    Refused(SealError),
    /// A plain datagram on a node that requires sealing.
    PlainRefused,
    /// A sync message (warm start, repair): for the sync worker.
    Sync,
}

/// Applies peers' datagrams to the local store.
pub struct Applier<'a> {
    pub store: &'a Store,
    /// Session lifetime here, seconds: caps remote expiries.
    pub timeout: u32,
    pub counters: &'a ReplicationCounters,
    /// With a key: opens sealed datagrams, and plain ones are refused
    /// unless `accept_plain` (a migration).
    pub opener: Option<&'a Opener>,
    pub accept_plain: bool,
    /// How long a peer's delete keeps a session from coming back, seconds
    /// (the clock skew a sealed datagram may have: older ones are refused).
    pub tombstone_secs: u64,
}

impl Applier<'_> {
    pub fn limits(&self) -> FrameLimits {
        let l = self.store.limits();
        FrameLimits {
            max_key: l.keysize as usize,
            max_value: (l.blocksize as usize).saturating_sub(record::OVERHEAD),
        }
    }

    /// Decodes and applies one datagram received at `now_ms` (unix time in
    /// milliseconds).
    pub fn apply(&self, datagram: &[u8], now_ms: u64) -> Applied {
        self.apply_with(datagram, now_ms, |_, _| {})
    }

    /// As [`apply`](Self::apply), also showing `seen` the frame that was
    /// decoded (after opening, before applying) and where it came from.
    pub fn apply_with(&self, datagram: &[u8], now_ms: u64, seen: impl FnOnce(&Frame<'_>, Origin)) -> Applied {
        ReplicationCounters::bump(&self.counters.received);
        let outcome = self.open_and_apply(datagram, now_ms, seen);
        let counters = self.counters;
        let counter = match outcome {
            Applied::Stored => &counters.applied,
            Applied::Removed => &counters.removed,
            Applied::Absent => return outcome,
            // Its own datagram back: nothing to apply.
            Applied::Refused(SealError::Own) => &counters.own_returned,
            Applied::Sync => &counters.sync_received,
            Applied::Stale => &counters.stale,
            Applied::NotStored => &counters.not_stored,
            Applied::CrowdedOut => &counters.crowded_out,
            Applied::Rejected(_) => &counters.rejected,
            Applied::Refused(SealError::Malformed | SealError::UnknownKey | SealError::Forged) => &counters.forged,
            Applied::Refused(SealError::Replayed) => &counters.replayed,
            Applied::Refused(SealError::TooOld) => &counters.out_of_window,
            Applied::Refused(SealError::Stale) => &counters.skewed,
            Applied::PlainRefused => &counters.plain_refused,
        };
        ReplicationCounters::bump(counter);
        outcome
    }

    /// Applies a session of record read from Redis under `name` at
    /// `now_ms`: authenticated like a datagram (no replay window: a record
    /// is as old as its session), and only a set of the session that
    /// `name` belongs to (a record copied under another name is refused).
    /// Counted as `redis_loaded` / `redis_refused` / `stale`.
    pub fn apply_record(&self, value: &[u8], name: &[u8], names: &Names, now_ms: u64) -> Applied {
        let outcome = self.open_record_and_apply(value, name, names, now_ms);
        let counters = self.counters;
        match outcome {
            Applied::Stored => ReplicationCounters::bump(&counters.redis_loaded),
            Applied::Stale | Applied::Absent => ReplicationCounters::bump(&counters.stale),
            Applied::NotStored => ReplicationCounters::bump(&counters.not_stored),
            Applied::CrowdedOut => ReplicationCounters::bump(&counters.crowded_out),
            _ => ReplicationCounters::bump(&counters.redis_refused),
        }
        outcome
    }

    fn open_record_and_apply(&self, value: &[u8], name: &[u8], names: &Names, now_ms: u64) -> Applied {
        let opened;
        let (plain, origin) = match (Format::of(value), self.opener) {
            (Format::Sealed, Some(opener)) => match opener.open_record(value) {
                Ok(frame) => {
                    opened = frame;
                    (&opened[..], Origin::Sealed)
                }
                Err(e) => return Applied::Refused(e),
            },
            (Format::Plain, Some(_)) if !self.accept_plain => return Applied::PlainRefused,
            (Format::Plain, _) => (value, Origin::Plain),
            (Format::Sealed | Format::Unknown(_), _) => return Applied::Rejected(WireError::BadModifier),
        };
        match wire::decode_plain(plain, self.limits()) {
            Ok(frame @ Frame::Set { key, .. }) if names.belongs(name, key) => {
                self.apply_frame(frame, origin, now_ms / 1000)
            }
            Ok(Frame::Set { .. }) => Applied::Refused(SealError::Forged),
            Ok(_) => Applied::Rejected(WireError::BadModifier),
            Err(e) => Applied::Rejected(e),
        }
    }

    fn open_and_apply(&self, datagram: &[u8], now_ms: u64, seen: impl FnOnce(&Frame<'_>, Origin)) -> Applied {
        let now = now_ms / 1000;
        let opened;
        let (plain, origin) = match (Format::of(datagram), self.opener) {
            (Format::Sealed, Some(opener)) => match opener.open(datagram, now_ms) {
                Ok(frame) => {
                    opened = frame;
                    (&opened[..], Origin::Sealed)
                }
                Err(e) => return Applied::Refused(e),
            },
            (Format::Plain, Some(_)) if !self.accept_plain => return Applied::PlainRefused,
            (Format::Plain, _) => (datagram, Origin::Plain),
            (Format::Sealed | Format::Unknown(_), _) => return Applied::Rejected(WireError::BadModifier),
        };
        match wire::decode_plain(plain, self.limits()) {
            Ok(frame) => {
                seen(&frame, origin);
                self.apply_frame(frame, origin, now)
            }
            Err(e) => Applied::Rejected(e),
        }
    }

    fn apply_frame(&self, frame: Frame<'_>, origin: Origin, now: u64) -> Applied {
        match frame {
            Frame::Sync { .. } => Applied::Sync,
            Frame::Set {
                key,
                value,
                expires,
                via,
            } => {
                let local_limit = now + self.timeout as u64;
                let expires = match expires {
                    0 => local_limit,
                    e if e <= now => return Applied::Stale,
                    e => e.min(local_limit),
                };
                // A full store does not take back what it would have evicted
                // first: each would evict a newer session, which a peer then
                // sends back (a churn that never ends).
                if via != Via::Live && expires <= self.store.evicted_until() {
                    return Applied::CrowdedOut;
                }
                // A peer deleted it lately: this set was held back.
                match self
                    .store
                    .insert_unless(key, &record::encode(origin, value), expires, now, is_tombstone)
                {
                    Insert::Stored { replaced, .. } => {
                        // Counted when new here (several peers may answer).
                        match via {
                            Via::Live => {}
                            _ if replaced => {}
                            Via::Pulled => ReplicationCounters::bump(&self.counters.pulled),
                            Via::Repaired => ReplicationCounters::bump(&self.counters.repaired),
                        }
                        Applied::Stored
                    }
                    Insert::Expired | Insert::Kept => Applied::Stale,
                    Insert::TooBig | Insert::Busy => Applied::NotStored,
                }
            }
            // The tombstone replaces the session, or stays if one is there.
            Frame::Delete { key } => match self.store.insert_unless(
                key,
                record::TOMBSTONE,
                now + self.tombstone_secs.max(1),
                now,
                is_tombstone,
            ) {
                Insert::Stored { replaced: true, .. } => Applied::Removed,
                Insert::Stored { replaced: false, .. } | Insert::Kept => Applied::Absent,
                Insert::TooBig | Insert::Expired | Insert::Busy => Applied::NotStored,
            },
        }
    }
}

fn is_tombstone(value: &[u8]) -> bool {
    record::read(value) == Some(record::Record::Tombstone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::counters::SharedCounters;
    use crate::replication::wire::{encode_delete, encode_set};
    use crate::store::{Limits, Lookup};
    use std::sync::atomic::{AtomicU64, Ordering};

    const NOW: u64 = 1_800_000_000;
    const NOW_MS: u64 = NOW * 1000;

    fn setup() -> (Store, SharedCounters) {
        let store = Store::create(Limits {
            capacity: 100,
            keysize: 64,
            blocksize: 1024,
        })
        .unwrap();
        (store, SharedCounters::create().unwrap())
    }

    fn plain_applier<'a>(store: &'a Store, counters: &'a SharedCounters) -> Applier<'a> {
        Applier {
            store,
            timeout: 300,
            counters: counters.get(),
            opener: None,
            accept_plain: false,
            tombstone_secs: 31,
        }
    }

    fn set(key: &[u8], value: &[u8], expires: u64) -> Vec<u8> {
        let mut d = Vec::new();
        encode_set(key, value, expires, &mut d).unwrap();
        d
    }

    #[test]
    fn applies_sets_and_deletes_with_expiry_policy() {
        let (store, counters) = setup();
        let a = plain_applier(&store, &counters);
        assert_eq!(a.apply(&set(b"k1", b"v1", NOW + 100), NOW_MS), Applied::Stored);
        // No expiry from a stock sender: the local timeout.
        assert_eq!(a.apply(&set(b"k2", b"v2", 0), NOW_MS), Applied::Stored);
        // A remote expiry beyond the local timeout is capped.
        assert_eq!(a.apply(&set(b"k3", b"v3", NOW + 100_000), NOW_MS), Applied::Stored);
        assert_eq!(a.apply(&set(b"old", b"v", NOW - 1), NOW_MS), Applied::Stale);
        assert_eq!(a.apply(&set(b"now", b"v", NOW), NOW_MS), Applied::Stale);
        let mut out = Vec::new();
        assert_eq!(store.get(b"k1", NOW, &mut out), Lookup::Hit { expires: NOW + 100 });
        assert_eq!(record::decode(&out), Some((Origin::Plain, &b"v1"[..])));
        assert_eq!(store.get(b"k2", NOW, &mut out), Lookup::Hit { expires: NOW + 300 });
        assert_eq!(store.get(b"k3", NOW, &mut out), Lookup::Hit { expires: NOW + 300 });
        assert_eq!(store.get(b"old", NOW, &mut out), Lookup::Miss);

        let mut d = Vec::new();
        encode_delete(b"k1", &mut d).unwrap();
        assert_eq!(a.apply(&d, NOW_MS), Applied::Removed);
        assert_eq!(a.apply(&d, NOW_MS), Applied::Absent);
        // A set held back on the network does not bring it back while the
        // tombstone lasts; afterwards the id is free again.
        assert_eq!(a.apply(&set(b"k1", b"v1", NOW + 100), NOW_MS), Applied::Stale);
        out.clear();
        assert!(matches!(store.get(b"k1", NOW, &mut out), Lookup::Hit { .. }));
        assert_eq!(record::read(&out), Some(record::Record::Tombstone));
        let later = NOW + 32;
        assert_eq!(a.apply(&set(b"k1", b"v1", later + 100), later * 1000), Applied::Stored);

        let c = counters.get();
        assert_eq!(c.received.load(Ordering::Relaxed), 9);
        assert_eq!(c.applied.load(Ordering::Relaxed), 4);
        assert_eq!(c.stale.load(Ordering::Relaxed), 3);
        assert_eq!(c.removed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_store_takes_no_repaired_session_older_than_one_it_evicted() {
        let (store, counters) = setup();
        let a = plain_applier(&store, &counters);
        let set_via = |key: &[u8], expires: u64, via: Via| {
            let mut d = Vec::new();
            wire::encode_set_via(key, b"v", expires, via, &mut d).unwrap();
            d
        };
        // 100 sessions fill it; 10 more evict those expiring at NOW + 10..=19.
        for i in 0..110u64 {
            let key = format!("k{i}");
            assert_eq!(
                a.apply(&set(key.as_bytes(), b"v", NOW + 10 + i), NOW_MS),
                Applied::Stored
            );
        }
        assert_eq!(store.evicted_until(), NOW + 19);
        for via in [Via::Repaired, Via::Pulled] {
            assert_eq!(a.apply(&set_via(b"k5", NOW + 15, via), NOW_MS), Applied::CrowdedOut);
            assert_eq!(a.apply(&set_via(b"k9", NOW + 19, via), NOW_MS), Applied::CrowdedOut);
        }
        assert_eq!(counters.get().crowded_out.load(Ordering::Relaxed), 4);
        let mut out = Vec::new();
        assert_eq!(store.get(b"k5", NOW, &mut out), Lookup::Miss);
        // Newer than anything evicted: a repair brings it; a live session
        // is always taken.
        assert_eq!(
            a.apply(&set_via(b"r", NOW + 20, Via::Repaired), NOW_MS),
            Applied::Stored
        );
        assert_eq!(a.apply(&set(b"live", b"v", NOW + 11), NOW_MS), Applied::Stored);
    }

    #[test]
    fn its_own_sealed_datagrams_come_back_counted_and_unapplied() {
        use crate::replication::keys::Key;
        use crate::replication::seal::Sealer;
        let (store, counters) = setup();
        let own = Sealer::new(&Key::new([3; 32]));
        let opener = Opener::new(vec![Key::new([3; 32])], 30, 0).refusing_own(own.sender());
        let a = Applier {
            opener: Some(&opener),
            ..plain_applier(&store, &counters)
        };
        let mut sealed = Vec::new();
        own.seal(&set(b"k", b"v", NOW + 100), &AtomicU64::new(0), NOW_MS, &mut sealed);
        assert_eq!(a.apply(&sealed, NOW_MS), Applied::Refused(SealError::Own));
        assert!(store.is_empty());
        let c = counters.get();
        assert_eq!(c.own_returned.load(Ordering::Relaxed), 1);
        assert_eq!(c.replayed.load(Ordering::Relaxed) + c.forged.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn rejects_and_counts_bad_datagrams_without_touching_the_store() {
        let (store, counters) = setup();
        let a = plain_applier(&store, &counters);
        let good = set(b"key", b"value", NOW + 10);
        let mut bad = vec![
            vec![],
            vec![0x53, 1, 2, 3],
            good[..good.len() - 2].to_vec(),
            set(&[7; 65], b"v", NOW + 10),
            set(b"k", &[7; 1024], NOW + 10),
        ];
        let mut flipped = good.clone();
        flipped[3] = 99;
        bad.push(flipped);
        for d in &bad {
            assert!(matches!(a.apply(d, NOW_MS), Applied::Rejected(_)), "{d:?}");
        }
        assert!(store.is_empty());
        assert_eq!(counters.get().rejected.load(Ordering::Relaxed), bad.len() as u64);
    }
}
