//! Reading from Redis, in each master: a thread of its own subscribes to
//! the cache's channel and passes on what other nodes publish (applied like
//! any datagram); after each (re)subscription the cache's sessions of
//! record are read back (`SCAN` + `GET`, paced, from every node holding
//! some), so that a starting node, or one back from an outage, gets every
//! live session.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connect::{Retry, Target, FIRST_RETRY, LAST_RETRY};
use crate::replication::counters::ReplicationCounters;
use crate::replication::names::Names;
use crate::replication::transport::{self, Inbound, Received, Replier};

/// Keys per SCAN step while loading.
const SCAN_COUNT: usize = 500;
/// Records applied per second at most while loading (the master's thread
/// shares the machine with handshakes).
const LOAD_RATE: u64 = 50_000;

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
    pub(super) fn new(target: Target, names: Arc<Names>) -> RedisInbound {
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
                transport::favour_this_thread();
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
