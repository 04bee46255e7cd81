//! A sync message that arrived ([`Worker::handle`]): the checks first,
//! then what each kind does. A message is acted on only when it names this
//! node as its recipient (or a relay's: see `relay`), its proof is a
//! cookie this node gave the address answers go to (see
//! [`crate::replication::routability`]: anything else gets a `Cookie`, no
//! larger than the message), and it was sealed with the cluster key — then
//! answers go to the address the sealed envelope names, never to the
//! datagram's source — or (plain replication) it comes from a configured
//! peer's address. Requests that ask for work are rate-limited per address.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::pace::SESSIONS_PER_SEC;
use super::pull::PULL_RETRY_MS;
use super::{Request, Worker};
use crate::clock;
use crate::record::Origin;
use crate::replication::counters::ReplicationCounters;
use crate::replication::digest::{Envelope, Message};
use crate::replication::log_budget::Verdict;
use crate::replication::wire::Via;

/// `Cookie` answers a second to one address, and to all.
pub(super) const COOKIES_PER_ADDRESS_PER_SEC: u64 = 4;
pub(super) const COOKIES_PER_SEC: u64 = 200;
/// Pulls a second from one address (a puller retries every
/// [`PULL_RETRY_MS`]), and `Keys`/`Want` bodies (a digest's answer is a few).
pub(super) const PULLS_PER_SEC: u64 = 1;
pub(super) const PULLS_BURST: u64 = 2;
pub(super) const ASKS_PER_SEC: u64 = 64;
pub(super) const ASKS_BURST: u64 = 128;
/// Cookies of other nodes kept (for the messages sent to them).
const MAX_THEIR_COOKIES: usize = 4096;

