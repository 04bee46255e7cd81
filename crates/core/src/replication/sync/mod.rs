//! The sync worker: warm-start pulls and anti-entropy repair (the messages
//! are [`super::digest`]'s), one thread per node in the master.
//!
//! It talks to the unicast peers of the configuration from the node's own
//! receiving address, so that their answers arrive where it listens.
//! A message is acted on only when it names this node as its recipient,
//! its proof is a cookie this node gave the address answers go to (see
//! [`super::routability`]: anything else gets a `Cookie`, no larger than
//! the message), and it was sealed with the cluster key — then answers go
//! to the address the sealed envelope names, never to the datagram's
//! source — or (plain replication) it comes from a configured peer's
//! address. Requests are rate-limited per address, store scans per second.
//! Sessions learnt from plain datagrams are never sent sealed (that would
//! vouch for them); sessions with a client identity never in the clear.
//!
//! Everything it sends in answer is paced ([`SESSIONS_PER_SEC`]) so that
//! serving a pull of a large store never starves the node's handshakes,
//! and every queue is bounded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use super::counters::ReplicationCounters;
use super::digest::{self, Envelope, Message, Snapshot};
use super::log_budget::{LogBudget, Verdict};
use super::routability::{Bucket, Cookies, PerAddress};
use super::seal::Sealer;
use super::transport::Replier;
use super::wire::Via;
use crate::boundary::Boundary;
use crate::clock;
use crate::os::{self, fork_guard};
use crate::record::Origin;
use crate::store::Store;

mod pace;
mod pull;
mod relay;
mod repair;
mod send;

pub use pace::SESSIONS_PER_SEC;
use pace::{Job, BURST};
use pull::{PULL_ATTEMPTS, PULL_PROGRESS_MS, PULL_RETRY_MS};
use relay::{DISCOVERY_MS, LEARNED_PULL_MS, LEARNED_SILENCE_MS};
use repair::{
    Asked, DIFFERENCES_FRESH_MS, DIGEST_CHANGED_MS, DIGEST_FAST_MS, DIGEST_IDLE_MS, GATHER_MS, SCANS_BURST,
    SCANS_PER_SEC,
};

/// `Cookie` answers a second to one address, and to all.
const COOKIES_PER_ADDRESS_PER_SEC: u64 = 4;
const COOKIES_PER_SEC: u64 = 200;
/// Pulls a second from one address (a puller retries every
/// [`PULL_RETRY_MS`]), and `Keys`/`Want` bodies (a digest's answer is a few).
const PULLS_PER_SEC: u64 = 1;
const PULLS_BURST: u64 = 2;
const ASKS_PER_SEC: u64 = 64;
const ASKS_BURST: u64 = 128;
/// Cookies of other nodes kept (for the messages sent to them).
const MAX_THEIR_COOKIES: usize = 4096;

static SYNC: Boundary = Boundary::new("a sync step (warm start, repair)");

/// A sync message that arrived, for the worker.
pub struct Request {
    pub from: SocketAddr,
    pub origin: Origin,
    pub body: Vec<u8>,
}

/// What this node does with one peer.
struct Peer {
    addr: SocketAddr,
    /// Pull attempts made, while a pull is wanted.
    pulling: Option<u32>,
    /// The peer said it started answering the pull.
    pull_acked: bool,
    pull_started_ms: u64,
    next_pull_ms: u64,
    next_digest_ms: u64,
    /// The digest last sent there (to tell whether it changed).
    last_digest: u64,
    /// When a difference with it was last seen.
    differed_ms: u64,
    /// A configured peer seen relaying other nodes' messages (a
    /// udprepeater): digests to it only find those nodes.
    relay: bool,
    /// Not configured: a node learnt through a relay; `proven` once a
    /// message of its own came with this node's cookie for it (nothing
    /// larger than what it sent goes there before), `heard_ms` its last.
    learned: bool,
    proven: bool,
    heard_ms: u64,
}

