//! The udprepeater (the seed's gateway that upstream never shipped): it
//! forwards every cache datagram it receives (stock sets and deletes,
//! sslcache's sync messages, sealed datagrams: unchanged and unread) to
//! the other nodes subscribed to the sender's cluster, so that each node
//! names one cache UDP node, the repeater, and joins and leaves by uWSGI's
//! own subscription client (`subscribe2 = server=...,key=CLUSTER,addr=...`).
//!
//! It holds no cluster key: a sealed cluster stays sealed end to end. It
//! forwards only what comes from a live subscriber (no amplification for a
//! stranger; at most the subscribers of its clusters, a bounded number, for
//! a member), within a rate per source, never back to the sender. With
//! uWSGI's `subscriptions-sign-check` only signed subscriptions count, and
//! a node's timestamps only move forward.
//!
//! One loop in one process (a uWSGI gateway, respawned by the master): the
//! data socket, the subscription socket, its stats server.

pub mod members;
pub mod subscription;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock;
use crate::config::RepeaterSettings;
use crate::os;
use crate::replication::log_budget::{LogBudget, Verdict};
use crate::replication::routability::Bucket;
use crate::replication::wire::Format;
use crate::shm::{Concurrent, Shared, SharedPod};
use members::{Limits, Members, Subscribed};
use subscription::{Malformed, SignCheck, SignRefusal};

/// The repeater's counters, in shared memory (uWSGI metrics
/// `sslcache.udprepeater.<name>`, read by the master).
#[repr(C)]
#[derive(Default)]
pub struct RepeaterCounters {
    /// Datagrams received on the data socket, and their bytes.
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Datagrams sent on to subscribers (one per subscriber), and bytes.
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    /// Dropped: from no subscriber of any cluster.
    pub unknown_source: AtomicU64,
    /// Dropped: not a cache datagram (plain or sealed).
    pub malformed: AtomicU64,
    /// Dropped: over the rate of its source.
    pub over_rate: AtomicU64,
    /// Sends that failed (socket buffer full, unreachable).
    pub send_failed: AtomicU64,
    /// Subscription packets received, members added, left, timed out.
    pub subscriptions: AtomicU64,
    pub subscribed: AtomicU64,
    pub unsubscribed: AtomicU64,
    pub expired: AtomicU64,
    /// Subscriptions refused: malformed, unsigned, forged or without a key
    /// file, an old timestamp, a full cluster or too many clusters.
    pub refused_malformed: AtomicU64,
    pub refused_unsigned: AtomicU64,
    pub refused_forged: AtomicU64,
    pub refused_stale: AtomicU64,
    pub refused_full: AtomicU64,
    /// Members now, of all clusters.
    pub subscribers: AtomicU64,
}

// SAFETY: repr(C), atomics only, zero is a valid value of each.
unsafe impl SharedPod for RepeaterCounters {}
// SAFETY: every field is an AtomicU64, changed only through atomic
// operations: shared references while other processes count are sound.
unsafe impl Concurrent for RepeaterCounters {}

