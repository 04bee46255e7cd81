//! The replication engine: what is sent, through which transports, and the
//! receiver loop that applies what arrives.
//!
//! Made in the master before the router processes fork (sockets bound,
//! transports made, keys taken), so every router process inherits it and
//! sends from the handshake path without waiting. Receiver threads start in
//! the master after the first fork (threads never live across uWSGI's
//! initial forks) and keep apart from later forks through
//! [`fork_guard`](crate::os::fork_guard).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::apply::{Applied, Applier};
use super::counters::{ReplicationCounters, SharedCounters};
use super::keys::{wipe, Key};
use super::log_budget::{LogBudget, Verdict};
use super::names::Names;
use super::redis;
use super::seal::{Opener, Sealer};
use super::sync::{Request, Worker};
use super::transport::{favour_this_thread, Inbound, Links, Pump, Transport};
use super::udp;
use super::wire::{self, Frame, Via};
use crate::boundary::Boundary;
use crate::clock;
use crate::config::Replication;
use crate::os::{self, fork_guard};
use crate::record::Origin;
use crate::shm::scrub;
use crate::store::Store;

/// Told what the receiver did with each datagram (stats, benchmarks).
pub trait Observer: Send + Sync {
    /// After a datagram was applied; `key` is the session id it named
    /// (empty when it could not be decoded).
    fn applied(&self, _key: &[u8], _outcome: Applied) {}
    /// Checked between datagrams and at least once a second.
    fn keep_running(&self) -> bool {
        true
    }
}

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// `ssl-verbose` logs datagrams, but never more lines than this a second:
/// the senders choose how many arrive.
const LOG_LINES_PER_SEC: u32 = 20;

static APPLYING: Boundary = Boundary::new("applying a replication datagram");
static RECEIVER_THREAD: Boundary = Boundary::new("a replication receiver thread");
static SYNC_THREAD: Boundary = Boundary::new("the sync thread");
static PUMP_THREAD: Boundary = Boundary::new("a replication writer thread");
/// Sync messages waiting for the sync thread, at most.
const SYNC_QUEUE: usize = 256;

/// Replication state of one node's process image.
pub struct Replicator {
    store: Arc<Store>,
    /// Session lifetime here, seconds: caps remote expiries.
    timeout: u32,
    transports: Vec<Box<dyn Transport>>,
    /// With a key file: seals what is sent, opens what arrives.
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    accept_plain: bool,
    /// Clock skew tolerated on sealed datagrams, seconds.
    max_skew: u64,
    /// Unicast peers: where warm starts pull from and digests go.
    sync_peers: Vec<SocketAddr>,
    /// Whether this node syncs at all (pulls, digests, answers).
    peer_sync: bool,
    cache: String,
    /// Log every datagram (uWSGI's `ssl-verbose`), within a budget.
    verbose: bool,
    counters: SharedCounters,
    /// Sessions of pull answers received, by sender (flow control).
    pull_received: Mutex<HashMap<SocketAddr, u64>>,
    /// Made before fork, handed to their threads by `start_receivers`.
    receivers: Mutex<Vec<Box<dyn Inbound>>>,
    pumps: Mutex<Vec<Box<dyn Pump>>>,
    started: AtomicBool,
}

impl Replicator {
    /// Binds the receiving sockets, makes the transports and takes the keys
    /// (which the caller read while it could: uWSGI drops privileges before
    /// the sockets can be made). `cache` names the cache in errors.
    pub fn new(
        settings: &Replication,
        keys: Option<Vec<Key>>,
        store: Arc<Store>,
        timeout: u32,
        verbose: bool,
        cache: &str,
    ) -> Result<Replicator, String> {
        // Every transport configured: UDP peers and multicast groups, Redis.
        let names = Arc::new(Names::new(cache, keys.as_deref().unwrap_or_default()));
        let mut links = udp::links(settings, cache)?;
        links.extend(redis::links(settings, cache, names)?);
        let Links {
            transports,
            inbounds: receivers,
            pumps,
        } = links;
        let counters = SharedCounters::create().map_err(|e| format!("cannot map the replication counters: {e}"))?;
        let (sealer, opener) = match (&settings.key_file, keys) {
            (Some(_), Some(keys)) if !keys.is_empty() => {
                let sealer = Sealer::new(&keys[0]);
                let opener = Opener::new(keys, settings.max_skew, clock::unix_ms()).refusing_own(sealer.sender());
                (Some(sealer), Some(opener))
            }
            (Some((option, path)), _) => {
                return Err(format!(
                    "{option} = {path}: the keys were not read before privileges dropped"
                ))
            }
            (None, _) => (None, None),
        };
        Ok(Replicator {
            store,
            timeout,
            transports,
            sealer,
            opener,
            accept_plain: settings.accept_plain,
            max_skew: settings.max_skew,
            sync_peers: match settings.peer_sync {
                true => settings
                    .nodes
                    .iter()
                    .filter(|n| !n.ip().is_multicast())
                    .copied()
                    .collect(),
                false => Vec::new(),
            },
            cache: cache.to_string(),
            peer_sync: settings.peer_sync,
            verbose,
            counters,
            receivers: Mutex::new(receivers),
            pumps: Mutex::new(pumps),
            pull_received: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
        })
    }