impl Peer {
    fn new(addr: SocketAddr, pulling: bool, now: u64) -> Peer {
        Peer {
            addr,
            pulling: pulling.then_some(0),
            pull_acked: false,
            pull_started_ms: now,
            next_pull_ms: now,
            // The first digest a second after start: a reloaded node
            // finds what it missed while it reloaded.
            next_digest_ms: now + DIGEST_CHANGED_MS,
            last_digest: 0,
            differed_ms: 0,
            relay: false,
            learned: false,
            proven: true,
            heard_ms: now,
        }
    }
}

/// Everything the worker needs of the engine.
pub struct Worker<'a> {
    pub store: &'a Store,
    /// Session lifetime here, seconds (the digest window).
    pub timeout: u32,
    /// How long a deletion learnt from a peer lasts, seconds.
    pub tombstone_secs: u64,
    pub sealer: Option<&'a Sealer>,
    pub counters: &'a ReplicationCounters,
    pub repliers: Vec<Box<dyn Replier>>,
    pub verbose: bool,
    pub cache: &'a str,
    peers: Vec<Peer>,
    jobs: Vec<Job>,
    snapshot: Option<(u64, Snapshot)>,
    /// Sessions of pull answers received, by sender (the receiver threads
    /// count them).
    pub pull_received: &'a Mutex<HashMap<SocketAddr, u64>>,
    next_progress_ms: u64,
    /// Pulls answered lately: sessions sent, when, to which instance.
    pulls_answered: HashMap<SocketAddr, (u64, u64, u64)>,
    /// This process image's, in its pulls.
    instance: u64,
    /// When each source's digest was last compared.
    digests_seen: HashMap<SocketAddr, u64>,
    tokens: u64,
    refilled_ms: u64,
    buckets: usize,
    /// The store's inserts and removals when last looked at.
    last_activity: u64,
    scratch: Vec<u8>,
    sealed: Vec<u8>,
    /// Where this node receives (recipients it answers to).
    own: Vec<SocketAddr>,
    cookies: Cookies,
    /// The cookies other nodes gave this one: the proofs it sends them.
    their_cookies: HashMap<SocketAddr, u64>,
    cookie_answers: PerAddress,
    cookies_total: Bucket,
    pulls: PerAddress,
    asks: PerAddress,
    scans: Bucket,
    /// Sessions asked for, by peer, until the next scan.
    asked: HashMap<SocketAddr, Asked>,
    next_gather_ms: u64,
    /// Lines about messages naming another node (a peer that knows this
    /// one by an address it does not receive on).
    misdirected_log: LogBudget,
    /// Until when nodes learnt through a relay are pulled from (a warm
    /// start), and how many were.
    learned_pull_until_ms: u64,
    learned_pulls: usize,
    /// Until when digests to a relay go every second (finding its nodes
    /// quickly): after start and after a node was learnt.
    discovering_until_ms: u64,
}