impl RepeaterCounters {
    pub fn fields(&self) -> [(&'static str, &AtomicU64); 18] {
        [
            ("received", &self.received),
            ("received_bytes", &self.received_bytes),
            ("forwarded", &self.forwarded),
            ("forwarded_bytes", &self.forwarded_bytes),
            ("unknown_source", &self.unknown_source),
            ("malformed", &self.malformed),
            ("over_rate", &self.over_rate),
            ("send_failed", &self.send_failed),
            ("subscriptions", &self.subscriptions),
            ("subscribed", &self.subscribed),
            ("unsubscribed", &self.unsubscribed),
            ("expired", &self.expired),
            ("refused_malformed", &self.refused_malformed),
            ("refused_unsigned", &self.refused_unsigned),
            ("refused_forged", &self.refused_forged),
            ("refused_stale", &self.refused_stale),
            ("refused_full", &self.refused_full),
            ("subscribers", &self.subscribers),
        ]
    }
}

pub type SharedRepeaterCounters = Shared<RepeaterCounters>;

/// A repeater with its sockets bound (in the master, before the fork).
pub struct Repeater {
    settings: RepeaterSettings,
    data: UdpSocket,
    subscriptions: UdpSocket,
    stats: Option<TcpListener>,
    sign: Option<SignCheck>,
}

fn bind_udp(option: &str, addr: SocketAddr) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(addr).map_err(|e| format!("{option} = {addr}: cannot bind: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("{option} = {addr}: {e}"))?;
    // Room for bursts while the gateway waits for a CPU (as the nodes'
    // receiving sockets), and for the copies it sends.
    os::big_receive_buffer(socket.as_fd(), 4 << 20);
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(4 << 20);
    Ok(socket)
}

impl Repeater {
    pub fn bind(settings: RepeaterSettings) -> Result<Repeater, String> {
        let sign = match &settings.sign_check {
            Some(spec) => Some(SignCheck::new("subscriptions-sign-check", spec)?),
            None => None,
        };
        let data = bind_udp("udprepeater", settings.data)?;
        let subscriptions = bind_udp("udprepeater-subscription-server", settings.subscription)?;
        let stats = match settings.stats {
            Some(addr) => {
                let l = TcpListener::bind(addr).map_err(|e| format!("udprepeater-stats = {addr}: cannot bind: {e}"))?;
                l.set_nonblocking(true)
                    .map_err(|e| format!("udprepeater-stats = {addr}: {e}"))?;
                Some(l)
            }
            None => None,
        };
        Ok(Repeater {
            settings,
            data,
            subscriptions,
            stats,
            sign,
        })
    }

    /// Its descriptors (the host keeps uWSGI from closing them).
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let mut fds = vec![self.data.as_raw_fd(), self.subscriptions.as_raw_fd()];
        fds.extend(self.stats.as_ref().map(|l| l.as_raw_fd()));
        fds
    }

    /// The line logged at startup.
    pub fn summary(&self) -> String {
        let s = &self.settings;
        format!(
            "udprepeater on {}: subscriptions on {}{}; at most {} clusters of {} subscribers, {} datagrams/s per \
             source, subscribers dropped after {} s without an announce; signed subscriptions: {}",
            s.data,
            s.subscription,
            s.stats.map(|a| format!(", stats on {a}")).unwrap_or_default(),
            s.max_clusters,
            s.max_subscribers,
            s.per_source_per_sec,
            s.tolerance_secs,
            if self.sign.is_some() { "required" } else { "no" },
        )
    }

    /// The warning logged at startup when anyone may subscribe.
    pub fn warning(&self) -> Option<&'static str> {
        self.sign.is_none().then_some(
            "udprepeater: subscriptions are not signed (no subscriptions-sign-check): whoever can reach the \
             subscription server receives every datagram of the cluster it names; seal the clusters \
             (cache-udp-key) so that such a subscriber gets sealed bytes only, or sign the subscriptions",
        )
    }

    /// Forwards until the process is killed (a uWSGI gateway is, on
    /// shutdown and reload).
    pub fn run(self, counters: &RepeaterCounters) -> ! {
        // As the nodes' receiving threads: run first when a datagram comes,
        // not behind busy processes (a flood still cannot take a core).
        let favour = os::favour_latency();
        log::info!(
            "udprepeater: forwarding (pid {}, nice {}{})",
            std::process::id(),
            favour.nice,
            if favour.short_slice { ", short slice" } else { "" }
        );
        let mut state = Loop::new(self, counters);
        loop {
            state.step();
        }
    }
}

/// The running repeater.
struct Loop<'a> {
    r: Repeater,
    counters: &'a RepeaterCounters,
    members: Members,
    rates: HashMap<IpAddr, Bucket>,
    targets: Vec<SocketAddr>,
    buf: Vec<u8>,
    ready: Vec<bool>,
    next_expiry_ms: u64,
    refusals_log: LogBudget,
}

/// A wait between checks for silent subscribers, at most.
const EXPIRY_CHECK_MS: u64 = 500;
/// Datagrams handled from one socket before the others get a turn.
const BATCH: usize = 256;