    pub fn counters(&self) -> &ReplicationCounters {
        self.counters.get()
    }

    /// In a process forked for the application (no other thread runs):
    /// drops the sealing and opening contexts, which hold keys derived
    /// from the cluster key. False if one was busy at the fork.
    pub fn forget_secrets(&self) -> bool {
        let sealer = self.sealer.as_ref().is_none_or(|s| s.forget());
        let opener = self.opener.as_ref().is_none_or(|o| o.forget());
        sealer && opener
    }

    /// Whether datagrams are sealed: this node's sender id and how many
    /// keys open.
    pub fn sealed_with(&self) -> Option<(u64, usize)> {
        Some((self.sealer.as_ref()?.sender(), self.opener.as_ref()?.key_count()))
    }

    /// Where the receivers listen (the port the kernel chose for `:0`),
    /// before they start.
    pub fn receiving_on(&self) -> Vec<String> {
        let receivers = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
        receivers.iter().map(|r| r.local()).collect()
    }

    /// Sends a session just stored here to every peer; one with a client
    /// identity only when sealing.
    pub fn stored(&self, id: &[u8], der: &[u8], expires: u64, origin: Origin) {
        if self.transports.is_empty() {
            return;
        }
        if self.sealer.is_none() && !origin.sendable_in_clear() {
            ReplicationCounters::bump(&self.counters().kept_identity);
            return;
        }
        let mut frame = Vec::with_capacity(der.len() + id.len() + 32);
        match wire::encode_set(id, der, expires, &mut frame) {
            Ok(()) => self.send(&frame),
            Err(_) => ReplicationCounters::bump(&self.counters().send_too_big),
        }
    }

    /// Tells every peer to forget a session.
    pub fn removed(&self, id: &[u8]) {
        if self.transports.is_empty() {
            return;
        }
        let mut frame = Vec::with_capacity(id.len() + 8);
        if wire::encode_delete(id, &mut frame).is_ok() {
            self.send(&frame);
        }
    }

    /// Sends a plain frame, sealed first when a key is configured (except
    /// to transports that seal later themselves).
    fn send(&self, frame: &[u8]) {
        if frame.len() > MAX_UDP_PAYLOAD {
            ReplicationCounters::bump(&self.counters().send_too_big);
            return;
        }
        let mut sealed = Vec::new();
        for transport in &self.transports {
            let datagram = match &self.sealer {
                Some(_) if transport.wants_plain() => frame,
                Some(sealer) => {
                    if sealed.is_empty() {
                        sealer.seal(frame, &self.counters().sealed, clock::unix_ms(), &mut sealed);
                    }
                    &sealed[..]
                }
                None => frame,
            };
            if datagram.len() > MAX_UDP_PAYLOAD {
                ReplicationCounters::bump(&self.counters().send_too_big);
                continue;
            }
            transport.send(datagram, self.counters());
        }
    }

