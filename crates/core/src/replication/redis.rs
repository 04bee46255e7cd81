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
use super::seal::Sealer;
use super::transport::{Inbound, Links, Pump, Received, Replier, Transport};
use super::wire::{self, Frame, FrameLimits};
use crate::clock;
use crate::config::{RedisServer, Replication};
use crate::os::fork_guard;

/// Bytes of socket buffer for the hand-off from router processes.
const HANDOFF_BUFFER: usize = 4 << 20;
/// Frames kept per Redis server while it cannot be written to.
const BACKLOG: usize = 200_000;
/// Frames written per pipeline.
const BATCH: usize = 512;
/// Keys per SCAN step while loading.
const SCAN_COUNT: usize = 500;
/// Records applied per second at most while loading (the master's thread
/// shares the machine with handshakes).
const LOAD_RATE: u64 = 50_000;
/// Redis commands give up after this (the thread never hangs).
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The Redis links the settings ask for: a hand-off from the router
/// processes, a writer in the master, a subscriber per server.
pub fn links(settings: &Replication, cache: &str, names: Arc<Names>) -> Result<Links, String> {
    let mut links = Links::default();
    if settings.redis.is_empty() {
        return Ok(links);
    }
    let mut clients = Vec::new();
    for server in &settings.redis {
        let client = redis::Client::open(server.url.as_str())
            .map_err(|e| format!("cannot use {} for cache \"{cache}\": {e}", server.shown))?;
        clients.push((server.clone(), client));
    }
    let (routers, master) =
        UnixDatagram::pair().map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    routers
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the hand-off to the Redis writer: {e}"))?;
    let _ = socket2::SockRef::from(&routers).set_send_buffer_size(HANDOFF_BUFFER);
    let _ = socket2::SockRef::from(&master).set_recv_buffer_size(HANDOFF_BUFFER);
    let shown: Vec<String> = settings.redis.iter().map(|s| s.shown.clone()).collect();
    links.transports.push(Box::new(HandOff {
        socket: routers,
        shown: shown.join(", "),
    }));
    for (server, client) in &clients {
        links
            .inbounds
            .push(Box::new(RedisInbound::new(server, client.clone(), Arc::clone(&names))));
    }
    links.pumps.push(Box::new(Writer {
        socket: master,
        links: clients
            .into_iter()
            .map(|(server, client)| Link::new(server, client))
            .collect(),
        names,
    }));
    Ok(links)
}

/// Router side: hands plain frames to the master's writer, never waiting.
pub struct HandOff {
    socket: UnixDatagram,
    shown: String,
}

impl Transport for HandOff {
    fn send(&self, frame: &[u8], counters: &ReplicationCounters) {
        match self.socket.send(frame) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReplicationCounters::bump(&counters.redis_dropped),
            Err(_) => ReplicationCounters::bump(&counters.redis_errors),
        }
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn wants_plain(&self) -> bool {
        true
    }
}

/// One Redis server as the writer sees it.
struct Link {
    server: RedisServer,
    client: redis::Client,
    connection: Option<redis::Connection>,
    backlog: VecDeque<Arc<Vec<u8>>>,
    retry: Retry,
}

impl Link {
    fn new(server: RedisServer, client: redis::Client) -> Link {
        Link {
            server,
            client,
            connection: None,
            backlog: VecDeque::new(),
            retry: Retry::default(),
        }
    }
}

/// Back-off between connection attempts, and whether one was ever made.
struct Retry {
    next: Instant,
    wait: Duration,
    connected_once: bool,
    /// Whether the last failure was logged (once per outage).
    logged: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            next: Instant::now(),
            wait: FIRST_RETRY,
            connected_once: false,
            logged: false,
        }
    }
}

impl Retry {
    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    fn failed(&mut self, what: &str, shown: &str, error: &dyn std::fmt::Display, counters: &ReplicationCounters) {
        ReplicationCounters::bump(&counters.redis_errors);
        if !self.logged {
            log::error!("{what} {shown}: {error}; retrying, handshakes do not wait for it");
            self.logged = true;
        }
        self.next = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(LAST_RETRY);
    }