impl<'a> Loop<'a> {
    fn new(r: Repeater, counters: &'a RepeaterCounters) -> Loop<'a> {
        let s = &r.settings;
        let limits = Limits {
            per_cluster: s.max_subscribers,
            clusters: s.max_clusters,
            tolerance_ms: s.tolerance_secs * 1000,
        };
        Loop {
            r,
            counters,
            members: Members::new(limits),
            rates: HashMap::new(),
            targets: Vec::new(),
            buf: vec![0; 65536],
            ready: Vec::new(),
            next_expiry_ms: 0,
            refusals_log: LogBudget::new(5, 60_000),
        }
    }

    fn step(&mut self) {
        let mut fds = vec![self.r.data.as_fd(), self.r.subscriptions.as_fd()];
        if let Some(l) = &self.r.stats {
            fds.push(l.as_fd());
        }
        if let Err(e) = os::wait_readable(&fds, EXPIRY_CHECK_MS as i32, &mut self.ready) {
            log::error!("udprepeater: poll: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let ready = std::mem::take(&mut self.ready);
        if ready.get(1) == Some(&true) {
            self.subscriptions();
        }
        if ready.first() == Some(&true) {
            self.forward();
        }
        if ready.get(2) == Some(&true) {
            self.serve_stats();
        }
        self.ready = ready;
        let now = clock::monotonic_ms();
        if now >= self.next_expiry_ms {
            self.next_expiry_ms = now + EXPIRY_CHECK_MS;
            for (key, addr) in self.members.expire(now) {
                Self::bump(&self.counters.expired);
                log::info!(
                    "udprepeater: cluster \"{}\": {addr} removed (no announce in {} s)",
                    String::from_utf8_lossy(&key),
                    self.members.limits().tolerance_ms / 1000
                );
            }
            self.counters
                .subscribers
                .store(self.members.len() as u64, Ordering::Relaxed);
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn forward(&mut self) {
        let c = self.counters;
        for _ in 0..BATCH {
            let (len, from) = match self.r.data.recv_from(&mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            Self::bump(&c.received);
            c.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
            let datagram = &self.buf[..len];
            if len < 4 || !matches!(Format::of(datagram), Format::Plain | Format::Sealed) {
                Self::bump(&c.malformed);
                continue;
            }
            if !self.members.route(from, &mut self.targets) {
                Self::bump(&c.unknown_source);
                continue;
            }
            let now = clock::monotonic_ms();
            if self.rates.len() > 4 * self.members.len() + 16 {
                self.rates.clear();
            }
            let per_sec = self.r.settings.per_source_per_sec;
            let bucket = self
                .rates
                .entry(from.ip())
                .or_insert_with(|| Bucket::new(per_sec, per_sec / 10 + 1, now));
            if !bucket.take(now) {
                Self::bump(&c.over_rate);
                continue;
            }
            // Several subscribers a system call.
            let sent = os::send_to_many(self.r.data.as_fd(), datagram, &self.targets);
            c.forwarded.fetch_add(sent as u64, Ordering::Relaxed);
            c.forwarded_bytes.fetch_add((sent * len) as u64, Ordering::Relaxed);
            c.send_failed
                .fetch_add((self.targets.len() - sent) as u64, Ordering::Relaxed);
        }
    }

    fn subscriptions(&mut self) {
        let c = self.counters;
        for _ in 0..BATCH {
            let len = match self.r.subscriptions.recv(&mut self.buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            Self::bump(&c.subscriptions);
            let buf = std::mem::take(&mut self.buf);
            self.subscription(&buf[..len]);
            self.buf = buf;
        }
    }

    fn refused(&mut self, counter: &AtomicU64, why: String) {
        Self::bump(counter);
        if let Verdict::Log { suppressed } = self.refusals_log.check(clock::monotonic_ms()) {
            let held = if suppressed > 0 {
                format!(" ({suppressed} more refusals not logged)")
            } else {
                String::new()
            };
            log::warn!("udprepeater: subscription refused: {why}{held}");
        }
    }

    fn subscription(&mut self, packet: &[u8]) {
        let c = self.counters;
        let s = match subscription::parse(packet) {
            Ok(s) => s,
            Err(e) => {
                let why = match e {
                    Malformed::Header | Malformed::Keyvals => "not a uWSGI subscription packet",
                    Malformed::Missing => "no key or no address",
                    Malformed::Address => "its address is not IP:PORT",
                    Malformed::Unix => "its unix field is not a number",
                    Malformed::SignNotLast => "its sign field is not the last",
                };
                return self.refused(&c.refused_malformed, why.into());
            }
        };
        let key = String::from_utf8_lossy(s.key).into_owned();
        let addr = s.address;
        let own = [self.r.settings.data, self.r.settings.subscription];
        if own
            .iter()
            .any(|o| *o == addr || (o.port() == addr.port() && o.ip().is_unspecified()))
        {
            return self.refused(
                &c.refused_malformed,
                format!("cluster \"{key}\": {addr} is this repeater's own address (a loop)"),
            );
        }
        let mut unix = 0;
        if let Some(check) = &mut self.r.sign {
            match check.verify(&s) {
                Ok(()) => {}
                Err(SignRefusal::Unsigned) => {
                    return self.refused(
                        &c.refused_unsigned,
                        format!("cluster \"{key}\": {addr} did not sign it"),
                    );
                }
                Err(SignRefusal::NoKey) => {
                    let path = check.key_path(s.key);
                    return self.refused(
                        &c.refused_forged,
                        format!("cluster \"{key}\": no public key in {}", path.display()),
                    );
                }
                Err(SignRefusal::Forged) => {
                    return self.refused(
                        &c.refused_forged,
                        format!("cluster \"{key}\": {addr}'s signature does not verify"),
                    );
                }
            }
            unix = s.unix.unwrap_or(0);
            let now = clock::unix_secs();
            let tolerance = self.members.limits().tolerance_ms / 1000;
            if unix + tolerance < now || unix > now + tolerance {
                return self.refused(
                    &c.refused_stale,
                    format!("cluster \"{key}\": {addr}'s timestamp {unix} is {tolerance} s or more off this clock"),
                );
            }
        }
        if s.unsubscribe {
            if self.members.member(s.key, addr).is_some_and(|m| unix < m.unix) {
                return self.refused(
                    &c.refused_stale,
                    format!("cluster \"{key}\": an old unsubscribe of {addr}"),
                );
            }
            if self.members.unsubscribe(s.key, addr) {
                Self::bump(&c.unsubscribed);
                log::info!("udprepeater: cluster \"{key}\": {addr} unsubscribed");
            }
        } else {
            let (now_ms, now) = (clock::monotonic_ms(), clock::unix_secs());
            match self.members.subscribe(s.key, addr, unix, now_ms, now) {
                Subscribed::New => {
                    Self::bump(&c.subscribed);
                    log::info!("udprepeater: cluster \"{key}\": new subscriber {addr}");
                }
                Subscribed::Refreshed => {}
                Subscribed::Replayed => {
                    return self.refused(
                        &c.refused_stale,
                        format!("cluster \"{key}\": {addr}'s timestamp {unix} is older than its last"),
                    );
                }
                Subscribed::Full => {
                    let n = self.members.limits().per_cluster;
                    return self.refused(
                        &c.refused_full,
                        format!("cluster \"{key}\" has its {n} subscribers (udprepeater-max-subscribers): {addr}"),
                    );
                }
                Subscribed::TooManyClusters => {
                    let n = self.members.limits().clusters;
                    return self.refused(
                        &c.refused_full,
                        format!("{n} clusters already (udprepeater-max-clusters): \"{key}\" from {addr}"),
                    );
                }
            }
        }
        c.subscribers.store(self.members.len() as u64, Ordering::Relaxed);
    }

    /// The stats server: one JSON document per connection, as uWSGI's.
    fn serve_stats(&mut self) {
        let Some(listener) = &self.r.stats else { return };
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = stream.write_all(self.stats_json().as_bytes());
        }
    }

    fn stats_json(&self) -> String {
        let s = &self.r.settings;
        let counters: serde_json::Map<String, serde_json::Value> = self
            .counters
            .fields()
            .iter()
            .map(|(n, v)| (n.to_string(), v.load(Ordering::Relaxed).into()))
            .collect();
        let clusters: Vec<serde_json::Value> = self
            .members
            .clusters
            .iter()
            .map(|c| {
                serde_json::json!({
                    "key": String::from_utf8_lossy(&c.key),
                    "subscribers": c.members.iter().map(|m| serde_json::json!({
                        "address": m.addr.to_string(),
                        "last_announce": m.announced_unix,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "udprepeater": {
                "pid": std::process::id(),
                "address": s.data.to_string(),
                "subscription_server": s.subscription.to_string(),
                "signed_subscriptions": self.r.sign.is_some(),
                "clusters": clusters,
                "counters": counters,
            }
        })
        .to_string()
    }
}
