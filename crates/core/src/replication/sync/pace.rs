//! Pacing: what the worker sends in answer (a pull's whole store, a
//! repair's few sessions) waits in a bounded queue per peer (a `Job`) and
//! leaves at most [`SESSIONS_PER_SEC`] a second, round robin between the
//! peers, so that serving a pull of a large store never starves the node's
//! handshakes. A pull answer reads the store a shard at a time as it goes,
//! and waits while its window of sessions not yet reported received is
//! full (a puller short of CPU slows it down instead of losing them).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use super::pull::{PULL_ANSWER_KEPT_MS, PULL_PROGRESS_MS};
use super::Worker;
use crate::clock;
use crate::record::{self, Origin, Record};
use crate::replication::digest::Message;
use crate::replication::wire::{self, Via};

/// Sessions sent a second, at most, in answer to pulls and repairs.
pub const SESSIONS_PER_SEC: u64 = 20_000;
/// Sessions sent back to back before the pacing waits.
pub(super) const BURST: u64 = 100;
/// Sessions of a pull answer sent and not yet reported received, at most:
/// a puller short of CPU slows the answer down instead of losing it.
const PULL_WINDOW: u64 = 2_000;
/// A full window that the puller's reports have not moved for this long:
/// what is in flight was lost on the way (repair fills it in) and sending
/// goes on. A puller that sends no reports at all (short of CPU) is waited
/// for.
const PULL_WRITE_OFF_MS: u64 = 300;
/// A puller that reports nothing for this long is gone: its answer stops.
const PULL_ABANDON_MS: u64 = 10_000;

/// One session queued for a peer.
pub(super) struct Item {
    pub(super) key: Vec<u8>,
    pub(super) der: Vec<u8>,
    pub(super) expires: u64,
}

/// Sessions being sent to one peer.
pub(super) struct Job {
    pub(super) to: SocketAddr,
    pub(super) via: Via,
    pub(super) queue: VecDeque<Item>,
    /// A pull answer: the next shard to read, until every one was read.
    pub(super) next_shard: Option<usize>,
    sent: u64,
    started_ms: u64,
    /// A pull answer: what the puller reported received, when that last
    /// changed, and what was written off as lost.
    pub(super) acked: u64,
    pub(super) acked_ms: u64,
    /// When the puller last reported at all.
    pub(super) reported_ms: u64,
    written_off: u64,
    /// A pull answer: the puller's instance.
    pub(super) instance: u64,
}

/// Whether a job may send now.
enum Pace {
    Go,
    Wait,
    /// A pull answer whose puller is gone.
    Abandoned,
}

impl Job {
    pub(super) fn new(to: SocketAddr, via: Via, queue: VecDeque<Item>, next_shard: Option<usize>, now: u64) -> Job {
        Job {
            to,
            via,
            queue,
            next_shard,
            sent: 0,
            started_ms: now,
            acked: 0,
            acked_ms: now,
            reported_ms: now,
            written_off: 0,
            instance: 0,
        }
    }

    /// A pull answer waits while its window is full.
    fn pace(&mut self, now: u64) -> Pace {
        if self.via != Via::Pulled {
            return Pace::Go;
        }
        if now.saturating_sub(self.reported_ms) > PULL_ABANDON_MS {
            return Pace::Abandoned;
        }
        let in_flight = self.sent.saturating_sub(self.acked + self.written_off);
        if in_flight < PULL_WINDOW {
            return Pace::Go;
        }
        let stuck = now.saturating_sub(self.acked_ms) > PULL_WRITE_OFF_MS
            && self.reported_ms > self.acked_ms + PULL_PROGRESS_MS;
        if stuck {
            self.written_off += in_flight;
            self.acked_ms = now;
            return Pace::Go;
        }
        Pace::Wait
    }
}

impl Worker<'_> {
    /// Sends queued sessions within the pace.
    pub(super) fn send_queued(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.refilled_ms);
        if elapsed > 0 {
            self.tokens = (self.tokens + elapsed * SESSIONS_PER_SEC / 1000).min(BURST);
            self.refilled_ms = now;
        }
        let sealing = self.sealer.is_some();
        let mut j = 0;
        // Jobs in a row that had to wait: all of them ends the round.
        let mut waiting = 0;
        while j < self.jobs.len() && self.tokens > 0 && waiting < self.jobs.len() {
            match self.jobs[j].pace(now) {
                Pace::Go => waiting = 0,
                Pace::Wait => {
                    waiting += 1;
                    j = (j + 1) % self.jobs.len();
                    continue;
                }
                Pace::Abandoned => {
                    let job = self.jobs.remove(j);
                    log::warn!(
                        "warm start of {}: it stopped reporting what it received; {} sessions sent",
                        job.to,
                        job.sent
                    );
                    j = if self.jobs.is_empty() { 0 } else { j % self.jobs.len() };
                    continue;
                }
            }
            // A pull answer reads the store a shard at a time.
            if self.jobs[j].queue.is_empty() {
                if let Some(shard) = self.jobs[j].next_shard {
                    let job = &mut self.jobs[j];
                    let unix_now = clock::unix_secs();
                    self.store.scan_shard(shard, unix_now, |key, value, expires| {
                        if let Some(der) = sendable(value, sealing) {
                            job.queue.push_back(Item {
                                key: key.to_vec(),
                                der: der.to_vec(),
                                expires,
                            });
                        }
                    });
                    job.next_shard = (shard + 1 < self.store.shard_count()).then_some(shard + 1);
                    continue;
                }
            }
            let Some(item) = self.jobs[j].queue.pop_front() else {
                let job = self.jobs.remove(j);
                if job.via == Via::Pulled {
                    self.send_message(&Message::Pulled { sessions: job.sent }, job.to);
                    if self.pulls_answered.len() >= 1024 {
                        self.pulls_answered
                            .retain(|_, (_, at, _)| now.saturating_sub(*at) < PULL_ANSWER_KEPT_MS);
                    }
                    if self.pulls_answered.len() < 1024 {
                        self.pulls_answered.insert(job.to, (job.sent, now, job.instance));
                    }
                    if self.verbose {
                        log::info!(
                            "warm start of {}: sent {} sessions in {} ms",
                            job.to,
                            job.sent,
                            now.saturating_sub(job.started_ms)
                        );
                    }
                }
                continue;
            };
            let (to, via) = (self.jobs[j].to, self.jobs[j].via);
            // Nothing expired is sent.
            if item.expires <= clock::unix_secs() {
                continue;
            }
            let mut frame = std::mem::take(&mut self.scratch);
            if wire::encode_set_via(&item.key, &item.der, item.expires, via, &mut frame).is_ok() {
                match self.send(&frame, to) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The socket buffer is full: try again later.
                        self.jobs[j].queue.push_front(item);
                        self.scratch = frame;
                        return;
                    }
                    _ => self.jobs[j].sent += 1,
                }
            }
            self.scratch = frame;
            self.tokens -= 1;
            // Round robin between peers.
            j = (j + 1) % self.jobs.len().max(1);
        }
    }
}

/// The session to send for a stored value, if it may be sent.
pub(super) fn sendable(value: &[u8], sealing: bool) -> Option<&[u8]> {
    match record::read(value)? {
        Record::Session(Origin::Plain, _) if sealing => None,
        Record::Session(origin, _) if !sealing && !origin.sendable_in_clear() => None,
        Record::Session(_, der) => Some(der),
        Record::Tombstone => None,
    }
}