    fn connected(&mut self, what: &str, shown: &str, counters: &ReplicationCounters) {
        if self.connected_once {
            ReplicationCounters::bump(&counters.redis_reconnects);
            log::info!("{what} {shown} again");
        }
        self.connected_once = true;
        self.logged = false;
        self.wait = FIRST_RETRY;
    }
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

/// Master side: writes and publishes what the router processes hand over.
pub struct Writer {
    socket: UnixDatagram,
    links: Vec<Link>,
    names: Arc<Names>,
}

/// Frames of any size the writer may be handed (the store's limits were
/// checked when the session was made).
const ANY_FRAME: FrameLimits = FrameLimits {
    max_key: u16::MAX as usize,
    max_value: u16::MAX as usize,
};

impl Pump for Writer {
    fn run(
        mut self: Box<Self>,
        sealer: Option<&Sealer>,
        counters: &ReplicationCounters,
        keep_running: &dyn Fn() -> bool,
    ) {
        let _ = self.socket.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = vec![0u8; 65536];
        while keep_running() {
            self.take_handed(&mut buf, counters);
            for link in &mut self.links {
                write_backlog(link, &self.names, sealer, counters);
            }
        }
    }

    fn describe(&self) -> String {
        let shown: Vec<&str> = self.links.iter().map(|l| l.server.shown.as_str()).collect();
        format!("the Redis writer ({})", shown.join(", "))
    }
}

impl Writer {
    /// Waits a little for handed frames, then takes every one waiting.
    fn take_handed(&mut self, buf: &mut [u8], counters: &ReplicationCounters) {
        let mut first = true;
        loop {
            let received = self.socket.recv(buf);
            match received {
                Ok(n) => {
                    let frame = Arc::new(buf[..n].to_vec());
                    for link in &mut self.links {
                        if link.backlog.len() >= BACKLOG {
                            link.backlog.pop_front();
                            ReplicationCounters::bump(&counters.redis_dropped);
                        }
                        link.backlog.push_back(Arc::clone(&frame));
                    }
                }
                Err(_) => break,
            }
            if first {
                let _ = self.socket.set_nonblocking(true);
                first = false;
            }
            if self.links.iter().all(|l| l.backlog.len() >= BATCH) {
                break;
            }
        }
        if !first {
            let _ = self.socket.set_nonblocking(false);
        }
    }
}

/// Writes up to a batch of `link`'s backlog (connecting first if due).
fn write_backlog(link: &mut Link, names: &Names, sealer: Option<&Sealer>, counters: &ReplicationCounters) {
    if link.backlog.is_empty() {
        return;
    }
    if link.connection.is_none() {
        if !link.retry.due() {
            return;
        }
        match connect(&link.client) {
            Ok(c) => {
                link.connection = Some(c);
                link.retry
                    .connected("writing sessions to", &link.server.shown, counters);
            }
            Err(e) => {
                link.retry
                    .failed("cannot write sessions to", &link.server.shown, &e, counters);
                return;
            }
        }
    }
    let now_ms = clock::unix_ms();
    let mut pipe = redis::pipe();
    let take = link.backlog.len().min(BATCH);
    let mut commands = 0;
    let mut sealed = Vec::new();
    for frame in link.backlog.iter().take(take) {
        let payload: &[u8] = match sealer {
            Some(sealer) => {
                // Not while the master forks: sealing takes OpenSSL's locks.
                let _held = fork_guard::hold();
                sealed.clear();
                sealer.seal(frame, &counters.sealed, now_ms, &mut sealed);
                &sealed
            }
            None => frame,
        };
        match wire::decode_plain(frame, ANY_FRAME) {
            Ok(Frame::Set { key, expires, .. }) => {
                let expires_ms = expires.saturating_mul(1000);
                if expires_ms <= now_ms {
                    continue;
                }
                pipe.cmd("SET")
                    .arg(names.key_for(key))
                    .arg(payload)
                    .arg("PXAT")
                    .arg(expires_ms)
                    .ignore();
            }
            Ok(Frame::Delete { key }) => {
                pipe.cmd("DEL").arg(names.key_for(key)).ignore();
            }
            _ => continue,
        }
        pipe.cmd("PUBLISH").arg(names.channel()).arg(payload).ignore();
        commands += 1;
    }
    let connection = link.connection.as_mut().expect("connected above");
    let written = if commands == 0 {
        Ok(())
    } else {
        pipe.query::<()>(connection)
    };
    match written {
        Ok(()) => {
            link.backlog.drain(..take);
            ReplicationCounters::add(&counters.redis_published, commands);
        }
        Err(e) => {
            link.connection = None;
            link.retry.failed(
                "lost the connection writing sessions to",
                &link.server.shown,
                &e,
                counters,
            );
        }
    }
}

/// Reading a cache's sessions of record back, step by step.
struct Loader {
    connection: redis::Connection,
    cursor: u64,
    scanned_once: bool,
    batch: VecDeque<(Vec<u8>, Vec<u8>)>,
    started: Instant,
    handed: u64,
}

/// Master side: what other nodes publish, and the sessions of record.
pub struct RedisInbound {
    server: RedisServer,
    client: redis::Client,
    names: Arc<Names>,
    subscribed: Option<redis::Connection>,
    loader: Option<Loader>,
    retry: Retry,
}

impl RedisInbound {
    fn new(server: &RedisServer, client: redis::Client, names: Arc<Names>) -> RedisInbound {
        RedisInbound {
            server: server.clone(),
            client,
            names,
            subscribed: None,
            loader: None,
            retry: Retry::default(),
        }
    }

