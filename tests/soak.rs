//! `make soak` (issue 19, item 1): a long run of three nodes behind HAProxy
//! under a steady load of resuming clients and a fault schedule that never
//! stops, in two configurations one after the other, each given half of
//! `SOAK_MINUTES` (default 10): (a) sealed UDP replication, (b) Redis
//! (a redis-server the soak starts; plain values). Not part of `make test`:
//! the test is `#[ignore]`d, `make soak` runs it with
//! `cargo test --release --test soak -- --ignored --nocapture`.
//!
//! Everything runs in a network namespace of the soak's own (loopback
//! only), so that iptables can drop replication datagrams for a while.
//!
//! - **Load** (through HAProxy, round robin with health checks and
//!   `option redispatch`, as a balancer is run in front of nodes that
//!   restart): a TLS 1.2 client without tickets and a TLS 1.3 client, each
//!   sending a request and closing with close_notify, and a client that
//!   drops its connections without close_notify (TLS 1.2 and 1.3 in turn);
//!   each client identity makes one full handshake and then resumes its
//!   session for a few dozen connections, a few ms apart. During quiet
//!   phases a sampler also makes full handshakes directly on each node in
//!   turn and keeps the sessions for the check of lost sessions.
//! - **Faults**, cycling, with a quiet phase (no fault) between two: a
//!   burst of full handshakes larger than the store (`CACHE_ITEMS`), so it
//!   evicts; SIGKILL of one router process (uWSGI respawns it); graceful
//!   reload (SIGHUP) of node 1's master; brutal reload (SIGTERM) of node 2's;
//!   `kill -9` of node 3's master (its router processes die with it; any
//!   that would not are SIGKILLed by pid) and a restart with the same ini;
//!   in (a) 30% of the datagrams to the replication port dropped, and a
//!   peer sending garbage and replaying datagrams captured on the loopback;
//!   in (b) Redis stopped (by pid) and started again.
//! - **Output**: one line per phase, then a summary: resumption outside the
//!   fault phases (goal 99% or more), failed handshakes other than those of
//!   connections open while a process was being killed (goal 0), sessions
//!   that never became resumable anywhere (goal 0), and the resident memory,
//!   descriptors and shared memory of the long-lived processes (node
//!   masters, HAProxy, Redis) from the start to the end (goal: 5% growth at
//!   most; asserted for runs of 10 minutes or more only, printed always). A
//!   node's shared memory is its store's memory file, a high-water mark
//!   that creeps up as shards fill unevenly from one eviction burst to the
//!   next: it is held to the most a correct store can hold instead
//!   (`store_bound_kb`), which a leak passes and a high-water never does.
//!   Checked besides the goals: no replication storm (in a quiet
//!   phase no node applies more than twice the sessions the cluster made,
//!   plus `STORM_SLACK`), every garbage datagram refused and counted, and
//!   every captured session datagram replayed to the node that sent it
//!   refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{SslSession, SslSessionRef, SslStream};
use sslcache_testkit::*;

/// Sessions the store of each node holds: small, so that a burst of full
/// handshakes evicts.
const CACHE_ITEMS: usize = 2000;
/// `ssl-sessions-timeout`: short, so that what Redis and the stores hold
/// levels off within the first minute (a growing set of live sessions is
/// not a leak), and the sessions of an eviction burst are gone well before
/// the end of a short run (the lost-session check needs stores that no
/// longer evict).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Sessions an eviction phase makes: as many TLS 1.2 full handshakes (one
/// session each) as TLS 1.3 ones (two tickets each), so that the stores
/// fill with sessions of both sizes (their memory peaks before the
/// baseline, not later).
const EVICTION_BURST: usize = CACHE_ITEMS * 6 / 5;
/// Pause of the load clients between two connections: TLS 1.3 slower, as
/// each of its resumptions stores a new session (a new ticket) and the load
/// alone must leave the stores well below `CACHE_ITEMS`.
const PACE_TLS12: Duration = Duration::from_millis(10);
const PACE_TLS13: Duration = Duration::from_millis(30);
const PACE_DROP: Duration = Duration::from_millis(20);
/// Pause of the sampler between two full handshakes.
const SAMPLE_PACE: Duration = Duration::from_millis(200);
/// Connections of one client identity (a full handshake, then resumptions).
const IDENTITY_CONNECTIONS: usize = 40;
const DROP_IDENTITY_CONNECTIONS: usize = 20;
/// A session made on a node less than this before that node's master was
/// killed may have died with it (not yet sent, or sent and dropped): it is
/// not counted as lost.
const REPLICATION_WINDOW: Duration = Duration::from_secs(1);
/// Sessions older than this at the check are left out (they would expire
/// during it).
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(20);
/// At most this many sampled sessions are checked per configuration.
const SAMPLES_CHECKED: usize = 150;
/// Between the end of the load of a fault phase and the fault: connections
/// the sampler started as the quiet phase ended are under way.
const GRACE: Duration = Duration::from_millis(50);
const KEY: [u8; 32] = [0x5a; 32];
const RELOAD_MARKER: &str = "sessions came back from before the reload";
const RECORD_MARKER: &str = "sessions of record from";
/// Without loss, a node applies each session made elsewhere once (Redis:
/// every session, its own too); in a quiet phase it may apply at most twice
/// the sessions the cluster made, plus this (counters read up to a second
/// late, repairs of a fault phase just before).
const STORM_SLACK: u64 = 200;
/// The growth goal, in percent.
const MAX_GROWTH: f64 = 5.0;
/// The growth goal is asserted for runs of at least this many minutes.
const GROWTH_ASSERTED_FROM_MINUTES: f64 = 10.0;

fn soak_minutes() -> f64 {
    let minutes = std::env::var("SOAK_MINUTES")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("SOAK_MINUTES={v:?}: a number of minutes"))
        })
        .unwrap_or(10.0);
    assert!(minutes > 0.0, "SOAK_MINUTES must be positive");
    minutes
}

// ---------------------------------------------------------------------------
// The schedule

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    SealedUdp,
    Redis,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::SealedUdp => "(a) sealed UDP replication",
            Mode::Redis => "(b) replication through Redis",
        }
    }

    /// The faults of cycle `n`, in order (a quiet phase follows each).
    /// What fills memory by design comes before the memory baseline (the
    /// first quiet phase after the first eviction, a minute in): eviction
    /// (the stores full) and, with Redis, the outage (the masters keep the
    /// sessions made meanwhile in a backlog); the master that is killed,
    /// last (its successor is followed for what is left).
    fn cycle(self, n: usize) -> Vec<Fault> {
        let middle = [Fault::KillRouter(n % 3 + 1), Fault::Graceful(1), Fault::Brutal(2)];
        match self {
            Mode::SealedUdp => [
                &[Fault::Eviction][..],
                &middle,
                &[Fault::Loss, Fault::Garbage, Fault::KillMaster(3)],
            ]
            .concat(),
            Mode::Redis => [
                &[Fault::RedisOutage, Fault::Eviction][..],
                &middle,
                &[Fault::KillMaster(3)],
            ]
            .concat(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Quiet,
    Eviction,
    KillRouter(usize),
    Graceful(usize),
    Brutal(usize),
    KillMaster(usize),
    Loss,
    Garbage,
    RedisOutage,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Quiet => "quiet".into(),
            Fault::Eviction => format!("eviction({EVICTION_BURST}-sessions)"),
            Fault::KillRouter(i) => format!("sigkill-router(node{i})"),
            Fault::Graceful(i) => format!("graceful-reload-sighup(node{i})"),
            Fault::Brutal(i) => format!("brutal-reload-sigterm(node{i})"),
            Fault::KillMaster(i) => format!("kill-9-master(node{i})"),
            Fault::Loss => "udp-loss-30%".into(),
            Fault::Garbage => "garbage-and-replay".into(),
            Fault::RedisOutage => "redis-outage".into(),
        }
    }
}

/// A process being killed (or reloaded): from the signal until it (or the
/// router processes a reload replaces) was gone.
#[derive(Clone, Copy)]
struct Kill {
    node: usize,
    master: bool,
    start: Instant,
    end: Instant,
}

struct Phase {
    no: usize,
    fault: Fault,
    start: Instant,
    end: Instant,
    kills: Vec<Kill>,
    detail: String,
    /// Sessions the nodes evicted during the phase (as their counters
    /// showed at its start and end: up to a second late).
    evicted: u64,
    /// Sessions each node applied from replication during the phase.
    applied: [u64; 3],
}

// ---------------------------------------------------------------------------
// Connections

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Offered a session.
    Resume,
    /// A new client identity: a full handshake.
    Full,
    /// The sampler's full handshakes (direct to a node).
    Sample,
    /// An eviction burst's full handshakes.
    Burst,
}

