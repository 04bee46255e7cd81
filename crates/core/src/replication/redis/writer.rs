//! Writing to Redis: a router process hands each plain frame to its
//! master over a local datagram socket ([`HandOff`], never waiting: a full
//! queue drops and counts); in the master the [`Writer`] keeps a bounded
//! backlog per target, seals each frame when keyed, and writes it with
//! `SET .. PXAT` under the session's name and `PUBLISH`es it, pipelined,
//! reconnecting with back-off while a target is unreachable.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use super::connect::{connect, Retry, Target};
use crate::clock;
use crate::os::fork_guard;
use crate::replication::counters::ReplicationCounters;
use crate::replication::names::Names;
use crate::replication::seal::Sealer;
use crate::replication::transport::{Pump, Transport};
use crate::replication::wire::{self, Frame, FrameLimits};

/// Frames kept per Redis server while it cannot be written to.
const BACKLOG: usize = 200_000;
/// Frames written per pipeline.
const BATCH: usize = 512;

/// Router side: hands plain frames to the master's writer, never waiting.
pub struct HandOff {
    pub(super) socket: UnixDatagram,
    pub(super) shown: String,
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

/// How the writer is connected to a target.
enum Writing {
    Server(redis::Connection),
    /// Sets and deletes go to the slot's master; publishes to any node.
    Cluster {
        keys: Box<redis::cluster::ClusterConnection>,
        publish: redis::Connection,
    },
}

/// One target as the writer sees it.
pub(super) struct Link {
    target: Target,
    connection: Option<Writing>,
    backlog: VecDeque<Arc<Vec<u8>>>,
    retry: Retry,
}

impl Link {
    pub(super) fn new(target: Target) -> Link {
        Link {
            target,
            connection: None,
            backlog: VecDeque::new(),
            retry: Retry::default(),
        }
    }

    fn connect(&self) -> redis::RedisResult<Writing> {
        match &self.target {
            Target::Server { client, .. } => Ok(Writing::Server(connect(client)?)),
            Target::Cluster { cluster, .. } => Ok(Writing::Cluster {
                keys: Box::new(cluster.get_connection()?),
                publish: self.target.any_node()?,
            }),
        }
    }
}

/// Master side: writes and publishes what the router processes hand over.
pub struct Writer {
    pub(super) socket: UnixDatagram,
    pub(super) links: Vec<Link>,
    pub(super) names: Arc<Names>,
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
            // Connected before the first session comes, not when it does.
            for link in &mut self.links {
                ensure_connected(link, counters);
            }
            // Catching up (a backlog and a connection): no waiting for more.
            let catching_up = self
                .links
                .iter()
                .any(|l| !l.backlog.is_empty() && l.connection.is_some());
            self.take_handed(&mut buf, !catching_up, counters);
            for link in &mut self.links {
                write_backlog(link, &self.names, sealer, counters);
            }
        }
    }

    fn describe(&self) -> String {
        let shown: Vec<&str> = self.links.iter().map(|l| l.target.shown()).collect();
        format!("the Redis writer ({})", shown.join(", "))
    }
}

impl Writer {
    /// Waits a little for handed frames (if `wait`), then takes every one
    /// waiting.
    fn take_handed(&mut self, buf: &mut [u8], wait: bool, counters: &ReplicationCounters) {
        let mut first = wait;
        if !wait {
            let _ = self.socket.set_nonblocking(true);
        }
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
        if !first || !wait {
            let _ = self.socket.set_nonblocking(false);
        }
    }
}

/// Whether `link` is connected, connecting first when a retry is due.
fn ensure_connected(link: &mut Link, counters: &ReplicationCounters) -> bool {
    if link.connection.is_some() {
        return true;
    }
    if !link.retry.due() {
        return false;
    }
    match link.connect() {
        Ok(c) => {
            link.connection = Some(c);
            link.retry
                .connected("writing sessions to", link.target.shown(), counters);
            true
        }
        Err(e) => {
            let why = link.target.explain(&e);
            link.retry
                .failed("cannot write sessions to", link.target.shown(), &why, counters);
            false
        }
    }
}

/// Writes up to a batch of `link`'s backlog (connecting first if due).
fn write_backlog(link: &mut Link, names: &Names, sealer: Option<&Sealer>, counters: &ReplicationCounters) {
    if link.backlog.is_empty() || !ensure_connected(link, counters) {
        return;
    }
    let now_ms = clock::unix_ms();
    let (mut keyed, mut published) = (redis::pipe(), redis::pipe());
    let mut clustered = redis::cluster::cluster_pipe();
    let cluster = matches!(link.connection, Some(Writing::Cluster { .. }));
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
        let mut command = match wire::decode_plain(frame, ANY_FRAME) {
            Ok(Frame::Set { key, expires, .. }) => {
                let expires_ms = expires.saturating_mul(1000);
                if expires_ms <= now_ms {
                    continue;
                }
                let mut c = redis::cmd("SET");
                c.arg(names.key_for(key)).arg(payload).arg("PXAT").arg(expires_ms);
                c
            }
            Ok(Frame::Delete { key }) => {
                let mut c = redis::cmd("DEL");
                c.arg(names.key_for(key));
                c
            }
            _ => continue,
        };
        // One server: both in one pipeline, in order.
        let publish = redis::cmd("PUBLISH").arg(names.channel()).arg(payload).to_owned();
        if cluster {
            clustered.add_command(std::mem::take(&mut command)).ignore();
            published.add_command(publish).ignore();
        } else {
            keyed.add_command(command).ignore();
            keyed.add_command(publish).ignore();
        }
        commands += 1;
    }
    let written = match (commands, link.connection.as_mut().expect("connected above")) {
        (0, _) => Ok(()),
        (_, Writing::Server(connection)) => keyed.query::<()>(connection),
        // Published first: the other nodes wait for that, not for the
        // sets spread over the masters.
        (_, Writing::Cluster { keys, publish }) => published
            .query::<()>(publish)
            .and_then(|()| clustered.query::<()>(keys)),
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
                link.target.shown(),
                &e,
                counters,
            );
        }
    }
}