    /// Subscribes (before loading: nothing published meanwhile is missed)
    /// and starts a load of the sessions of record.
    fn connect(&mut self) -> redis::RedisResult<()> {
        let mut subscribed = connect(&self.client)?;
        subscribed.send_packed_command(&redis::cmd("SUBSCRIBE").arg(self.names.channel()).get_packed_command())?;
        subscribed.recv_response()?;
        let loading = connect(&self.client)?;
        self.subscribed = Some(subscribed);
        self.loader = Some(Loader {
            connection: loading,
            cursor: 0,
            scanned_once: false,
            batch: VecDeque::new(),
            started: Instant::now(),
            handed: 0,
        });
        Ok(())
    }

    /// The next record of the load in progress, if any.
    fn next_record(&mut self, buf: &mut [u8]) -> redis::RedisResult<Option<Received>> {
        let Some(loader) = self.loader.as_mut() else {
            return Ok(None);
        };
        while loader.batch.is_empty() {
            if loader.scanned_once && loader.cursor == 0 {
                let took = loader.started.elapsed();
                log::info!(
                    "read {} sessions of record from {} in {} ms",
                    loader.handed,
                    self.server.shown,
                    took.as_millis()
                );
                self.loader = None;
                return Ok(None);
            }
            let (cursor, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(loader.cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.names.prefix()))
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query(&mut loader.connection)?;
            loader.cursor = cursor;
            loader.scanned_once = true;
            if keys.is_empty() {
                continue;
            }
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query(&mut loader.connection)?;
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
        if value.len() > buf.len() {
            return Ok(Some(Received {
                len: 0,
                from: None,
                record: Some(name),
            }));
        }
        buf[..value.len()].copy_from_slice(&value);
        Ok(Some(Received {
            len: value.len(),
            from: None,
            record: Some(name),
        }))
    }

    fn next_message(&mut self, buf: &mut [u8]) -> redis::RedisResult<Option<Received>> {
        let Some(subscribed) = self.subscribed.as_mut() else {
            return Ok(None);
        };
        let value = match subscribed.recv_response() {
            Ok(value) => value,
            Err(e) if e.is_timeout() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(message) = redis::Msg::from_owned_value(value) else {
            return Ok(None);
        };
        let payload = message.get_payload_bytes();
        let len = payload.len().min(buf.len());
        buf[..len].copy_from_slice(&payload[..len]);
        Ok(Some(Received::datagram(len, None)))
    }
}

impl Inbound for RedisInbound {
    fn next(&mut self, buf: &mut [u8], counters: &ReplicationCounters) -> io::Result<Option<Received>> {
        if self.subscribed.is_none() {
            if !self.retry.due() {
                std::thread::sleep(Duration::from_millis(100));
                return Ok(None);
            }
            match self.connect() {
                Ok(()) => self
                    .retry
                    .connected("receiving sessions from", &self.server.shown, counters),
                Err(e) => {
                    self.retry
                        .failed("cannot receive sessions from", &self.server.shown, &e, counters);
                    return Ok(None);
                }
            }
        }
        let next = match self.next_record(buf) {
            Ok(Some(record)) => Ok(Some(record)),
            Ok(None) => self.next_message(buf),
            Err(e) => Err(e),
        };
        match next {
            Ok(received) => Ok(received),
            Err(e) => {
                self.subscribed = None;
                self.loader = None;
                self.retry.failed(
                    "lost the connection receiving sessions from",
                    &self.server.shown,
                    &e,
                    counters,
                );
                Ok(None)
            }
        }
    }

    fn local(&self) -> String {
        self.server.shown.clone()
    }

    fn replier(&self) -> Option<Box<dyn Replier>> {
        None
    }

    fn names(&self) -> Option<&Names> {
        Some(&self.names)
    }
}