impl<'a> Worker<'a> {
    /// A worker for `peers`; `pull` asks them for their sessions first (a
    /// node that starts without the sessions of a previous process image).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &'a Store,
        timeout: u32,
        tombstone_secs: u64,
        sealer: Option<&'a Sealer>,
        counters: &'a ReplicationCounters,
        pull_received: &'a Mutex<HashMap<SocketAddr, u64>>,
        repliers: Vec<Box<dyn Replier>>,
        peers: &[SocketAddr],
        pull: bool,
        verbose: bool,
        cache: &'a str,
    ) -> Worker<'a> {
        let now = clock::monotonic_ms();
        let peers = peers
            .iter()
            .filter(|p| repliers.iter().any(|r| r.reaches(p)))
            .map(|&addr| Peer::new(addr, pull, now))
            .collect();
        Worker {
            store,
            timeout,
            tombstone_secs,
            sealer,
            counters,
            verbose,
            cache,
            peers,
            pull_received,
            next_progress_ms: now,
            pulls_answered: HashMap::new(),
            instance: {
                let mut id = [0u8; 8];
                // Only tells pulls apart: any value will do if it fails.
                let _ = openssl::rand::rand_bytes(&mut id);
                u64::from_ne_bytes(id) ^ now ^ u64::from(std::process::id())
            },
            jobs: Vec::new(),
            snapshot: None,
            digests_seen: HashMap::new(),
            tokens: BURST,
            refilled_ms: now,
            last_activity: 0,
            buckets: digest::buckets_for(store.limits().capacity),
            scratch: Vec::new(),
            sealed: Vec::new(),
            own: repliers.iter().map(|r| r.local_addr()).collect(),
            repliers,
            cookies: Cookies::new(),
            their_cookies: HashMap::new(),
            cookie_answers: PerAddress::new(COOKIES_PER_ADDRESS_PER_SEC, COOKIES_PER_ADDRESS_PER_SEC),
            cookies_total: Bucket::new(COOKIES_PER_SEC, COOKIES_PER_SEC, now),
            pulls: PerAddress::new(PULLS_PER_SEC, PULLS_BURST),
            asks: PerAddress::new(ASKS_PER_SEC, ASKS_BURST),
            scans: Bucket::new(SCANS_PER_SEC, SCANS_BURST, now),
            asked: HashMap::new(),
            next_gather_ms: now,
            misdirected_log: LogBudget::new(1, 60_000),
            learned_pull_until_ms: if pull { now + LEARNED_PULL_MS } else { 0 },
            learned_pulls: 0,
            discovering_until_ms: now + DISCOVERY_MS,
        }
    }

    /// Peers it pulls from and digests to.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.iter().map(|p| p.addr).collect()
    }

    /// Runs until `keep_running` says stop or every request sender is gone.
    pub fn run(mut self, requests: Receiver<Request>, keep_running: &dyn Fn() -> bool) {
        os::block_signals();
        if self.peers.iter().any(|p| p.pulling.is_some()) {
            let peers: Vec<String> = self.peers.iter().map(|p| p.addr.to_string()).collect();
            log::info!(
                "warm start of cache \"{}\": asking {} for their sessions",
                self.cache,
                peers.join(", ")
            );
        }
        while keep_running() {
            let wait = self.wait_ms(clock::monotonic_ms());
            match requests.recv_timeout(Duration::from_millis(wait)) {
                Ok(first) => {
                    let held = fork_guard::hold();
                    SYNC.guard((), || self.handle(first));
                    for request in requests.try_iter().take(64) {
                        SYNC.guard((), || self.handle(request));
                    }
                    drop(held);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let held = fork_guard::hold();
            SYNC.guard((), || {
                let now = clock::monotonic_ms();
                self.timers(now);
                self.gather(now);
                self.send_queued(now);
                // No session stays in it for a fork to inherit.
                super::keys::wipe_capacity(&mut self.scratch);
            });
            drop(held);
        }
    }

    /// How long to wait for a request before the next timer or paced send.
    fn wait_ms(&self, now: u64) -> u64 {
        if self.jobs.iter().any(|j| !j.queue.is_empty() || j.next_shard.is_some()) {
            return 5;
        }
        if !self.asked.is_empty() {
            return self.next_gather_ms.saturating_sub(now).clamp(1, GATHER_MS);
        }
        let next = self
            .peers
            .iter()
            .flat_map(|p| {
                [
                    Some(p.next_digest_ms),
                    p.pulling.map(|_| p.next_pull_ms),
                    p.pulling.filter(|_| p.pull_acked).map(|_| self.next_progress_ms),
                ]
            })
            .flatten()
            .min()
            .unwrap_or(now + 500);
        next.saturating_sub(now).clamp(1, 500)
    }

    /// Whether `to` names this node: one of its receiving addresses (any
    /// address at the port of one bound to all).
    fn is_me(&self, to: &SocketAddr) -> bool {
        self.own
            .iter()
            .any(|o| o == to || (o.ip().is_unspecified() && o.port() == to.port()))
    }

    fn ignored(&self) {
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

    fn handle(&mut self, request: Request) {
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

    /// Pulls and digests that are due.
    fn timers(&mut self, now: u64) {
        let before = self.peers.len();
        self.peers
            .retain(|p| !p.learned || now.saturating_sub(p.heard_ms) <= LEARNED_SILENCE_MS);
        if self.peers.len() < before && self.verbose {
            log::info!(
                "cache \"{}\": forgot {} silent nodes learnt through a relay",
                self.cache,
                before - self.peers.len()
            );
        }
        // Sessions coming in: the next digests within DIGEST_CHANGED_MS, not
        // after an idle interval (what is lost then is repaired seconds, not
        // an idle interval, later).
        let counters = self.store.counters();
        let activity = counters.inserts.load(Ordering::Relaxed) + counters.removed.load(Ordering::Relaxed);
        if activity != self.last_activity {
            self.last_activity = activity;
            for peer in &mut self.peers {
                peer.next_digest_ms = peer.next_digest_ms.min(now + DIGEST_CHANGED_MS);
            }
        }
        if now >= self.next_progress_ms {
            self.next_progress_ms = now + PULL_PROGRESS_MS;
            let acked: Vec<SocketAddr> = self
                .peers
                .iter()
                .filter(|p| p.pull_acked && p.pulling.is_some())
                .map(|p| p.addr)
                .collect();
            for addr in acked {
                let received = self
                    .pull_received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&addr)
                    .copied()
                    .unwrap_or(0);
                self.send_message(&Message::PullProgress { received }, addr);
            }
        }
        for i in 0..self.peers.len() {
            let addr = self.peers[i].addr;
            if let Some(attempts) = self.peers[i].pulling {
                if now >= self.peers[i].next_pull_ms {
                    if self.peers[i].pull_acked {
                        log::warn!(
                            "warm start of cache \"{}\": {addr} did not finish sending its sessions; repair fills \
                             in from it later",
                            self.cache
                        );
                        self.peers[i].pulling = None;
                    } else if attempts >= PULL_ATTEMPTS {
                        log::warn!(
                            "warm start of cache \"{}\": {addr} did not answer (not an sslcache node, or down); \
                             repair fills in from it later",
                            self.cache
                        );
                        self.peers[i].pulling = None;
                    } else {
                        self.peers[i].pulling = Some(attempts + 1);
                        self.peers[i].next_pull_ms = now + PULL_RETRY_MS;
                        let pull = Message::Pull {
                            instance: self.instance,
                        };
                        self.send_message(&pull, addr);
                    }
                }
            }
            if now < self.peers[i].next_digest_ms {
                continue;
            }
            // Nothing larger than it sent goes to a node not yet proven.
            if !self.peers[i].proven {
                continue;
            }
            let window = match self.own_window() {
                Ok(Some(window)) => window,
                // Every live session is older than one evicted: the next
                // digest when newer ones are held.
                Ok(None) => {
                    self.peers[i].next_digest_ms = now + DIGEST_CHANGED_MS;
                    continue;
                }
                Err(()) => {
                    self.peers[i].next_digest_ms = u64::MAX;
                    continue;
                }
            };
            let Some(snapshot) = self.snapshot_for(window, now) else {
                // No scan left this second: the next round.
                self.peers[i].next_digest_ms = now + DIGEST_FAST_MS;
                continue;
            };
            // What the digest says, not its window (which moves every second).
            let fingerprint = snapshot.xors.iter().fold(0u64, |acc, x| acc.rotate_left(7) ^ x);
            let discovering = now < self.discovering_until_ms;
            let peer = &mut self.peers[i];
            let changed = fingerprint != peer.last_digest;
            peer.last_digest = fingerprint;
            peer.next_digest_ms = now
                + if peer.relay {
                    // To find the nodes it relays to; repair is with them.
                    if discovering {
                        DIGEST_CHANGED_MS
                    } else {
                        DIGEST_IDLE_MS
                    }
                } else if now.saturating_sub(peer.differed_ms) < DIFFERENCES_FRESH_MS {
                    DIGEST_FAST_MS
                } else if changed {
                    DIGEST_CHANGED_MS
                } else {
                    DIGEST_IDLE_MS
                };
            let message = Message::Digest {
                window,
                xors: snapshot.xors,
            };
            self.send_message(&message, addr);
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