    /// Starts one receiver thread per bound address and the sync thread,
    /// once (in the master, after the router processes forked). `pull`:
    /// this node starts without the sessions of a previous process image,
    /// so it asks its peers for theirs.
    pub fn start_receivers(self: &Arc<Self>, observer: Arc<dyn Observer>, pull: bool) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let inbounds = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|e| e.into_inner()));
        let pumps = std::mem::take(&mut *self.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        if !inbounds.is_empty() || !pumps.is_empty() {
            fork_guard::install();
        }
        for pump in pumps {
            let (this, observer) = (Arc::clone(self), Arc::clone(&observer));
            let what = pump.describe();
            let spawned = std::thread::Builder::new().name("sslcache-pump".into()).spawn(move || {
                PUMP_THREAD.guard((), || {
                    let _stack = scrub::register_this_thread_stack();
                    os::block_signals();
                    favour_this_thread();
                    pump.run(this.sealer.as_ref(), this.counters(), &|| observer.keep_running());
                })
            });
            if let Err(e) = spawned {
                log::error!("cannot start {what}: {e}");
            }
        }
        let requests = self.start_sync(&inbounds, &observer, pull);
        for inbound in inbounds {
            let (this, observer, requests) = (Arc::clone(self), Arc::clone(&observer), requests.clone());
            let local = inbound.local();
            let spawned = std::thread::Builder::new().name("sslcache-recv".into()).spawn(move || {
                RECEIVER_THREAD.guard((), || {
                    let _stack = scrub::register_this_thread_stack();
                    this.receive(inbound, &*observer, requests)
                })
            });
            if let Err(e) = spawned {
                log::error!("cannot start the receiver thread for {local}: {e}");
            }
        }
    }

    /// Starts the sync thread when this node has unicast peers and an
    /// address they can answer to; returns where to hand it requests.
    fn start_sync(
        self: &Arc<Self>,
        inbounds: &[Box<dyn Inbound>],
        observer: &Arc<dyn Observer>,
        pull: bool,
    ) -> Option<SyncSender<Request>> {
        let repliers: Vec<_> = inbounds.iter().filter_map(|i| i.replier()).collect();
        if repliers.is_empty() || !self.peer_sync {
            return None;
        }
        let (sender, requests) = mpsc::sync_channel(SYNC_QUEUE);
        let (this, observer) = (Arc::clone(self), Arc::clone(observer));
        let spawned = std::thread::Builder::new().name("sslcache-sync".into()).spawn(move || {
            SYNC_THREAD.guard((), || {
                let _stack = scrub::register_this_thread_stack();
                let worker = Worker::new(
                    &this.store,
                    this.timeout,
                    this.max_skew + 1,
                    this.sealer.as_ref(),
                    this.counters(),
                    &this.pull_received,
                    repliers,
                    &this.sync_peers,
                    pull,
                    this.verbose,
                    &this.cache,
                );
                worker.run(requests, &|| observer.keep_running());
            })
        });
        match spawned {
            Ok(_) => Some(sender),
            Err(e) => {
                log::error!("cannot start the sync thread (warm start, repair): {e}");
                None
            }
        }
    }

    /// The receiver loop, until `observer.keep_running()` says stop. Sync
    /// messages go to the sync thread through `requests`.
    fn receive(&self, mut inbound: Box<dyn Inbound>, observer: &dyn Observer, requests: Option<SyncSender<Request>>) {
        os::block_signals();
        favour_this_thread();
        let applier = Applier {
            store: &self.store,
            timeout: self.timeout,
            counters: self.counters(),
            opener: self.opener.as_ref(),
            accept_plain: self.accept_plain,
            tombstone_secs: self.max_skew + 1,
        };
        let mut buf = vec![0u8; 65536];
        let mut key = Vec::with_capacity(64);
        let mut sync_body = Vec::new();
        let mut sync_origin = None;
        let mut budget = LogBudget::new(LOG_LINES_PER_SEC, 1000);
        while observer.keep_running() {
            let (n, from, record) = match inbound.next(&mut buf, self.counters()) {
                Ok(Some(received)) => (received.len, received.from, received.record),
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // Not while the master forks: a child must not inherit a lock
            // (OpenSSL's, malloc's) this thread holds mid-work.
            let held = fork_guard::hold();
            if let (Some(name), Some(names)) = (&record, inbound.names()) {
                let outcome = APPLYING.guard(None, || {
                    Some(applier.apply_record(&buf[..n], name, names, clock::unix_ms()))
                });
                wipe(&mut buf[..n]);
                drop(held);
                if let Some(outcome) = outcome {
                    observer.applied(&[], outcome);
                }
                continue;
            }
            let applied = APPLYING.guard(None, || {
                key.clear();
                sync_origin = None;
                let outcome = applier.apply_with(&buf[..n], clock::unix_ms(), |frame, origin| {
                    key.extend_from_slice(frame.key());
                    match frame {
                        Frame::Sync { body } => {
                            sync_body.clear();
                            sync_body.extend_from_slice(body);
                            sync_origin = Some(origin);
                        }
                        Frame::Set { via: Via::Pulled, .. } => {
                            if let Some(from) = from {
                                let mut received = self.pull_received.lock().unwrap_or_else(|e| e.into_inner());
                                // Bounded: anyone may send such sets.
                                if received.len() < 1024 || received.contains_key(&from) {
                                    *received.entry(from).or_default() += 1;
                                }
                            }
                        }
                        _ => {}
                    }
                });
                if outcome == Applied::Stored {
                    crate::trace::applied(&key);
                }
                if outcome != Applied::Sync {
                    observer.applied(&key, outcome);
                }
                Some(outcome)
            });
            // Plain datagrams carry sessions in clear: nothing of them stays
            // in this buffer for a later fork to inherit.
            wipe(&mut buf[..n]);
            drop(held);
            if let (Some(Applied::Sync), Some(origin), Some(from)) = (applied, sync_origin, from) {
                let request = Request {
                    from,
                    origin,
                    body: std::mem::take(&mut sync_body),
                };
                let handed = requests.as_ref().map(|r| r.try_send(request));
                if !matches!(handed, Some(Ok(()))) {
                    ReplicationCounters::bump(&self.counters().sync_ignored);
                }
                if let Some(Err(TrySendError::Disconnected(_))) = handed {
                    log::error!("the sync thread stopped; sync messages are ignored from now on");
                }
            }
            if let (Some(outcome), true) = (applied, self.verbose) {
                match budget.check(clock::monotonic_ms()) {
                    Verdict::Log { suppressed: 0 } => log::info!("replication datagram of {n} bytes: {outcome:?}"),
                    Verdict::Log { suppressed } => log::info!(
                        "replication datagram of {n} bytes: {outcome:?} \
                         ({suppressed} datagram lines held back before this one)"
                    ),
                    Verdict::Suppress => {}
                }
            }
        }
    }

    /// The startup line: where it receives and sends, and how.
    pub fn summary(&self, settings: &Replication, cache: &str) -> String {
        let has_redis = !settings.redis.is_empty() || !settings.redis_cluster.is_empty();
        let receiving = if settings.servers.is_empty() && !has_redis {
            "nowhere".to_string()
        } else {
            let addrs: Vec<String> = settings
                .servers
                .iter()
                .map(|a| a.to_string())
                .chain(settings.redis.iter().map(|r| r.shown.clone()))
                .chain((!settings.redis_cluster.is_empty()).then(|| {
                    let seeds: Vec<&str> = settings.redis_cluster.iter().map(|r| r.shown.as_str()).collect();
                    format!("the Redis Cluster of {}", seeds.join(", "))
                }))
                .collect();
            addrs.join(", ")
        };
        let sending = if self.transports.is_empty() {
            "nowhere".to_string()
        } else {
            let peers: Vec<String> = self.transports.iter().map(|t| t.describe()).collect();
            peers.join(", ")
        };
        let mode = match self.sealed_with() {
            Some((sender, keys)) => format!(
                "sealed with AES-256-GCM (sender {sender:016x}, {keys} key{} to open, clock skew up to {}s){}",
                if keys == 1 { "" } else { "s" },
                settings.max_skew,
                if settings.accept_plain {
                    "; plain datagrams accepted too (ssl-sessions-accept-plain)"
                } else {
                    ""
                }
            ),
            None => "plain stock uWSGI cache datagrams".to_string(),
        };
        let sync = if has_redis && self.sync_peers.is_empty() {
            "sessions of record in Redis, read back at start and after each reconnection".to_string()
        } else if !settings.peer_sync {
            "no warm start or repair (ssl-sessions-peer-sync = false)".to_string()
        } else if self.sync_peers.is_empty() || settings.servers.iter().all(|s| s.ip().is_multicast()) {
            "no warm start or repair (they need a unicast peer and a unicast receiving address)".to_string()
        } else {
            "warm start and repair with the unicast peers".to_string()
        };
        let sync = match (has_redis, self.sync_peers.is_empty()) {
            (true, false) => sync + "; sessions of record in Redis, read back at start and after each reconnection",
            _ => sync,
        };
        let tls = redis::tls_summary(settings).map(|t| t + "; ").unwrap_or_default();
        format!(
            "replication of cache \"{cache}\": receiving on {receiving}; sending to {sending}; {mode}; {sync}; \
             {tls}counters in the stats server's metrics sslcache.{cache}.*"
        )
    }
}

/// Why plain replication is a risk, logged at startup when nothing is sealed.
pub const PLAIN_WARNING: &str = "session replication is unauthenticated and readable on the network: anyone who \
    can reach the receiving port can plant sessions, anyone on the path reads their master secrets (set \
    cache-udp-key, or udp_key= in cache2, to seal it); sessions from plain datagrams never resume where client \
    certificates are verified and never carry one; sessions with a client identity (a client certificate, or made \
    where client certificates are verified) are never sent in the clear";

#[cfg(test)]
mod tests;
