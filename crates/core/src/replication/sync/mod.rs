//! The sync worker: warm-start pulls and anti-entropy repair (the messages
//! are [`super::digest`]'s), one thread per node in the master. It talks to
//! the unicast peers of the configuration from the node's own receiving
//! address, so that their answers arrive where it listens. Sessions learnt
//! from plain datagrams are never sent sealed (that would vouch for them);
//! sessions with a client identity never in the clear.
//!
//! Here: the worker's state, its loop ([`Worker::run`]) and the timers that
//! start pulls and digests. Its jobs, a file each:
//! - `handle`: a message that arrived: the recipient, proof and rate
//!   checks, then what each kind does;
//! - `pull`: warm start;
//! - `repair`: the digest exchange;
//! - `relay`: relays (udprepeaters) and the nodes learnt through them;
//! - `pace`: what is sent in answer, queued per peer and paced;
//! - `send`: one message or frame out: envelope, sealing, replier.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use super::counters::ReplicationCounters;
use super::digest::{self, Message, Snapshot};
use super::log_budget::LogBudget;
use super::routability::{Bucket, Cookies, PerAddress};
use super::seal::Sealer;
use super::transport::Replier;
use crate::boundary::Boundary;
use crate::clock;
use crate::os::{self, fork_guard};
use crate::record::Origin;
use crate::store::Store;

mod handle;
mod pace;
mod pull;
mod relay;
mod repair;
mod send;

use handle::{ASKS_BURST, ASKS_PER_SEC, COOKIES_PER_ADDRESS_PER_SEC, COOKIES_PER_SEC, PULLS_BURST, PULLS_PER_SEC};
pub use pace::SESSIONS_PER_SEC;
use pace::{Job, BURST};
use pull::{PULL_ATTEMPTS, PULL_PROGRESS_MS, PULL_RETRY_MS};
use relay::{DISCOVERY_MS, LEARNED_PULL_MS, LEARNED_SILENCE_MS};
use repair::{
    Asked, DIFFERENCES_FRESH_MS, DIGEST_CHANGED_MS, DIGEST_FAST_MS, DIGEST_IDLE_MS, GATHER_MS, SCANS_BURST,
    SCANS_PER_SEC,
};

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