struct Rec {
    kind: Kind,
    tls13: bool,
    /// Closed without close_notify.
    dropped: bool,
    start: Instant,
    end: Instant,
    /// The handshake completed.
    ok: bool,
    resumed: bool,
    handshake: Duration,
    error: Option<String>,
}

/// How a connection ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    /// `GET /`, the response, close_notify.
    Request,
    /// No request; the TCP socket closed without close_notify (after the
    /// TLS 1.3 ticket came).
    Drop,
    /// close_notify right after the handshake.
    Bare,
}

struct Done {
    resumed: bool,
    handshake: Duration,
    /// The session to offer next, if the connection left a usable one.
    session: Option<SslSession>,
}

extern "C" {
    fn SSL_SESSION_is_resumable(s: *const openssl_sys::SSL_SESSION) -> libc::c_int;
}

fn is_resumable(session: &SslSessionRef) -> bool {
    // An openssl-crate reference to an OpenSSL object is the object's
    // address (foreign-types' `as_ptr`).
    let raw = session as *const SslSessionRef as *const openssl_sys::SSL_SESSION;
    // SAFETY: a valid session, only read.
    unsafe { SSL_SESSION_is_resumable(raw) == 1 }
}

/// The session of `stream` as a copy of its own, if it can be offered: a
/// client connection freed without close_notify marks its own session
/// object not resumable. A TLS 1.3 connection that received no new ticket
/// still shows the ticket it used (used once): none then.
fn usable_session(stream: &SslStream<TcpStream>, offered: Option<&[u8]>, tls13: bool) -> Option<SslSession> {
    let s = stream.ssl().session()?;
    if !is_resumable(s) || (tls13 && offered == Some(s.id())) {
        return None;
    }
    SslSession::from_der(&s.to_der().ok()?).ok()
}

/// One connection to `addr`, offering `offer`; bounded by the 5 s timeouts
/// of the harness's client.
fn connect_once(client: &Client, addr: SocketAddr, offer: Option<&SslSession>, close: Close) -> Result<Done, String> {
    let started = Instant::now();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = client.handshake_on(tcp, offer).map_err(|e| format!("handshake: {e}"))?;
    let handshake = started.elapsed();
    let resumed = stream.ssl().session_reused();
    let offered = offer.map(|s| s.id().to_vec());
    let tls13 = client.proto == Proto::Tls13;
    let session = match close {
        Close::Request => {
            let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut response = Vec::new();
            let mut chunk = [0u8; 1024];
            let deadline = Instant::now() + Duration::from_secs(5);
            while !response.ends_with(b"hello") && Instant::now() < deadline {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&chunk[..n]),
                }
            }
            let session = usable_session(&stream, offered.as_deref(), tls13);
            let _ = stream.shutdown();
            session
        }
        Close::Drop => {
            if tls13 {
                // The ticket follows the handshake: read until it came
                // (at most 500 ms), then drop.
                let _ = stream.get_ref().set_read_timeout(Some(Duration::from_millis(10)));
                let mut buf = [0u8; 256];
                for _ in 0..50 {
                    if usable_session(&stream, offered.as_deref(), tls13).is_some() {
                        break;
                    }
                    let _ = stream.ssl_read(&mut buf);
                }
            }
            let session = usable_session(&stream, offered.as_deref(), tls13);
            // No close_notify: the socket goes away under the TLS stream.
            drop(stream);
            session
        }
        Close::Bare => {
            let session = usable_session(&stream, offered.as_deref(), tls13);
            let _ = stream.shutdown();
            session
        }
    };
    Ok(Done {
        resumed,
        handshake,
        session,
    })
}

/// A session the sampler made during a quiet phase, directly on a node.
struct Sample {
    start: Instant,
    end: Instant,
    node: usize,
    proto: Proto,
    session: SslSession,
}

/// What the load threads share with the schedule.
struct Load {
    lb: SocketAddr,
    nodes: [SocketAddr; 3],
    deadline: Instant,
    stop: AtomicBool,
    /// Set while the memory of the long-lived processes is read: no new
    /// connection starts (HAProxy's descriptors follow its connections).
    paused: AtomicBool,
    in_flight: AtomicUsize,
    /// Set during quiet phases: the sampler works only then.
    quiet: AtomicBool,
    records: Mutex<Vec<Rec>>,
    samples: Mutex<Vec<Sample>>,
}

impl Load {
    /// Waits while paused; false once the load is to stop.
    fn enter(&self) -> bool {
        loop {
            if self.stop.load(SeqCst) || Instant::now() > self.deadline {
                return false;
            }
            self.in_flight.fetch_add(1, SeqCst);
            if !self.paused.load(SeqCst) {
                return true;
            }
            self.in_flight.fetch_sub(1, SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
    }

    fn record(&self, kind: Kind, (tls13, dropped): (bool, bool), start: Instant, result: &Result<Done, String>) {
        let end = Instant::now();
        let rec = match result {
            Ok(d) => Rec {
                kind,
                tls13,
                dropped,
                start,
                end,
                ok: true,
                resumed: d.resumed,
                handshake: d.handshake,
                error: None,
            },
            Err(e) => Rec {
                kind,
                tls13,
                dropped,
                start,
                end,
                ok: false,
                resumed: false,
                handshake: Duration::ZERO,
                error: Some(e.clone()),
            },
        };
        self.records.lock().unwrap().push(rec);
    }

    /// Runs `f` with no connection of the load under way (bounded wait).
    fn quiesced<T>(&self, f: impl FnOnce() -> T) -> T {
        self.paused.store(true, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(6);
        while self.in_flight.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = f();
        self.paused.store(false, SeqCst);
        out
    }
}

/// A client that resumes its session through HAProxy, `lifetime`
/// connections per identity, identities taking `protos` in turn.
fn resumer(load: &Load, protos: &[Proto], close: Close, lifetime: usize, pace: Duration) {
    let clients: Vec<Client> = protos.iter().map(|&p| Client::new(p)).collect();
    let (mut which, mut uses) = (0usize, 0usize);
    let mut session: Option<SslSession> = None;
    while load.enter() {
        if session.is_none() || uses >= lifetime {
            session = None;
            uses = 0;
            which = (which + 1) % clients.len();
        }
        let kind = if session.is_some() { Kind::Resume } else { Kind::Full };
        let start = Instant::now();
        let result = connect_once(&clients[which], load.lb, session.as_ref(), close);
        load.leave();
        let what = (clients[which].proto == Proto::Tls13, close == Close::Drop);
        load.record(kind, what, start, &result);
        if let Ok(done) = result {
            uses += 1;
            session = done.session;
        }
        std::thread::sleep(pace);
    }
}

/// Full handshakes on each node in turn during quiet phases; their
/// sessions are kept for the check of lost sessions.
fn sampler(load: &Load) {
    let clients = [Client::new(Proto::Tls12NoTickets), Client::new(Proto::Tls13)];
    let mut n = 0usize;
    while load.enter() {
        if !load.quiet.load(SeqCst) {
            load.leave();
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let node = n % 3;
        let client = &clients[(n / 3) % 2];
        n += 1;
        let start = Instant::now();
        let result = connect_once(client, load.nodes[node], None, Close::Request);
        load.leave();
        load.record(Kind::Sample, (client.proto == Proto::Tls13, false), start, &result);
        if let Ok(Done {
            session: Some(session), ..
        }) = result
        {
            load.samples.lock().unwrap().push(Sample {
                start,
                end: Instant::now(),
                node,
                proto: client.proto,
                session,
            });
        }
        std::thread::sleep(SAMPLE_PACE);
    }
}

/// `n` full TLS 1.2 handshakes and `n` TLS 1.3 ones through HAProxy, from
/// two threads; how many failed.
fn burst(load: &Load, n: usize) -> usize {
    let failed = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
            let failed = &failed;
            scope.spawn(move || {
                let client = Client::new(proto);
                let deadline = Instant::now() + Duration::from_secs(120);
                for _ in 0..n {
                    if Instant::now() > deadline || !load.enter() {
                        break;
                    }
                    let start = Instant::now();
                    let result = connect_once(&client, load.lb, None, Close::Bare);
                    load.leave();
                    load.record(Kind::Burst, (proto == Proto::Tls13, false), start, &result);
                    if result.is_err() {
                        failed.fetch_add(1, SeqCst);
                    }
                }
            });
        }
    });
    failed.into_inner()
}

/// The load threads; stopped and joined on drop (a panicking soak too).
struct LoadThreads {
    load: Arc<Load>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoadThreads {
    fn start(load: &Arc<Load>) -> LoadThreads {
        let mut threads = Vec::new();
        let spawn = |f: Box<dyn FnOnce(&Load) + Send>| {
            let load = Arc::clone(load);
            std::thread::spawn(move || f(&load))
        };
        threads.push(spawn(Box::new(|l| {
            resumer(
                l,
                &[Proto::Tls12NoTickets],
                Close::Request,
                IDENTITY_CONNECTIONS,
                PACE_TLS12,
            )
        })));
        threads.push(spawn(Box::new(|l| {
            resumer(l, &[Proto::Tls13], Close::Request, IDENTITY_CONNECTIONS, PACE_TLS13)
        })));
        threads.push(spawn(Box::new(|l| {
            resumer(
                l,
                &[Proto::Tls12NoTickets, Proto::Tls13],
                Close::Drop,
                DROP_IDENTITY_CONNECTIONS,
                PACE_DROP,
            )
        })));
        threads.push(spawn(Box::new(sampler)));
        LoadThreads {
            load: Arc::clone(load),
            threads,
        }
    }

    fn stop(&mut self) {
        self.load.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LoadThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Processes

fn send_signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) on a process this soak started (or a child of one).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Gone: no such process, or a zombie.
fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| gone(p)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The stats server's JSON, or nothing (bounded).
fn try_stats(port: u16) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    serde_json::from_str(&body).ok()
}

/// The session cache's metrics of a node, without their prefix.
fn counters(stats_port: u16) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(all) = try_stats(stats_port) {
        if let Some(metrics) = all["metrics"].as_object() {
            for (name, m) in metrics {
                if let Some(short) = name.strip_prefix("sslcache.default.") {
                    out.insert(short.to_string(), m["value"].as_u64().unwrap_or(0));
                }
            }
        }
        out.insert(PID.into(), all["pid"].as_u64().unwrap_or(0));
    }
    out
}

/// The master's pid among the counters.
const PID: &str = "(pid)";

/// How much counter `name` grew; a node restarted in between counts from
/// zero.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let value = |c: &BTreeMap<String, u64>| c.get(name).copied().unwrap_or(0);
    if before.get(PID) != after.get(PID) {
        return value(after);
    }
    value(after).saturating_sub(value(before))
}