impl Worker<'_> {
    /// Whether `to` names this node: one of its receiving addresses (any
    /// address at the port of one bound to all).
    pub(super) fn is_me(&self, to: &SocketAddr) -> bool {
        self.own
            .iter()
            .any(|o| o == to || (o.ip().is_unspecified() && o.port() == to.port()))
    }

    pub(super) fn ignored(&self) {
        ReplicationCounters::bump(&self.counters.sync_ignored);
    }

    /// Where answers to `request` go: for a sealed message the address its
    /// authenticated envelope names (the datagram's source only fills in an
    /// address bound to all); for a plain one its source, which must be a
    /// configured peer. `None`: not answered at all.
    fn answer_address(&self, request: &Request, envelope: &Envelope, relayed: bool) -> Option<SocketAddr> {
        if relayed {
            // The relay's address is the source: only the envelope says
            // whose it is (a cookie round trip before anything larger).
            return (!envelope.from.ip().is_unspecified()).then_some(envelope.from);
        }
        match request.origin {
            Origin::Sealed if envelope.from.ip().is_unspecified() => {
                Some(SocketAddr::new(request.from.ip(), envelope.from.port()))
            }
            Origin::Sealed => Some(envelope.from),
            _ => self
                .peers
                .iter()
                .any(|p| p.addr == request.from)
                .then_some(request.from),
        }
    }

    pub(super) fn handle(&mut self, request: Request) {
        let now = clock::monotonic_ms();
        let Ok((envelope, message)) = Message::decode(&request.body) else {
            return self.ignored();
        };
        // Sent to a configured peer and coming from it: relayed by it to
        // every node of its cluster, this one included. Not when its sender
        // is configured here too (a mesh, where that is a replay with a
        // forged source).
        let configured = |a: &SocketAddr| self.peers.iter().any(|p| !p.learned && p.addr == *a);
        let relayed = request.from == envelope.to && configured(&envelope.to) && !configured(&envelope.from);
        if !relayed && !self.is_me(&envelope.to) {
            ReplicationCounters::bump(&self.counters.sync_misdirected);
            if let Verdict::Log { .. } = self.misdirected_log.check(now) {
                let own: Vec<String> = self.own.iter().map(|a| a.to_string()).collect();
                log::warn!(
                    "cache \"{}\": a sync message from {} names {} as its recipient, not this node ({}): ignored \
                     (a peer that names this node by another address, or a replay; at most one line a minute)",
                    self.cache,
                    request.from,
                    envelope.to,
                    own.join(", ")
                );
            }
            return self.ignored();
        }
        let Some(from) = self.answer_address(&request, &envelope, relayed) else {
            return self.ignored();
        };
        if relayed {
            self.relay_seen(request.from);
            self.learn(from, now);
        }
        let unix_now = clock::unix_secs();
        if !self.cookies.verify(&from, envelope.proof, unix_now) {
            // An answer to what this node sent through a relay, from a node
            // the relay reached (not one configured here: in a mesh that is
            // a replay): learnt, its cookie kept and this node's
            // sent (a cookie answers even a cookie here: the answer to it
            // proves, so it never goes back and forth), then only what is no
            // larger, a pull, until it proves itself.
            let configured = self.peers.iter().any(|p| !p.learned && p.addr == from);
            if let Some(relay) = self.relay_of_cookie(envelope.proof, unix_now).filter(|_| !configured) {
                self.relay_seen(relay);
                if self.learn(from, now) {
                    self.keep_cookie(from, envelope.grant);
                    self.answer_cookie(from, envelope.grant, now);
                    self.proven(from, now);
                }
                return;
            }
            // Only the holder of `from` sees the cookie, and nothing larger
            // than what came goes there.
            ReplicationCounters::bump(&self.counters.sync_unproven);
            if message != Message::Cookie {
                self.answer_cookie(from, envelope.grant, now);
            }
            return;
        }
        if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == from) {
            if peer.learned && !peer.proven {
                ReplicationCounters::bump(&self.counters.learned);
            }
            peer.proven = true;
            peer.heard_ms = now;
        }
        self.keep_cookie(from, envelope.grant);
        if self.verbose {
            log::info!("sync message from {from}: {}", describe(&message));
        }
        match message {
            Message::Cookie => self.proven(from, now),
            Message::Pull { .. } | Message::Keys { .. } | Message::Want { .. }
                if !self.may_ask(&message, from, now) =>
            {
                ReplicationCounters::bump(&self.counters.sync_throttled);
                self.ignored();
            }
            Message::Pull { instance } => self.start_pull_answer(from, instance, now),
            Message::Pulled { sessions } => self.pull_answered(from, sessions, now),
            Message::PullProgress { received } => {
                if let Some(job) = self.jobs.iter_mut().find(|j| j.to == from && j.via == Via::Pulled) {
                    job.reported_ms = now;
                    if received > job.acked {
                        job.acked = received;
                        job.acked_ms = now;
                    }
                } else if let Some(&(sessions, _, _)) = self.pulls_answered.get(&from) {
                    // Its `Pulled` was lost: again.
                    self.send_message(&Message::Pulled { sessions }, from);
                }
            }
            Message::PullStarted { sessions } => {
                if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == from && p.pulling.is_some()) {
                    peer.pull_acked = true;
                    // Paced answers: give it thrice the time its pace needs.
                    peer.next_pull_ms = now + PULL_RETRY_MS * 5 + sessions * 3000 / SESSIONS_PER_SEC;
                }
            }
            // A node learnt (and proven) digests here directly too.
            Message::Digest { .. } if relayed && self.peers.iter().any(|p| p.learned && p.addr == from) => {}
            Message::Digest { window, xors } => self.compare_digest(from, window, &xors, now),
            Message::Keys { .. } if self.pull_between(from) => {}
            Message::Keys { window, .. } if self.below_evicted(&window) => {}
            Message::Keys { window, buckets } => {
                self.noted_difference(from, now);
                let Some(snapshot) = self.snapshot_near(window, now) else {
                    return self.ignored();
                };
                let d = snapshot.compare(&buckets);
                // What a pull from that peer brings is not asked for twice.
                if !self.pulling_from(from) {
                    self.send_message(&Message::Want { ids: d.want }, from);
                }
                self.ask(from, d.send, d.delete);
            }
            Message::Want { ids } => {
                self.noted_difference(from, now);
                self.ask(from, ids, Vec::new());
            }
        }
    }

    /// Whether `from` may make this request now (a rate per address).
    fn may_ask(&mut self, message: &Message, from: SocketAddr, now: u64) -> bool {
        match message {
            Message::Pull { .. } => self.pulls.take(from, now),
            _ => self.asks.take(from, now),
        }
    }

    /// Answers a message that proved nothing with this node's cookie for
    /// `to`, and as proof the `grant` it came with, within the rates.
    fn answer_cookie(&mut self, to: SocketAddr, grant: u64, now: u64) {
        if !self.cookie_answers.take(to, now) || !self.cookies_total.take(now) {
            return ReplicationCounters::bump(&self.counters.sync_throttled);
        }
        self.send_with_proof(&Message::Cookie, to, grant);
    }

    /// Keeps the cookie `from` gave this node (its messages proved it).
    fn keep_cookie(&mut self, from: SocketAddr, grant: u64) {
        if grant == 0 {
            return;
        }
        if self.their_cookies.len() >= MAX_THEIR_COOKIES && !self.their_cookies.contains_key(&from) {
            let peers: HashSet<SocketAddr> = self.peers.iter().map(|p| p.addr).collect();
            self.their_cookies.retain(|a, _| peers.contains(a));
        }
        self.their_cookies.insert(from, grant);
    }

    /// `from` answered with its cookie what it did not act on: ask again
    /// at once (a pull not yet answered, the next digest).
    fn proven(&mut self, from: SocketAddr, now: u64) {
        let instance = self.instance;
        let Some(peer) = self.peers.iter_mut().find(|p| p.addr == from) else {
            return;
        };
        peer.next_digest_ms = peer.next_digest_ms.min(now);
        if peer.pulling.is_some() && !peer.pull_acked {
            self.send_message(&Message::Pull { instance }, from);
        }
    }
}

fn describe(message: &Message) -> String {
    match message {
        Message::Pull { .. } => "pull".into(),
        Message::Pulled { sessions } => format!("pull answered ({sessions} sessions)"),
        Message::PullStarted { sessions } => format!("pull being answered ({sessions} sessions)"),
        Message::PullProgress { received } => format!("pull progress ({received} sessions received)"),
        Message::Digest { window, .. } => format!("digest of {} buckets", window.buckets),
        Message::Keys { buckets, .. } => format!("keys of {} buckets", buckets.len()),
        Message::Want { ids } => format!("want {} sessions", ids.len()),
        Message::Cookie => "cookie".into(),
    }
}
