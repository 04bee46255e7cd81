//! Redis as a replication transport and the store of record, never on the
//! handshake path.
//!
//! - A router process hands each new session (a plain frame, the same as a
//!   UDP datagram's) to its master over a local datagram socket pair made
//!   before fork ([`HandOff`]): non-blocking; a full queue drops and counts.
//! - In the master, the [`Writer`] thread seals the frame (with a cluster
//!   key), `SET`s it under the session's name ([`Names`]) with the session's
//!   expiry (`PXAT`), and `PUBLISH`es it on the cache's channel, pipelined.
//!   While Redis is unreachable it keeps a bounded backlog and reconnects
//!   with back-off; sessions made meanwhile are written and published when
//!   it is back.
//! - Every master subscribes ([`RedisInbound`]) and applies what others
//!   publish like any datagram (sealed: authenticated, replay window). After
//!   each (re)connection it first reads the cache's sessions of record back
//!   (`SCAN` + `MGET`, paced): a starting node, a node back from an outage
//!   or a whole fleet restarted gets every live session. Records are
//!   authenticated and must sit under their own session's name.
//!
//! Lookups stay in local shared memory: a Redis that is slow, down or back
//! changes nothing for handshakes.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::ReplicationCounters;
use super::names::Names;
use super::transport::{Inbound, Links, Received, Replier};
use crate::config::{self, RedisTls, Replication};

mod connect;
mod writer;

use connect::{client, Retry, Target, TlsHints, FIRST_RETRY, IO_TIMEOUT, LAST_RETRY};
use writer::Link;
pub use writer::{HandOff, Writer};

/// Bytes of socket buffer for the hand-off from router processes.
const HANDOFF_BUFFER: usize = 4 << 20;
/// Keys per SCAN step while loading.
const SCAN_COUNT: usize = 500;
/// Records applied per second at most while loading (the master's thread
/// shares the machine with handshakes).
const LOAD_RATE: u64 = 50_000;