#[derive(Clone, Copy)]
struct Usage {
    rss_kb: u64,
    shm_kb: u64,
    fds: u64,
}

/// The kB allocated to the memory files (memfd) `pid` holds open: a
/// node's session store, whichever process touched its pages (a process's
/// own RssShmem grows as it touches pages other processes filled long
/// before: the master's sweeps and sync scans reach them over time).
fn memory_files_kb(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = None;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let is_memfd = fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
        if let (true, Ok(meta)) = (is_memfd, fs::metadata(entry.path())) {
            *total.get_or_insert(0) += meta.blocks() * 512 / 1024;
        }
    }
    total
}

/// VmRSS (/proc/PID/status), the shared memory (the memory files it holds,
/// else its RssShmem) and the open descriptors (the least of three reads
/// 20 ms apart: a transient one does not count).
fn usage(pid: i32) -> Option<Usage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let rss_kb = field("VmRSS:")?;
    let shm_kb = memory_files_kb(pid).unwrap_or_else(|| field("RssShmem:").unwrap_or(0));
    let mut fds = u64::MAX;
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        fds = fds.min(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64);
    }
    Some(Usage { rss_kb, shm_kb, fds })
}

struct Snapshot {
    role: String,
    pid: i32,
    phase: usize,
    at: Instant,
    usage: Usage,
    /// A node master's store: the most its memory file can hold (kB).
    store_bound_kb: Option<u64>,
}

/// The kB a correct store of `CACHE_ITEMS` sessions can touch at most, its
/// sessions `avg_session` bytes on average: its memory file grows only
/// when a shard holds more chunks than it ever held (freed chunks are
/// reused first), so it is a high-water mark, and each shard holds at most
/// its slots (`store::Layout`: its share of the capacity, a quarter more
/// and 16, for hash skew), each with its entry, its bucket and the chunks
/// of a session (its average, plus two for the key and the spread of
/// sizes). Unlike a leak, the high-water never passes this bound.
fn store_bound_kb(avg_session: u64) -> u64 {
    const CHUNK: u64 = 64;
    const ENTRY: u64 = 64;
    let capacity = CACHE_ITEMS as u64;
    let shards = (capacity / 128).clamp(1, 64).next_power_of_two().min(64);
    let per_shard = capacity.div_ceil(shards);
    let slots = if shards == 1 {
        per_shard
    } else {
        per_shard + per_shard / 4 + 16
    };
    let chunks = avg_session.div_ceil(CHUNK) + 2;
    let shard = slots * (chunks * CHUNK + ENTRY) + slots.next_power_of_two() * 4 + 8192;
    (shards * shard + 64 * 1024).div_ceil(1024)
}

fn iptables(args: &[&str]) -> String {
    let out = Command::new("iptables").args(args).output().expect("iptables");
    assert!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A datagram seen on the loopback.
struct Captured {
    /// Last byte of the source and destination addresses (127.0.0.x):
    /// the source is the node's own only for sync messages (sent from its
    /// bound replication port).
    from: u8,
    to: u8,
    /// Sent from the node's replication port: a sync message (warm start,
    /// repair); sessions go from another socket.
    sync: bool,
    payload: Vec<u8>,
}

/// An IPv4 UDP packet to `port`: its source's last byte and payload.
fn udp_payload_to(ip: &[u8], port: u16) -> Option<Captured> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    Some(Captured {
        from: ip[15],
        to: ip[19],
        sync: u16::from_be_bytes([udp[0], udp[1]]) == port,
        payload: udp.get(8..len.min(udp.len()))?.to_vec(),
    })
}

/// Datagrams to UDP `port` seen on the loopback (a packet socket of the
/// namespace), at most `max` within `within`: what anyone on the path of
/// the replication traffic can capture.
fn capture(port: u16, max: usize, within: Duration) -> Vec<Captured> {
    const ETH_P_IP: u16 = 0x0800;
    // SAFETY: socket(2); the descriptor is owned right below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(ETH_P_IP.to_be())) };
    assert!(raw >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP.to_be();
    // SAFETY: a NUL-terminated interface name.
    sll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    // SAFETY: bind(2) with a sockaddr_ll and its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind packet socket: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt(2) with a timeval and its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + within;
    while out.len() < max && Instant::now() < deadline {
        // SAFETY: sockaddr_ll is plain old data (integers and a byte
        // array): all zero bytes is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom(2) into `buf` and `from`, with their sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        // Loopback shows each packet twice: going out and coming in.
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(c) = udp_payload_to(&buf[..n as usize], port) {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The cluster of one configuration

struct Cluster {
    mode: Mode,
    dir: PathBuf,
    https: u16,
    udp: u16,
    stats: [u16; 3],
    redis_port: u16,
    redis: Option<Process>,
    redis_starts: usize,
    nodes: Vec<Option<Uwsgi>>,
    inis: Vec<PathBuf>,
    restarts: [usize; 3],
    haproxy: Option<Process>,
    lb: u16,
    _backend: Backend,
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in {text}");
    text.replace(from, to)
}

impl Cluster {
    fn start(mode: Mode, dir: &Path) -> Cluster {
        let backend = Backend::uwsgi_on(0);
        let (https, udp, redis_port, lb) = (free_port(), free_port(), free_port(), free_port());
        let stats = [free_port(), free_port(), free_port()];
        let key = dir.join("sessions.keys");
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(&key, format!("{hex}\n")).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let redis = (mode == Mode::Redis).then(|| redis_server(dir, "redis-0", redis_port));
        let inis = (1..=3)
            .map(|i| {
                let lines = match mode {
                    Mode::SealedUdp => setup2_replication(i, 3, udp) + &format!("cache-udp-key = {}\n", key.display()),
                    Mode::Redis => format!("ssl-sessions-redis = redis://127.0.0.1:{redis_port}\n"),
                };
                let ini = with_http_to(
                    &seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &lines),
                    backend.port,
                );
                let ini = replace_once(&ini, "cache = 20000\n", &format!("cache = {CACHE_ITEMS}\n"));
                let ini = replace_once(
                    &ini,
                    "ssl-sessions-timeout = 300\n",
                    &format!("ssl-sessions-timeout = {}\n", SESSION_TIMEOUT.as_secs()),
                );
                let path = dir.join(format!("node{i}.ini"));
                fs::write(&path, ini).unwrap();
                path
            })
            .collect();
        let mut cluster = Cluster {
            mode,
            dir: dir.to_path_buf(),
            https,
            udp,
            stats,
            redis_port,
            redis,
            redis_starts: 1,
            nodes: (0..3).map(|_| None).collect(),
            inis,
            restarts: [0; 3],
            haproxy: None,
            lb,
            _backend: backend,
        };
        for i in 1..=3 {
            cluster.start_node(i, &format!("node{i}"));
            let log = cluster.node(i).log();
            match mode {
                Mode::SealedUdp => assert!(log.contains("sealed with AES-256-GCM"), "{log}"),
                Mode::Redis => assert!(log.contains("receiving on redis://127.0.0.1"), "{log}"),
            }
        }
        let backends: Vec<SocketAddr> = (1..=3).map(|i| cluster.addr(i)).collect();
        // Health checks and redispatch: a connection that finds a node down
        // goes to another one, as in front of any fleet whose nodes restart.
        cluster.haproxy = Some(haproxy_with(
            dir,
            lb,
            &backends,
            "    timeout connect 500ms\n    retries 3\n    option redispatch 1\n",
            "check inter 500ms fall 2 rise 2",
        ));
        cluster
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i as u8], self.https))
    }

    fn udp_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i as u8], self.udp))
    }

    fn node(&self, i: usize) -> &Uwsgi {
        self.nodes[i - 1].as_ref().expect("a running node")
    }

    /// Starts node `i` from its ini; returns once HTTPS and stats accept.
    fn start_node(&mut self, i: usize, name: &str) {
        let mut node = Uwsgi::spawn_file(&uwsgi_binary(), &self.dir, name, &self.inis[i - 1], &[]);
        node.wait_ready_on(&[self.addr(i)]);
        node.wait_ready(&[self.stats[i - 1]]);
        self.nodes[i - 1] = Some(node);
    }

    fn counters(&self) -> Vec<BTreeMap<String, u64>> {
        self.stats.iter().map(|&p| counters(p)).collect()
    }

    /// The long-lived processes running now: (role, pid).
    fn long_lived(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = (1..=3)
            .filter_map(|i| self.nodes[i - 1].as_ref().map(|n| (format!("node{i} master"), n.pid)))
            .collect();
        if let Some(h) = &self.haproxy {
            out.push(("haproxy".into(), h.pid()));
        }
        if let Some(r) = &self.redis {
            out.push(("redis-server".into(), r.pid()));
        }
        out
    }
}

