//! Repair (anti-entropy): now and then the worker sends each peer a
//! `Digest` of the settled sessions this node holds (see
//! [`crate::replication::digest`]): often while differences were seen
//! lately, within a second after sessions came in or left, rarely when
//! nothing happens. A node whose digest differs lists its ids in the
//! differing buckets (`Keys`) and each side asks (`Want`) for what it
//! lacks. The sessions asked for are gathered in one store scan for every
//! peer that asked, within a rate of whole-store scans, and handed to the
//! paced sender; ids a peer deleted lately become tombstones here. Nothing
//! below the latest expiry this store evicted for room is compared.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use super::pace::{sendable, Item, Job};
use super::Worker;
use crate::clock;
use crate::record::{self, Origin, Record};
use crate::replication::counters::ReplicationCounters;
use crate::replication::digest::{self, Held, Message, Snapshot, Window};
use crate::replication::wire::Via;
use crate::store::Insert;

/// Sessions queued for sending, at most (a `Want` beyond is dropped; the
/// next round asks again).
const MAX_QUEUED: usize = 50_000;
/// Ids listed in one `Keys` answer, at most (the next round lists more).
const MAX_KEYS_PER_ANSWER: usize = 16_000;
/// Time between digests to a peer: while differences were seen lately,
/// when this node's digest changed, and when nothing happens.
pub(super) const DIGEST_FAST_MS: u64 = 200;
pub(super) const DIGEST_CHANGED_MS: u64 = 1_000;
pub(super) const DIGEST_IDLE_MS: u64 = 5_000;
/// How long a difference keeps the digests fast.
pub(super) const DIFFERENCES_FRESH_MS: u64 = 3_000;
/// A peer's digests are compared this often at most.
const MIN_DIGEST_GAP_MS: u64 = DIGEST_FAST_MS / 2;
/// A snapshot of this node is reused for this long.
const SNAPSHOT_MS: u64 = DIGEST_FAST_MS / 2;
/// Whole-store scans (snapshots, sessions asked for) a second, at most, and
/// at once; sessions asked for are gathered for one scan this often.
pub(super) const SCANS_PER_SEC: u64 = 20;
pub(super) const SCANS_BURST: u64 = 10;
pub(super) const GATHER_MS: u64 = 50;
/// A peer's window is compared as it is when it is this close to this
/// node's own (clocks a few seconds apart); otherwise the node's own.
const WINDOW_TOLERANCE_SECS: u64 = 5;

/// Sessions asked for by one peer (or deleted there), for the next scan.
#[derive(Default)]
pub(super) struct Asked {
    send: HashSet<u64>,
    delete: HashSet<u64>,
}