/// The Redis links the settings ask for: a hand-off from the router
/// processes, a writer in the master, a subscriber per server.
pub fn links(settings: &Replication, cache: &str, names: Arc<Names>) -> Result<Links, String> {
    let mut links = Links::default();
    let mut targets = Vec::new();
    for server in &settings.redis {
        let client = client(server, &settings.redis_tls)
            .map_err(|e| format!("cannot use {} for cache \"{cache}\": {e}", server.shown))?;
        targets.push(Target::Server {
            server: server.clone(),
            client,
            hints: TlsHints::new(server, &settings.redis_tls),
        });
    }
    if !settings.redis_cluster.is_empty() {
        let shown: Vec<&str> = settings.redis_cluster.iter().map(|s| s.shown.as_str()).collect();
        let shown = format!("the Redis Cluster of {}", shown.join(", "));
        let fail = |e: redis::RedisError| format!("cannot use {shown} for cache \"{cache}\": {e}");
        let cluster = redis::cluster::ClusterClient::builder(settings.redis_cluster.iter().map(|s| s.url.as_str()))
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            .build()
            .map_err(fail)?;
        let seeds = settings
            .redis_cluster
            .iter()
            // No CA or client certificate: they are refused with a
            // `rediss://` cluster (config), and plain seeds need none.
            .map(|s| client(s, &RedisTls::default()).map(|c| (s.url.clone(), c)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        targets.push(Target::Cluster { shown, cluster, seeds });
    }
    if targets.is_empty() {
        return Ok(links);
    }
    let (routers, master) =
        UnixDatagram::pair().map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    routers
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    let _ = socket2::SockRef::from(&routers).set_send_buffer_size(HANDOFF_BUFFER);
    let _ = socket2::SockRef::from(&master).set_recv_buffer_size(HANDOFF_BUFFER);
    // Sessions cross it in clear: not for application processes.
    for end in [&routers, &master] {
        crate::shm::scrub::register_fd(std::os::fd::AsRawFd::as_raw_fd(end));
    }
    let shown: Vec<&str> = targets.iter().map(Target::shown).collect();
    links.transports.push(Box::new(HandOff {
        socket: routers,
        shown: shown.join(", "),
    }));
    for target in &targets {
        links
            .inbounds
            .push(Box::new(RedisInbound::new(target.clone(), Arc::clone(&names))));
    }
    links.pumps.push(Box::new(Writer {
        socket: master,
        links: targets.into_iter().map(Link::new).collect(),
        names,
    }));
    Ok(links)
}

/// How the startup summary names what verifies the `rediss://` servers
/// (nothing when none is).
pub fn tls_summary(settings: &Replication) -> Option<String> {
    let tls = &settings.redis_tls;
    let verified: Vec<String> = settings
        .redis
        .iter()
        .chain(&settings.redis_cluster)
        .filter(|s| config::is_tls(s))
        .map(|s| {
            let by = if config::is_insecure(s) {
                "NOT verified (#insecure)".to_string()
            } else if let (Some(ca), false) = (&tls.ca, settings.redis_cluster.contains(s)) {
                format!("verified with the CA of {}", ca.shown())
            } else {
                "verified with the system's trust store".to_string()
            };
            format!("{} {by}", s.shown)
        })
        .collect();
    if verified.is_empty() {
        return None;
    }
    let mut out = format!("Redis TLS: {}", verified.join(", "));
    if let Some((cert, _)) = &tls.client {
        out += &format!(", client certificate {}", cert.shown());
    }
    Some(out)
}

/// Reading a cache's sessions of record back, step by step: every node
/// holding some (a cluster's masters), one after the other.
struct Loader {
    holders: Vec<redis::Connection>,
    cursor: u64,
    scanned_once: bool,
    batch: VecDeque<(Vec<u8>, Vec<u8>)>,
    started: Instant,
    handed: u64,
}

/// What the subscriber thread tells the receiver.
enum Heard {
    /// Subscribed (again): what was published before may be missed, so
    /// the sessions of record are read back.
    Subscribed,
    Message(Vec<u8>),
    /// The subscription broke (or could not be made).
    Lost(String),
}

/// Messages waiting for the receiver, at most (the subscriber then waits,
/// and Redis buffers).
const HEARD_QUEUE: usize = 65_536;

/// Master side: what other nodes publish, and the sessions of record.
///
/// A thread of its own holds the subscription (uWSGI's threads are not
/// involved): a read that times out on a subscribed connection is fine
/// there, where a timed-out request would make the client skip the next
/// message as its late reply.
pub struct RedisInbound {
    target: Target,
    names: Arc<Names>,
    heard: Option<std::sync::mpsc::Receiver<Heard>>,
    loader: Option<Loader>,
    /// A load is due (subscribed again) but could not start yet.
    load_due: bool,
    retry: Retry,
}

impl RedisInbound {
    fn new(target: Target, names: Arc<Names>) -> RedisInbound {
        RedisInbound {
            target,
            names,
            heard: None,
            loader: None,
            load_due: false,
            retry: Retry::default(),
        }
    }

    /// Starts the subscriber thread (once, from the receiver thread).
    fn start_subscriber(&mut self) -> io::Result<()> {
        let (tell, heard) = std::sync::mpsc::sync_channel(HEARD_QUEUE);
        let (target, channel) = (self.target.clone(), self.names.channel().to_string());
        std::thread::Builder::new()
            .name("sslcache-redis-sub".into())
            .spawn(move || {
                crate::os::block_signals();
                super::transport::favour_this_thread();
                subscribe_forever(&target, &channel, &tell);
            })?;
        self.heard = Some(heard);
        Ok(())
    }

    /// Starts reading the sessions of record back.
    fn start_load(&mut self, counters: &ReplicationCounters) {
        match self.target.holders() {
            Ok(holders) => {
                self.loader = Some(Loader {
                    holders,
                    cursor: 0,
                    scanned_once: false,
                    batch: VecDeque::new(),
                    started: Instant::now(),
                    handed: 0,
                });
                self.load_due = false;
            }
            Err(e) => self.retry.failed(
                "cannot read the sessions of record from",
                self.target.shown(),
                &e,
                counters,
            ),
        }
    }

    /// The next record of the load in progress, if any.
    fn next_record(&mut self, buf: &mut [u8]) -> redis::RedisResult<Option<Received>> {
        let Some(loader) = self.loader.as_mut() else {
            return Ok(None);
        };
        while loader.batch.is_empty() {
            if loader.scanned_once && loader.cursor == 0 {
                // This holder is done; the next one, if any.
                loader.holders.pop();
                loader.scanned_once = false;
            }
            let Some(holder) = loader.holders.last_mut() else {
                log::info!(
                    "read {} sessions of record from {} in {} ms",
                    loader.handed,
                    self.target.shown(),
                    loader.started.elapsed().as_millis()
                );
                self.loader = None;
                return Ok(None);
            };
            let (cursor, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(loader.cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.names.prefix()))
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query(holder)?;
            loader.cursor = cursor;
            loader.scanned_once = true;
            if keys.is_empty() {
                continue;
            }
            // One GET each (keys of a cluster node span slots: no MGET).
            let mut gets = redis::pipe();
            for key in &keys {
                gets.cmd("GET").arg(key);
            }
            let values: Vec<Option<Vec<u8>>> = gets.query(holder)?;
            loader
                .batch
                .extend(keys.into_iter().zip(values).filter_map(|(k, v)| Some((k, v?))));
        }
        // Paced: at most LOAD_RATE records a second.
        let due = loader.started + Duration::from_micros(loader.handed * 1_000_000 / LOAD_RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (name, value) = loader.batch.pop_front().expect("not empty");
        loader.handed += 1;
        // A record larger than any datagram is handed empty: refused.
        let len = if value.len() <= buf.len() { value.len() } else { 0 };
        buf[..len].copy_from_slice(&value[..len]);
        Ok(Some(Received {
            len,
            from: None,
            record: Some(name),
        }))
    }
}

/// The subscriber thread: subscribes, passes every message on, and
/// subscribes again with back-off when the connection breaks.
fn subscribe_forever(target: &Target, channel: &str, tell: &std::sync::mpsc::SyncSender<Heard>) {
    let mut wait = FIRST_RETRY;
    loop {
        let lost = match target.any_node() {
            Ok(mut connection) => {
                let mut pubsub = connection.as_pubsub();
                match pubsub.subscribe(channel) {
                    Ok(()) => {
                        wait = FIRST_RETRY;
                        if tell.send(Heard::Subscribed).is_err() {
                            return;
                        }
                        loop {
                            match pubsub.get_message() {
                                Ok(message) => {
                                    let payload = message.get_payload_bytes().to_vec();
                                    if tell.send(Heard::Message(payload)).is_err() {
                                        return;
                                    }
                                }
                                Err(e) if e.is_timeout() => continue,
                                Err(e) => break e.to_string(),
                            }
                        }
                    }
                    Err(e) => target.explain(&e),
                }
            }
            Err(e) => target.explain(&e),
        };
        if tell.send(Heard::Lost(lost)).is_err() {
            return;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(LAST_RETRY);
    }
}

impl Inbound for RedisInbound {
    fn next(&mut self, buf: &mut [u8], counters: &ReplicationCounters) -> io::Result<Option<Received>> {
        if self.heard.is_none() {
            self.start_subscriber()?;
        }
        if self.load_due && self.loader.is_none() && self.retry.due() {
            self.start_load(counters);
        }
        match self.next_record(buf) {
            Ok(Some(record)) => return Ok(Some(record)),
            Ok(None) => {}
            Err(e) => {
                self.loader = None;
                self.load_due = true;
                self.retry.failed(
                    "lost the connection reading the sessions of record from",
                    self.target.shown(),
                    &e,
                    counters,
                );
            }
        }
        let heard = self.heard.as_ref().expect("started above");
        // While a load runs, messages are taken between records.
        let wait = if self.loader.is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        let event = match heard.recv_timeout(wait) {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the Redis subscriber thread stopped"))
            }
        };
        match event {
            Heard::Message(payload) => {
                let len = payload.len().min(buf.len());
                buf[..len].copy_from_slice(&payload[..len]);
                Ok(Some(Received::datagram(len, None)))
            }
            Heard::Subscribed => {
                self.retry
                    .connected("receiving sessions from", self.target.shown(), counters);
                self.load_due = true;
                self.start_load(counters);
                Ok(None)
            }
            Heard::Lost(why) => {
                self.retry
                    .failed("lost the subscription to", self.target.shown(), &why, counters);
                Ok(None)
            }
        }
    }

    fn local(&self) -> String {
        self.target.shown().to_string()
    }

    fn replier(&self) -> Option<Box<dyn Replier>> {
        None
    }

    fn names(&self) -> Option<&Names> {
        Some(&self.names)
    }
}
