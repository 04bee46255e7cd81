//! Warm start: a node that starts without the sessions of a previous
//! process image asks its peers for theirs (`Pull`, retried, given up after
//! [`PULL_ATTEMPTS`]: repair fills in later). A peer says it started
//! (`PullStarted`, with its count), sends every live session, paced, and
//! says when it is done (`Pulled`); meanwhile the puller reports what it
//! received (`PullProgress`) every [`PULL_PROGRESS_MS`]. The same puller
//! asking again soon after it was answered gets the end of the answer
//! again, not a second copy. Nothing is compared (repair) with a peer while
//! a pull runs between them.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::repair::DIGEST_CHANGED_MS;
use super::{Job, Worker};
use crate::replication::digest::Message;
use crate::replication::wire::Via;

/// How often a puller reports what it received.
pub(super) const PULL_PROGRESS_MS: u64 = 50;
/// How long an answered pull is remembered (a repeated ask gets its end
/// again, not a second copy).
pub(super) const PULL_ANSWER_KEPT_MS: u64 = 10_000;
/// Pull attempts, and the time between them, when a peer does not say it
/// has sent everything.
pub(super) const PULL_ATTEMPTS: u32 = 3;
pub(super) const PULL_RETRY_MS: u64 = 2_000;

impl Worker<'_> {
    pub(super) fn start_pull_answer(&mut self, to: SocketAddr, instance: u64, now: u64) {
        // The same puller asking again soon after it was answered (the
        // answer to its first ask was lost): the end of the answer again,
        // not all of it.
        if let Some(&(sessions, at, asked_by)) = self.pulls_answered.get(&to) {
            if asked_by == instance && now.saturating_sub(at) < PULL_ANSWER_KEPT_MS {
                for message in [Message::PullStarted { sessions }, Message::Pulled { sessions }] {
                    self.send_message(&message, to);
                }
                return;
            }
        }
        let sessions = self.store.len();
        self.send_message(&Message::PullStarted { sessions }, to);
        if self.jobs.iter().any(|j| j.to == to && j.via == Via::Pulled) {
            return;
        }
        if self.verbose {
            log::info!(
                "warm start of {to}: sending the {} sessions of cache \"{}\"",
                self.store.len(),
                self.cache
            );
        }
        let mut job = Job::new(to, Via::Pulled, VecDeque::new(), Some(0), now);
        job.instance = instance;
        self.jobs.push(job);
    }

    pub(super) fn pull_answered(&mut self, from: SocketAddr, sessions: u64, now: u64) {
        let Some(peer) = self.peers.iter_mut().find(|p| p.addr == from) else {
            return;
        };
        if peer.pulling.take().is_some() {
            log::info!(
                "warm start of cache \"{}\": {from} sent its {sessions} live sessions in {} ms; {} sessions pulled so far",
                self.cache,
                now.saturating_sub(peer.pull_started_ms),
                self.counters.pulled.load(std::sync::atomic::Ordering::Relaxed)
            );
            peer.next_digest_ms = now + DIGEST_CHANGED_MS;
        }
    }

    /// Whether `peer` is answering this node's pull (it said it started).
    pub(super) fn pulling_from(&self, peer: SocketAddr) -> bool {
        self.peers
            .iter()
            .any(|p| p.addr == peer && p.pulling.is_some() && p.pull_acked)
    }

    /// Whether a pull is under way between this node and `peer`, either
    /// way: what it lacks is on its way, nothing is compared meanwhile.
    pub(super) fn pull_between(&self, peer: SocketAddr) -> bool {
        self.pulling_from(peer) || self.jobs.iter().any(|j| j.to == peer && j.via == Via::Pulled)
    }
}