impl Worker<'_> {
    pub(super) fn noted_difference(&mut self, with: SocketAddr, now: u64) {
        if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == with) {
            peer.differed_ms = now;
            peer.next_digest_ms = peer.next_digest_ms.min(now + DIGEST_FAST_MS);
        }
    }

    pub(super) fn compare_digest(&mut self, from: SocketAddr, window: Window, xors: &[u64], now: u64) {
        if self.pull_between(from) || self.below_evicted(&window) {
            return;
        }
        let last = self.digests_seen.insert(from, now);
        if last.is_some_and(|t| now.saturating_sub(t) < MIN_DIGEST_GAP_MS) {
            return self.ignored();
        }
        if self.digests_seen.len() > 4096 {
            self.digests_seen.retain(|_, t| now.saturating_sub(*t) < 60_000);
        }
        let Some(snapshot) = self.snapshot_near(window, now) else {
            return self.ignored();
        };
        let mut differing = snapshot.differing(xors);
        if differing.is_empty() {
            return;
        }
        // One round trip less for buckets that differ by one session.
        let (theirs_lack, mine_lack) = snapshot.single_differences(xors, &differing);
        if !self.pulling_from(from) {
            self.send_message(&Message::Want { ids: mine_lack }, from);
        }
        self.ask(from, theirs_lack, Vec::new());
        // Bounded answer; the buckets left out come in the next rounds.
        let mut listed = 0;
        differing.retain(|&b| {
            listed += snapshot.ids[b].len();
            listed <= MAX_KEYS_PER_ANSWER
        });
        self.send_message(&snapshot.keys(&differing), from);
        self.noted_difference(from, now);
    }

    /// What this node holds through `window`: the last snapshot when it was
    /// made for the same window lately, else a new one if a scan is left
    /// this second, else the last one (a digest compared across windows
    /// finds more differences than there are, which repair shrugs off).
    pub(super) fn snapshot_for(&mut self, window: Window, now: u64) -> Option<Snapshot> {
        if let Some((made, s)) = &self.snapshot {
            if s.window == window && now.saturating_sub(*made) < SNAPSHOT_MS {
                return Some(s.clone());
            }
        }
        if !self.scans.take(now) {
            ReplicationCounters::bump(&self.counters.sync_throttled);
            return self.snapshot.as_ref().map(|(_, s)| s.clone());
        }
        let sealing = self.sealer.is_some();
        let mut snapshot = Snapshot::new(window);
        self.store.scan(clock::unix_secs(), |key, value, expires| {
            if let Some(held) = held(value, sealing) {
                snapshot.add(digest::id_of(key), held, expires);
            }
        });
        self.snapshot = Some((now, snapshot.clone()));
        Some(snapshot)
    }

    /// The window of this node's digests: settled sessions, and only those
    /// expiring after the last one its store evicted for room (below, it
    /// may lack any; asking for them back would evict newer ones).
    /// `Err(())` when sessions live too short for a window at all, `Ok(None)`
    /// while every live session is below that horizon.
    pub(super) fn own_window(&self) -> Result<Option<Window>, ()> {
        let at = Window::at(clock::unix_secs(), self.timeout, self.buckets).ok_or(())?;
        Ok(at.above(self.store.evicted_until()))
    }

    /// Whether a peer's `window` reaches below what this store evicted for
    /// room: not compared here (every session evicted would look lost); the
    /// peer compares this node's narrower digests instead.
    pub(super) fn below_evicted(&self, window: &Window) -> bool {
        window.lo < self.store.evicted_until()
    }

    /// A snapshot for a peer's `window` when its end is close to this
    /// node's own (their clocks differ by seconds) and it starts no earlier
    /// (a full store's window starts above what it evicted), else through
    /// this node's own: a window a sender makes up never decides what is
    /// scanned or sent, and a narrower one only sends less.
    pub(super) fn snapshot_near(&mut self, theirs: Window, now: u64) -> Option<Snapshot> {
        let at = Window::at(clock::unix_secs(), self.timeout, self.buckets)?;
        let near = theirs.buckets == at.buckets
            && theirs.lo + WINDOW_TOLERANCE_SECS >= at.lo
            && theirs.hi.abs_diff(at.hi) <= WINDOW_TOLERANCE_SECS;
        let window = if near { theirs } else { self.own_window().ok()?? };
        self.snapshot_for(window, now)
    }

    /// Notes the sessions `to` asked for (`send`) and those it deleted
    /// lately (`delete`), for the next scan, which serves every peer's.
    pub(super) fn ask(&mut self, to: SocketAddr, send: Vec<u64>, delete: Vec<u64>) {
        if send.is_empty() && delete.is_empty() {
            return;
        }
        if !self.asked.contains_key(&to) && self.asked.len() >= self.peers.len().max(64) {
            return self.ignored();
        }
        let asked = self.asked.entry(to).or_default();
        let room = MAX_QUEUED.saturating_sub(asked.send.len() + asked.delete.len());
        asked.send.extend(send.into_iter().take(room));
        let room = MAX_QUEUED.saturating_sub(asked.send.len() + asked.delete.len());
        asked.delete.extend(delete.into_iter().take(room));
    }

    /// One scan for every session asked for since the last: queued for the
    /// peers that asked, or deleted here (a peer deleted them).
    pub(super) fn gather(&mut self, now: u64) {
        if self.asked.is_empty() || now < self.next_gather_ms {
            return;
        }
        if !self.scans.take(now) {
            ReplicationCounters::bump(&self.counters.sync_throttled);
            self.next_gather_ms = now + GATHER_MS;
            return;
        }
        self.next_gather_ms = now + GATHER_MS;
        let asked = std::mem::take(&mut self.asked);
        let queued: usize = self.jobs.iter().map(|j| j.queue.len()).sum();
        let mut room = MAX_QUEUED.saturating_sub(queued);
        let sealing = self.sealer.is_some();
        let mut items: HashMap<SocketAddr, VecDeque<Item>> = HashMap::new();
        let mut doomed = Vec::new();
        self.store.scan(clock::unix_secs(), |key, value, expires| {
            let id = digest::id_of(key);
            for (to, a) in &asked {
                if a.delete.contains(&id) {
                    doomed.push(key.to_vec());
                } else if a.send.contains(&id) && room > 0 {
                    if let Some(der) = sendable(value, sealing) {
                        room -= 1;
                        items.entry(*to).or_default().push_back(Item {
                            key: key.to_vec(),
                            der: der.to_vec(),
                            expires,
                        });
                    }
                }
            }
        });
        let unix_now = clock::unix_secs();
        for key in doomed {
            let tombstone = self.store.insert_unless(
                &key,
                record::TOMBSTONE,
                unix_now + self.tombstone_secs.max(1),
                unix_now,
                |v| record::read(v) == Some(Record::Tombstone),
            );
            if matches!(tombstone, Insert::Stored { replaced: true, .. }) {
                ReplicationCounters::bump(&self.counters.repair_deleted);
            }
        }
        for (to, items) in items {
            match self.jobs.iter_mut().find(|j| j.to == to && j.via == Via::Repaired) {
                Some(job) => {
                    // Asked again before it went: queued once.
                    let queued: HashSet<u64> = job.queue.iter().map(|i| digest::id_of(&i.key)).collect();
                    job.queue
                        .extend(items.into_iter().filter(|i| !queued.contains(&digest::id_of(&i.key))));
                }
                None => self.jobs.push(Job::new(to, Via::Repaired, items, None, now)),
            }
        }
    }
}

/// How a stored value counts in digests; `None` for bytes of no known
/// record.
fn held(value: &[u8], sealing: bool) -> Option<Held> {
    Some(match record::read(value)? {
        Record::Tombstone => Held::Tombstone,
        Record::Session(Origin::Plain, _) if sealing => Held::Unsendable,
        Record::Session(origin, _) if !sealing && !origin.sendable_in_clear() => Held::Unsendable,
        Record::Session(..) => Held::Session,
    })
}