/// Deltas of counter `name` on each node, as `+a/+b/+c`.
fn per_node(before: &[BTreeMap<String, u64>], after: &[BTreeMap<String, u64>], name: &str) -> String {
    (0..3)
        .map(|i| format!("+{}", delta(&before[i], &after[i], name)))
        .collect::<Vec<_>>()
        .join("/")
}

fn now_items(after: &[BTreeMap<String, u64>]) -> String {
    after
        .iter()
        .map(|c| c.get("items").copied().unwrap_or(0).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// What a configuration's run leaves for the summary.
#[derive(Default)]
struct Outcome {
    lines: Vec<String>,
    phases: usize,
    quiet_resumed: usize,
    quiet_attempts: usize,
    failed: usize,
    in_flight: usize,
    unexplained: Vec<String>,
    checked: usize,
    lost: usize,
    lost_detail: Vec<String>,
    /// Quiet phases where a node applied more than twice the sessions the
    /// cluster made (plus `STORM_SLACK`), and the worst ratio seen:
    /// (applied, bound, phase).
    storms: Vec<String>,
    own_replays: Vec<String>,
    worst_replication: Option<(u64, u64, usize)>,
    memory: Vec<String>,
    violations: Vec<String>,
}

/// Everything of one configuration: cluster, load, schedule, check.
struct Soak {
    cluster: Cluster,
    load: Arc<Load>,
    phases: Vec<Phase>,
    snapshots: Vec<Snapshot>,
    started: Instant,
    budget: Duration,
    len: Duration,
    cycle: usize,
    /// Per garbage phase: garbage sent (replays apart), datagrams refused.
    garbage: Vec<(u64, u64)>,
    /// Per garbage phase: captures replayed to their own sender, refused.
    own_replays: Vec<(u64, u64)>,
    evictions_without_evicting: Vec<String>,
    /// The number of this configuration's first phase (phases are
    /// numbered across the whole soak).
    first_phase: usize,
    /// A quiet phase lasts until the stores stopped evicting.
    drain: bool,
}

impl Soak {
    fn snapshot(&mut self, phase: usize, only: Option<&str>) {
        let procs: Vec<(String, i32)> = self
            .cluster
            .long_lived()
            .into_iter()
            .filter(|(role, _)| only.is_none_or(|o| o == role))
            .collect();
        let levels = self.cluster.counters();
        let taken: Vec<Snapshot> = self.load.quiesced(|| {
            procs
                .iter()
                .filter_map(|(role, pid)| {
                    let node = role
                        .strip_prefix("node")
                        .and_then(|r| r.strip_suffix(" master"))
                        .and_then(|i| i.parse::<usize>().ok());
                    let store_bound_kb = node.and_then(|i| {
                        let c = levels.get(i - 1)?;
                        let (bytes, items) = (*c.get("bytes")?, *c.get("items")?);
                        (items > 0).then(|| store_bound_kb(bytes / items))
                    });
                    usage(*pid).map(|usage| Snapshot {
                        role: role.clone(),
                        pid: *pid,
                        phase,
                        at: Instant::now(),
                        usage,
                        store_bound_kb,
                    })
                })
                .collect()
        });
        self.snapshots.extend(taken);
    }

    fn progress(&self, text: &str) {
        println!("  [{:6.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    /// Runs one phase: the fault (with its recovery), at least `len` in
    /// all; a quiet phase ends with a memory snapshot.
    fn run_phase(&mut self, fault: Fault) {
        let no = self.first_phase + self.phases.len();
        let start = Instant::now();
        if fault == Fault::Quiet {
            self.load.quiet.store(true, SeqCst);
        } else {
            self.load.quiet.store(false, SeqCst);
            std::thread::sleep(GRACE);
        }
        let before = self.cluster.counters();
        let mut kills = Vec::new();
        let mut settle = Duration::from_secs(1);
        let detail = match fault {
            Fault::Quiet => {
                sleep_until(start + self.len);
                settle = Duration::ZERO;
                if self.drain {
                    // Until no node evicted for a while: the stores hold
                    // the sessions of the last fault until they expire.
                    let deadline = Instant::now() + SESSION_TIMEOUT + Duration::from_secs(15);
                    loop {
                        let from = self.cluster.counters();
                        std::thread::sleep(Duration::from_millis(1500));
                        let to = self.cluster.counters();
                        let evicted: u64 = (0..3).map(|i| delta(&from[i], &to[i], "evicted")).sum();
                        if evicted == 0 || Instant::now() > deadline {
                            break;
                        }
                    }
                    format!(
                        "; drained: the stores stopped evicting {:.1}s after the phase began",
                        start.elapsed().as_secs_f64()
                    )
                } else {
                    String::new()
                }
            }
            Fault::Eviction => {
                let t = Instant::now();
                let failed = burst(&self.load, EVICTION_BURST / 3);
                // uWSGI's metrics thread copies the counters once a second.
                std::thread::sleep(Duration::from_millis(1500));
                let after = self.cluster.counters();
                for i in 0..3 {
                    if delta(&before[i], &after[i], "evicted") == 0 {
                        self.evictions_without_evicting
                            .push(format!("phase {no:02}: node{} evicted nothing", i + 1));
                    }
                }
                format!(
                    "{} full TLS 1.2 and as many TLS 1.3 handshakes through HAProxy ({EVICTION_BURST} sessions) in \
                     {:.1}s ({failed} failed); \
                     evicted {}, items now {} (capacity {CACHE_ITEMS})",
                    EVICTION_BURST / 3,
                    t.elapsed().as_secs_f64(),
                    per_node(&before, &after, "evicted"),
                    now_items(&after)
                )
            }
            Fault::KillRouter(i) => {
                let node = self.cluster.node(i);
                let routers = node.routers(2);
                let victim = routers[self.cycle % routers.len()];
                let t0 = Instant::now();
                assert!(send_signal(victim, libc::SIGKILL));
                assert!(
                    wait_gone(&[victim], Duration::from_secs(5)),
                    "router {victim} survived SIGKILL"
                );
                kills.push(Kill {
                    node: i,
                    master: false,
                    start: t0,
                    end: Instant::now(),
                });
                let respawned = eventually(Duration::from_secs(20), || {
                    let c = node.children();
                    c.len() >= 2 && !c.contains(&victim)
                });
                assert!(respawned, "node{i}: router {victim} not respawned:\n{}", node.log());
                let new: Vec<i32> = node.children().into_iter().filter(|p| !routers.contains(p)).collect();
                format!(
                    "router {victim} of node{i} SIGKILLed; respawned as {new:?} within {} ms",
                    t0.elapsed().as_millis()
                )
            }
            Fault::Graceful(i) | Fault::Brutal(i) => {
                let sig = if matches!(fault, Fault::Graceful(_)) {
                    libc::SIGHUP
                } else {
                    libc::SIGTERM
                };
                let addr = self.cluster.addr(i);
                let node = self.cluster.node(i);
                let old = node.children();
                let before_marks = node.log().matches(RELOAD_MARKER).count();
                let t0 = Instant::now();
                assert!(send_signal(node.pid, sig));
                assert!(
                    wait_gone(&old, Duration::from_secs(30)),
                    "node{i}: router processes {old:?} still there 30 s after the reload signal"
                );
                kills.push(Kill {
                    node: i,
                    master: false,
                    start: t0,
                    end: Instant::now(),
                });
                let back = eventually(Duration::from_secs(60), || {
                    node.log().matches(RELOAD_MARKER).count() > before_marks
                        && node.children().len() >= 2
                        && accepts(addr)
                });
                assert!(back, "node{i} did not come back from its reload:\n{}", node.log());
                let log = node.log();
                let came_back = log
                    .lines()
                    .rev()
                    .find(|l| l.contains(RELOAD_MARKER))
                    .and_then(|l| l.split("\": ").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string();
                format!(
                    "master {} of node{i} signalled ({}); old router processes gone after {} ms; back \
                     serving after {} ms; {came_back} sessions came back from before the reload",
                    node.pid,
                    if sig == libc::SIGHUP { "SIGHUP" } else { "SIGTERM" },
                    kills[0].end.duration_since(t0).as_millis(),
                    t0.elapsed().as_millis()
                )
            }
            Fault::KillMaster(i) => {
                let role = format!("node{i} master");
                self.snapshot(no, Some(&role));
                let mut node = self.cluster.nodes[i - 1].take().expect("a running node");
                let children = node.children();
                let pid = node.pid;
                let t0 = Instant::now();
                assert!(send_signal(pid, libc::SIGKILL));
                assert!(
                    node.wait_exit(Duration::from_secs(10)).is_some(),
                    "master {pid} survived kill -9"
                );
                let died = wait_gone(&children, Duration::from_secs(5));
                if !died {
                    for &c in &children {
                        if !gone(c) {
                            send_signal(c, libc::SIGKILL);
                        }
                    }
                    assert!(
                        wait_gone(&children, Duration::from_secs(5)),
                        "router processes {children:?} survived SIGKILL"
                    );
                }
                kills.push(Kill {
                    node: i,
                    master: true,
                    start: t0,
                    end: Instant::now(),
                });
                drop(node);
                self.cluster.restarts[i - 1] += 1;
                let name = format!("node{i}-restart{}", self.cluster.restarts[i - 1]);
                let t1 = Instant::now();
                self.cluster.start_node(i, &name);
                let open_ms = t1.elapsed().as_millis();
                let node = self.cluster.node(i);
                // Its warm start (a): both peers answered; (b): the
                // sessions of record read back.
                let warm = eventually(Duration::from_secs(15), || {
                    let log = node.log();
                    match self.cluster.mode {
                        Mode::SealedUdp => {
                            log.lines()
                                .filter(|l| {
                                    l.contains("warm start of cache")
                                        && (l.contains(" sent its ") || l.contains(" did not "))
                                })
                                .count()
                                >= 2
                        }
                        Mode::Redis => log.contains(RECORD_MARKER),
                    }
                });
                let log = node.log();
                let how: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        (l.contains("warm start of cache") && l.contains(" sent its ")) || l.contains(RECORD_MARKER)
                    })
                    .collect();
                format!(
                    "master {pid} of node{i} kill -9'd; its router processes {children:?} {}; restarted as {} \
                     (HTTPS open after {open_ms} ms); warm start {}: {}",
                    if died {
                        "died with it"
                    } else {
                        "outlived it and were SIGKILLed by pid"
                    },
                    node.pid,
                    if warm { "done" } else { "NOT DONE within 15 s" },
                    how.iter()
                        .map(|l| l.trim_start_matches("[sslcache] "))
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            }
            Fault::Loss => {
                let port = self.cluster.udp.to_string();
                let rule = [
                    "INPUT",
                    "-p",
                    "udp",
                    "--dport",
                    &port,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    "0.3",
                    "-j",
                    "DROP",
                ];
                iptables(&[&["-A"], &rule[..]].concat());
                sleep_until(start + self.len);
                let listed = iptables(&["-L", "INPUT", "-v", "-x", "-n"]);
                iptables(&[&["-D"], &rule[..]].concat());
                let dropped = listed
                    .lines()
                    .find(|l| l.contains("statistic"))
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string();
                // Repair runs on its digests' cadence (every second while
                // sessions come in).
                settle = Duration::from_secs(3);
                std::thread::sleep(settle);
                let after = self.cluster.counters();
                format!(
                    "iptables dropped {dropped} datagrams to port {port} (30%); repaired {} (3 s after)",
                    per_node(&before, &after, "repaired")
                )
            }
            Fault::Garbage => self.garbage(start, &before),
            Fault::RedisOutage => {
                self.snapshot(no, Some("redis-server"));
                let marks: Vec<usize> = (1..=3)
                    .map(|i| self.cluster.node(i).log().matches(RECORD_MARKER).count())
                    .collect();
                let redis = self.cluster.redis.take().expect("redis running");
                let old_pid = redis.pid();
                let t0 = Instant::now();
                // SIGTERM by its pid (then SIGKILL if it lingers).
                drop(redis);
                sleep_until(start + self.len);
                let down = t0.elapsed();
                let name = format!("redis-{}", self.cluster.redis_starts);
                self.cluster.redis_starts += 1;
                self.cluster.redis = Some(redis_server(&self.cluster.dir, &name, self.cluster.redis_port));
                let back = eventually(Duration::from_secs(30), || {
                    (1..=3).all(|i| self.cluster.node(i).log().matches(RECORD_MARKER).count() > marks[i - 1])
                });
                // uWSGI's metrics thread copies the counters once a second.
                std::thread::sleep(Duration::from_millis(1200));
                let after = self.cluster.counters();
                format!(
                    "redis-server {old_pid} stopped (SIGTERM) for {:.1}s, started again as {}; every node \
                     subscribed again and read the sessions of record back: {}; redis_errors {}, \
                     redis_dropped {}, redis_reconnects {}",
                    down.as_secs_f64(),
                    self.cluster.redis.as_ref().unwrap().pid(),
                    if back { "yes" } else { "NO (30 s)" },
                    per_node(&before, &after, "redis_errors"),
                    per_node(&before, &after, "redis_dropped"),
                    per_node(&before, &after, "redis_reconnects"),
                )
            }
        };
        let settled = Instant::now() + settle;
        sleep_until(settled.max(start + self.len));
        if fault == Fault::Quiet {
            self.snapshot(no, None);
        }
        let after = self.cluster.counters();
        let detail = if fault == Fault::Quiet {
            let drained = detail;
            let mut d = format!(
                "items {}; hits {}, misses {}, evicted {}, applied {}",
                now_items(&after),
                per_node(&before, &after, "hits"),
                per_node(&before, &after, "misses"),
                per_node(&before, &after, "evicted"),
                per_node(&before, &after, "applied"),
            );
            if self.cluster.mode == Mode::SealedUdp {
                d += &format!(", repaired {}", per_node(&before, &after, "repaired"));
            }
            d + &drained
        } else {
            detail
        };
        let evicted = (0..3).map(|i| delta(&before[i], &after[i], "evicted")).sum();
        let applied = [0, 1, 2].map(|i| delta(&before[i], &after[i], "applied"));
        let phase = Phase {
            no,
            fault,
            start,
            end: Instant::now(),
            kills,
            detail,
            evicted,
            applied,
        };
        self.progress(&format!(
            "phase {:02} {} ({:.1}s): {}",
            phase.no,
            fault.name(),
            phase.end.duration_since(start).as_secs_f64(),
            phase.detail
        ));
        self.phases.push(phase);
    }

    /// Garbage and replays from a peer that is not one, at the nodes'
    /// replication ports: first a capture of what goes to them; then each
    /// captured datagram replayed once to the node that sent it; then, for
    /// the rest of the phase, a mix of garbage (random bytes, sealed-looking
    /// random bytes, captures with a bit flipped or truncated, plain
    /// datagrams) and verbatim replays to every node. Every garbage datagram
    /// must be refused and counted (`self.garbage`).
    fn garbage(&mut self, start: Instant, before: &[BTreeMap<String, u64>]) -> String {
        use sslcache_core::replication::keys::Key;
        const REFUSALS: [&str; 10] = [
            "forged",
            "replayed",
            "out_of_window",
            "skewed",
            "plain_refused",
            "rejected",
            "sync_ignored",
            "sync_unproven",
            "sync_misdirected",
            "sync_throttled",
        ];
        let refused_by = |b: &[BTreeMap<String, u64>], a: &[BTreeMap<String, u64>], i: usize| -> u64 {
            REFUSALS.iter().map(|n| delta(&b[i], &a[i], n)).sum()
        };
        let captured = capture(self.cluster.udp, 400, Duration::from_millis(1500));
        let socket = UdpSocket::bind("127.0.0.9:0").unwrap();
        let targets: Vec<SocketAddr> = (1..=3).map(|i| self.cluster.udp_addr(i)).collect();
        let send = |d: &[u8], to: SocketAddr| {
            let sent = socket.send_to(d, to).is_ok();
            std::thread::sleep(Duration::from_millis(1));
            sent
        };

        // Each distinct session datagram captured, back to the node that
        // sent it (a node seals a session once for all its peers). The
        // sender is known by the sealed header's sender id: sync messages
        // come from the node's own address; a session goes to every node
        // but its sender.
        let sender_id = |d: &[u8]| (d.len() > 30 && d[0] == b'S').then(|| d[6..14].to_vec());
        let mut senders: Vec<(Vec<u8>, u8)> = Vec::new();
        for c in captured.iter().filter(|c| c.sync && (1..=3).contains(&c.from)) {
            if let Some(id) = sender_id(&c.payload) {
                if !senders.iter().any(|(s, _)| *s == id) {
                    senders.push((id, c.from));
                }
            }
        }
        for c in captured.iter().filter(|c| !c.sync) {
            let Some(id) = sender_id(&c.payload) else { continue };
            if senders.iter().any(|(s, _)| *s == id) {
                continue;
            }
            let reached: Vec<u8> = captured
                .iter()
                .filter(|o| sender_id(&o.payload).as_ref() == Some(&id))
                .map(|o| o.to)
                .collect();
            let missing: Vec<u8> = (1..=3).filter(|n| !reached.contains(n)).collect();
            if let [node] = missing[..] {
                senders.push((id, node));
            }
        }
        let mut own: Vec<(&Captured, usize)> = Vec::new();
        for c in captured.iter().filter(|c| !c.sync) {
            let Some(id) = sender_id(&c.payload) else { continue };
            let Some((_, node)) = senders.iter().find(|(s, _)| *s == id) else {
                continue;
            };
            if !own.iter().any(|(o, _)| o.payload == c.payload) {
                own.push((c, usize::from(*node) - 1));
            }
        }
        let at_own = self.cluster.counters();
        let mut own_sent = [0u64; 3];
        for (c, i) in &own {
            own_sent[*i] += u64::from(send(&c.payload, targets[*i]));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let after_own = self.cluster.counters();
        let own_refused: Vec<u64> = (0..3)
            .map(|i| {
                ["own_returned", "forged", "replayed", "out_of_window", "skewed"]
                    .iter()
                    .map(|n| delta(&at_own[i], &after_own[i], n))
                    .sum()
            })
            .collect();
        self.own_replays.push((own_sent.iter().sum(), own_refused.iter().sum()));

        let key_id = Key::new(KEY).id.to_be_bytes();
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ start.elapsed().as_nanos() as u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mixed_from = self.cluster.counters();
        let (mut garbage, mut replays) = (0u64, 0u64);
        let until = (start + self.len).max(Instant::now() + Duration::from_secs(2));
        let mut k = 0usize;
        while Instant::now() < until && k < 200_000 {
            let target = targets[k % 3];
            let r = next();
            let pick = captured
                .get((r as usize / 7) % captured.len().max(1))
                .map(|c| &c.payload);
            let datagram: Option<Vec<u8>> = match k % 6 {
                0 => Some(
                    (0..1 + r as usize % 400)
                        .map(|j| (r.rotate_left(j as u32 % 64)) as u8)
                        .collect(),
                ),
                1 => {
                    let mut d: Vec<u8> = (0..40 + r as usize % 300).map(|j| (r >> (j % 56)) as u8).collect();
                    d[0] = b'S';
                    d[1] = 1;
                    d[2..6].copy_from_slice(&key_id);
                    Some(d)
                }
                2 => pick.cloned(),
                3 => pick.filter(|d| !d.is_empty()).map(|d| {
                    let mut d = d.clone();
                    let at = r as usize % d.len();
                    d[at] ^= 1 << (r % 8);
                    d
                }),
                4 => pick
                    .filter(|d| d.len() > 1)
                    .map(|d| d[..1 + r as usize % (d.len() - 1)].to_vec()),
                _ => {
                    let mut frame = Vec::new();
                    let id: Vec<u8> = (0..32).map(|j| (r >> (j % 56)) as u8).collect();
                    sslcache_core::replication::encode_set(&id, &[7; 120], 4_000_000_000, &mut frame).unwrap();
                    Some(frame)
                }
            };
            if let Some(d) = datagram {
                if send(&d, target) {
                    if k % 6 == 2 {
                        replays += 1;
                    } else {
                        garbage += 1;
                    }
                }
            }
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(1500));
        let after = self.cluster.counters();
        let refused: u64 = (0..3).map(|i| refused_by(&mixed_from, &after, i)).sum();
        self.garbage.push((garbage, refused));
        let by: Vec<String> = REFUSALS
            .iter()
            .filter_map(|n| {
                let d: u64 = (0..3).map(|i| delta(&mixed_from[i], &after[i], n)).sum();
                (d > 0).then(|| format!("{n} {d}"))
            })
            .collect();
        format!(
            "{} datagrams captured on the loopback; {} distinct session datagrams replayed to the node that \
             sent them: {} refused as forged, replayed, out of window or skewed ({}); then {garbage} garbage datagrams (random, sealed-looking, bit-flipped, truncated, \
             plain) and {replays} verbatim replays to the 3 nodes: {refused} refused and counted ({}); applied \
             over the phase {}",
            captured.len(),
            own_sent.iter().sum::<u64>(),
            own_refused.iter().sum::<u64>(),
            (0..3)
                .map(|i| format!("node{} {}/{}", i + 1, own_refused[i], own_sent[i]))
                .collect::<Vec<_>>()
                .join(", "),
            by.join(", "),
            per_node(before, &after, "applied")
        )
    }

    /// The phase a connection that started at `t` belongs to.
    fn phase_of(&self, t: Instant) -> usize {
        self.phases.iter().rposition(|p| p.start <= t).unwrap_or(0)
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn growth(start: u64, end: u64) -> f64 {
    if start == 0 {
        if end == 0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (end as f64 - start as f64) * 100.0 / start as f64
    }
}

fn run_config(mode: Mode, budget: Duration, minutes: f64, first_phase: usize) -> Outcome {
    let dir = test_dir(match mode {
        Mode::SealedUdp => "soak-sealed-udp",
        Mode::Redis => "soak-redis",
    });
    let cluster = Cluster::start(mode, &dir);
    let load = Arc::new(Load {
        lb: SocketAddr::from(([127, 0, 0, 1], cluster.lb)),
        nodes: [cluster.addr(1), cluster.addr(2), cluster.addr(3)],
        deadline: Instant::now() + budget + Duration::from_secs(600),
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        quiet: AtomicBool::new(false),
        records: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
    });
    let faults = mode.cycle(0).len() as u32;
    let len = (budget / (2 * faults + 1)).clamp(Duration::from_secs(3), Duration::from_secs(20));
    println!(
        "configuration {}: {:.0} s, phases of {:.1} s (a fault with its recovery may take longer); {dir:?}",
        mode.name(),
        budget.as_secs_f64(),
        len.as_secs_f64()
    );
    let mut soak = Soak {
        cluster,
        load: Arc::clone(&load),
        phases: Vec::new(),
        snapshots: Vec::new(),
        started: Instant::now(),
        budget,
        len,
        cycle: 0,
        garbage: Vec::new(),
        own_replays: Vec::new(),
        evictions_without_evicting: Vec::new(),
        first_phase,
        drain: false,
    };
    let mut threads = LoadThreads::start(&load);
    soak.run_phase(Fault::Quiet);
    // Every fault at least once, then whole cycles while time is left;
    // the last phase is quiet.
    'schedule: loop {
        for fault in mode.cycle(soak.cycle) {
            if soak.cycle > 0 && soak.started.elapsed() + 2 * len > budget {
                break 'schedule;
            }
            soak.run_phase(fault);
            soak.run_phase(Fault::Quiet);
        }
        soak.cycle += 1;
        if soak.started.elapsed() + 2 * len > budget {
            break;
        }
    }
    // The lost-session check needs sessions made when no store evicts: if
    // the last quiet phase saw evictions, one more until they stop, then
    // the final quiet phase.
    if soak.phases.last().is_some_and(|p| p.evicted > 0) {
        soak.drain = true;
        soak.run_phase(Fault::Quiet);
        soak.drain = false;
        soak.run_phase(Fault::Quiet);
    }
    threads.stop();
    let ran = soak.started.elapsed();
    if let Some(last) = soak.phases.last_mut() {
        last.end = Instant::now();
    }

    let mut out = Outcome::default();
    let checked_at = Instant::now();
    check_samples(&soak, checked_at, &mut out);
    report_phases(&soak, &mut out);
    out.phases = soak.phases.len();
    report_memory(&soak, minutes, &mut out);
    for (sent, refused) in &soak.garbage {
        // Every garbage datagram is refused and counted (the replays sent
        // with them are refused too: the count may exceed the garbage).
        if refused < sent {
            out.violations.push(format!(
                "garbage phase: {sent} garbage datagrams sent, only {refused} refused and counted"
            ));
        }
    }
    out.violations.extend(soak.evictions_without_evicting.iter().cloned());
    for (sent, refused) in &soak.own_replays {
        if refused < sent {
            out.violations.push(format!(
                "{} of {sent} captured session datagrams replayed to the node that sent them were not refused",
                sent - refused
            ));
        }
        out.own_replays.push(format!(
            "captured session datagrams replayed to the node that sent them: {sent}, refused {refused}{}",
            if refused < sent {
                " (the others were not refused)"
            } else {
                ""
            }
        ));
    }
    out.lines.insert(
        0,
        format!(
            "configuration {}: ran {:.0} s in {} phases",
            mode.name(),
            ran.as_secs_f64(),
            soak.phases.len()
        ),
    );
    out
}

/// Rule for lost sessions: a sampled session counts when it was made (its
/// connection started and ended) inside one quiet phase; when no node
/// evicted anything from that phase to the end of the run (a full store
/// evicts the least recently used sessions, and the sampled ones, never
/// used again, are those: an eviction burst fills the stores for a session
/// timeout); at most `SAMPLE_MAX_AGE` before the check (the timeout is
/// 30 s); and not on a node whose master was killed less than
/// `REPLICATION_WINDOW` after the session's connection ended (it may have
/// died with it, unsent). It is
/// lost when no node resumes it: TLS 1.2 sessions are offered to every node
/// (how many resume them everywhere is printed too), TLS 1.3 ones (a ticket
/// is used once) to each node in turn until one resumes it; the other nodes
/// first, the node that made it last.
fn check_samples(soak: &Soak, checked_at: Instant, out: &mut Outcome) {
    // The first phase from which no node evicted anything to the end.
    let no_eviction_from = soak.phases.iter().rposition(|p| p.evicted > 0).map_or(0, |i| i + 1);
    let master_kills: Vec<Kill> = soak
        .phases
        .iter()
        .flat_map(|p| p.kills.iter().copied())
        .filter(|k| k.master)
        .collect();
    let samples = soak.load.samples.lock().unwrap();
    let eligible: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            let phase = soak.phase_of(s.start);
            soak.phases[phase].fault == Fault::Quiet
                && soak.phase_of(s.end) == phase
                && s.end <= soak.phases[phase].end
                && phase >= no_eviction_from
                && checked_at.duration_since(s.start) <= SAMPLE_MAX_AGE
                && !master_kills
                    .iter()
                    .any(|k| k.node == s.node + 1 && k.start >= s.start && k.start < s.end + REPLICATION_WINDOW)
        })
        .collect();
    let step = eligible.len().div_ceil(SAMPLES_CHECKED).max(1);
    let chosen: Vec<&Sample> = eligible.iter().step_by(step).copied().collect();
    let clients = [Client::new(Proto::Tls12NoTickets), Client::new(Proto::Tls13)];
    let (mut everywhere12, mut checked12) = (0usize, 0usize);
    for s in &chosen {
        let client = &clients[usize::from(s.proto == Proto::Tls13)];
        let order = [(s.node + 1) % 3, (s.node + 2) % 3, s.node];
        let mut resumed_on = Vec::new();
        let mut errors = Vec::new();
        for &j in &order {
            match connect_once(client, soak.load.nodes[j], Some(&s.session), Close::Request) {
                Ok(d) if d.resumed => resumed_on.push(j + 1),
                Ok(_) => {}
                Err(e) => errors.push(format!("node{}: {e}", j + 1)),
            }
            if s.proto == Proto::Tls13 && !resumed_on.is_empty() {
                break;
            }
        }
        if s.proto == Proto::Tls12NoTickets {
            checked12 += 1;
            everywhere12 += usize::from(resumed_on.len() == 3);
        }
        if resumed_on.is_empty() {
            out.lost += 1;
            out.lost_detail.push(format!(
                "{:?} session made on node{} at +{:.1}s (phase {:02}), id {}: resumed nowhere{}",
                s.proto,
                s.node + 1,
                s.start.duration_since(soak.started).as_secs_f64(),
                soak.phases[soak.phase_of(s.start)].no,
                s.session.id().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ));
        }
    }
    out.checked = chosen.len();
    out.lines.push(format!(
        "sessions sampled in quiet phases: {}, eligible by the rule: {}, checked: {} ({} TLS 1.2 of which {} \
         resumed on all 3 nodes), lost (resumed nowhere): {}",
        samples.len(),
        eligible.len(),
        chosen.len(),
        checked12,
        everywhere12,
        out.lost
    ));
    if out.checked == 0 {
        out.violations
            .push("no sampled session was eligible for the lost-session check (run too short?)".into());
    }
    if out.lost > 0 {
        out.violations.push(format!("{} sessions resumed on no node", out.lost));
    }
}

fn report_phases(soak: &Soak, out: &mut Outcome) {
    let records = soak.load.records.lock().unwrap();
    let kills: Vec<Kill> = soak.phases.iter().flat_map(|p| p.kills.iter().copied()).collect();
    for (i, phase) in soak.phases.iter().enumerate() {
        let recs: Vec<&Rec> = records.iter().filter(|r| soak.phase_of(r.start) == i).collect();
        let attempts = recs.iter().filter(|r| r.kind == Kind::Resume && r.ok).count();
        let resumed = recs
            .iter()
            .filter(|r| r.kind == Kind::Resume && r.ok && r.resumed)
            .count();
        let failed: Vec<&&Rec> = recs.iter().filter(|r| !r.ok).collect();
        let in_flight = failed
            .iter()
            .filter(|r| kills.iter().any(|k| r.start <= k.end && r.end >= k.start))
            .count();
        let p99 = percentile(recs.iter().filter(|r| r.ok).map(|r| r.handshake).collect(), 0.99);
        let rate = if attempts == 0 {
            "n/a".to_string()
        } else {
            format!("{:.1}%", resumed as f64 * 100.0 / attempts as f64)
        };
        out.lines.push(format!(
            "phase {:02} {} {:.1}s: resumed {rate} ({resumed}/{attempts}), failed handshakes {} (of which \
             in-flight on a killed process {in_flight}), p99 handshake {:.1} ms",
            phase.no,
            phase.fault.name(),
            phase.end.duration_since(phase.start).as_secs_f64(),
            failed.len(),
            p99.as_secs_f64() * 1000.0
        ));
        if !phase.detail.is_empty() {
            out.lines.push(format!("         {}", phase.detail));
        }
        if phase.fault == Fault::Quiet {
            out.quiet_attempts += attempts;
            out.quiet_resumed += resumed;
            // Sessions the cluster made: a TLS 1.3 full handshake stores two
            // (two tickets), a TLS 1.3 resumption one (a new ticket), a
            // TLS 1.2 full handshake one, a TLS 1.2 resumption none.
            let made: u64 = recs
                .iter()
                .filter(|r| r.ok)
                .map(|r| match (r.tls13, r.resumed) {
                    (true, false) => 2,
                    (true, true) | (false, false) => 1,
                    (false, true) => 0,
                })
                .sum();
            let most = phase.applied.iter().copied().max().unwrap_or(0);
            let bound = 2 * made + STORM_SLACK;
            if out
                .worst_replication
                .is_none_or(|(m, b, _)| most * b > m * bound.max(1))
            {
                out.worst_replication = Some((most, bound, phase.no));
            }
            if most > bound {
                out.storms.push(format!(
                    "phase {:02}: a node applied {most} sessions from replication ({:?} per node) while the \
                     cluster made {made}",
                    phase.no, phase.applied
                ));
            }
        }
        out.failed += failed.len();
        out.in_flight += in_flight;
        for r in failed
            .iter()
            .filter(|r| !kills.iter().any(|k| r.start <= k.end && r.end >= k.start))
        {
            let kind = match r.kind {
                Kind::Resume => "resumption",
                Kind::Full => "new client",
                Kind::Sample => "sampler (direct)",
                Kind::Burst => "eviction burst",
            };
            out.unexplained.push(format!(
                "phase {:02} {}: {kind} connection at +{:.3}s..+{:.3}s: {}",
                phase.no,
                phase.fault.name(),
                r.start.duration_since(soak.started).as_secs_f64(),
                r.end.duration_since(soak.started).as_secs_f64(),
                r.error.as_deref().unwrap_or("?")
            ));
        }
    }
    let count = |f: &dyn Fn(&Rec) -> bool| records.iter().filter(|r| f(r)).count();
    out.lines.push(format!(
        "connections: {} (resumption attempts {}, new clients' full handshakes {}, sampler {}, eviction bursts \
         {}); TLS 1.3 {}, closed without close_notify {}",
        records.len(),
        count(&|r| r.kind == Kind::Resume),
        count(&|r| r.kind == Kind::Full),
        count(&|r| r.kind == Kind::Sample),
        count(&|r| r.kind == Kind::Burst),
        count(&|r| r.tls13),
        count(&|r| r.dropped),
    ));
    let rate = out.quiet_resumed as f64 * 100.0 / out.quiet_attempts.max(1) as f64;
    if out.quiet_attempts == 0 || rate < 99.0 {
        out.violations.push(format!(
            "resumption outside fault phases {rate:.2}% ({}/{}), goal 99%",
            out.quiet_resumed, out.quiet_attempts
        ));
    }
    if !out.unexplained.is_empty() {
        out.violations.push(format!(
            "{} failed handshakes not in flight on a killed process",
            out.unexplained.len()
        ));
    }
    if !out.storms.is_empty() {
        out.violations.push(format!(
            "replication storm in {} quiet phases (a node applied more than twice the sessions made, + \
             {STORM_SLACK})",
            out.storms.len()
        ));
    }
}

/// Start: the first quiet phase after the first eviction phase (the
/// stores full) that ends a minute or more into the configuration, or,
/// when the configuration runs less than 3 minutes, the first quiet phase
/// after the first eviction phase. End: the last snapshot of that process
/// (the end of the run, or right before the schedule killed it).
fn report_memory(soak: &Soak, minutes: f64, out: &mut Outcome) {
    let first_eviction = soak.phases.iter().position(|p| p.fault == Fault::Eviction).unwrap_or(0);
    let quiet_after: Vec<&Phase> = soak.phases[first_eviction..]
        .iter()
        .filter(|p| p.fault == Fault::Quiet)
        .collect();
    let short = soak.budget < Duration::from_secs(180);
    let Some(base) = quiet_after
        .iter()
        .find(|p| short || p.end.duration_since(soak.started) >= Duration::from_secs(60))
        .or(quiet_after.first())
    else {
        out.violations.push("no quiet phase for a memory baseline".into());
        return;
    };
    let base_no = base.no;
    let config_end = soak.phases.last().map_or(soak.started, |p| p.end);
    let tracked_span = config_end.duration_since(base.end);
    let assert_growth = minutes >= GROWTH_ASSERTED_FROM_MINUTES;
    let mut pids: Vec<(String, i32)> = Vec::new();
    for s in &soak.snapshots {
        if !pids.iter().any(|(r, p)| r == &s.role && *p == s.pid) {
            pids.push((s.role.clone(), s.pid));
        }
    }
    out.memory.push(format!(
        "memory baseline: end of phase {:02} (+{:.0}s); growth {}",
        base_no,
        base.end.duration_since(soak.started).as_secs_f64(),
        if assert_growth {
            format!("asserted (goal {MAX_GROWTH}%) for processes tracked over half the run or more")
        } else {
            format!(
                "printed, not asserted: the goal ({MAX_GROWTH}%) is asserted for runs of \
                 {GROWTH_ASSERTED_FROM_MINUTES} minutes or more"
            )
        }
    ));
    for (role, pid) in pids {
        let snaps: Vec<&Snapshot> = soak
            .snapshots
            .iter()
            .filter(|s| s.role == role && s.pid == pid && s.phase >= base_no)
            .collect();
        let (Some(first), Some(last)) = (snaps.first(), snaps.last()) else {
            continue;
        };
        let span = last.at.duration_since(first.at);
        let long = span.as_secs_f64() >= tracked_span.as_secs_f64() * 0.5 && snaps.len() >= 2;
        let (a, b) = (first.usage, last.usage);
        let g = [
            growth(a.rss_kb, b.rss_kb),
            growth(a.fds, b.fds),
            growth(a.shm_kb, b.shm_kb),
        ];
        // A node's shared memory is its store's memory file: a high-water
        // mark, checked against the most a correct store can hold (see
        // `store_bound_kb`) rather than against its start.
        let bound = snaps.iter().filter_map(|s| s.store_bound_kb).max();
        let shared = match bound {
            Some(bound) => format!(
                "store memory file {} -> {} kB ({:+.1}%; a high-water mark, bound {bound} kB)",
                a.shm_kb, b.shm_kb, g[2]
            ),
            None => format!("shared memory {} -> {} kB ({:+.1}%)", a.shm_kb, b.shm_kb, g[2]),
        };
        out.memory.push(format!(
            "{role} pid {pid} (phases {:02}-{:02}, {:.0}s{}): RSS {} -> {} kB ({:+.1}%), fds {} -> {} ({:+.1}%), \
             {shared}",
            first.phase,
            last.phase,
            span.as_secs_f64(),
            if long { "" } else { ", not the whole run: not asserted" },
            a.rss_kb,
            b.rss_kb,
            g[0],
            a.fds,
            b.fds,
            g[1],
        ));
        let shared_grew = match bound {
            Some(bound) => b.shm_kb > bound,
            None => g[2] > MAX_GROWTH,
        };
        if assert_growth && long && (g[0] > MAX_GROWTH || g[1] > MAX_GROWTH || shared_grew) {
            out.violations.push(format!(
                "{role} pid {pid} grew: RSS {:+.1}%, fds {:+.1}% (goal {MAX_GROWTH}% at most), {shared}",
                g[0], g[1]
            ));
        }
    }
}

/// Runs `f` on a thread of its own in a new network namespace (loopback
/// up); what it starts inherits the namespace.
fn in_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) moves this thread alone (spawned for
                // it) into a new network namespace; threads and processes it
                // starts inherit it, and it ends with the thread.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare (needs root)");
                let out = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .output()
                    .expect("ip");
                assert!(out.status.success(), "ip link set lo up: {out:?}");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

#[test]
#[ignore = "a soak of SOAK_MINUTES (default 10): make soak"]
fn soak() {
    let minutes = soak_minutes();
    let budget = Duration::from_secs_f64(minutes * 60.0 / 2.0);
    println!(
        "soak: {minutes} minutes, two configurations of {:.0} s each; cache of {CACHE_ITEMS} sessions, timeout {} s",
        budget.as_secs_f64(),
        SESSION_TIMEOUT.as_secs()
    );
    let outcomes = in_namespace(|| {
        let a = run_config(Mode::SealedUdp, budget, minutes, 0);
        let b = run_config(Mode::Redis, budget, minutes, a.phases);
        [a, b]
    });
    println!();
    for o in &outcomes {
        for l in &o.lines {
            println!("{l}");
        }
    }
    println!();
    println!("summary:");
    let (qr, qa) = outcomes
        .iter()
        .fold((0, 0), |(r, a), o| (r + o.quiet_resumed, a + o.quiet_attempts));
    println!(
        "  resumption outside fault windows: {:.2}% ({qr}/{qa}) (goal >= 99%)",
        qr as f64 * 100.0 / qa.max(1) as f64
    );
    let failed: usize = outcomes.iter().map(|o| o.failed).sum();
    let in_flight: usize = outcomes.iter().map(|o| o.in_flight).sum();
    let unexplained: Vec<&String> = outcomes.iter().flat_map(|o| o.unexplained.iter()).collect();
    println!(
        "  failed handshakes: {failed}, of which in flight on a killed process {in_flight}; others: {} (goal 0)",
        unexplained.len()
    );
    for u in unexplained.iter().take(20) {
        println!("    {u}");
    }
    let (checked, lost): (usize, usize) = outcomes.iter().fold((0, 0), |(c, l), o| (c + o.checked, l + o.lost));
    println!("  sessions that never became resumable anywhere: {lost} of {checked} checked (goal 0)");
    for o in &outcomes {
        for l in o.lost_detail.iter().take(10) {
            println!("    {l}");
        }
    }
    println!("  replication in quiet phases (a node applies at most 2 x the sessions made + {STORM_SLACK}):");
    for o in &outcomes {
        if let Some((most, bound, no)) = o.worst_replication {
            println!("    worst: phase {no:02}, a node applied {most} (bound {bound})");
        }
        for l in &o.storms {
            println!("    {l}");
        }
    }
    for o in &outcomes {
        for l in &o.own_replays {
            println!("  {l}");
        }
    }
    println!("  long-lived processes, start -> end:");
    for o in &outcomes {
        for l in &o.memory {
            println!("    {l}");
        }
    }
    let violations: Vec<&String> = outcomes.iter().flat_map(|o| o.violations.iter()).collect();
    if violations.is_empty() {
        println!("  all goals met");
    }
    assert!(violations.is_empty(), "soak goals not met: {violations:#?}");
}
