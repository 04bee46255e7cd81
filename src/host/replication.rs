//! Replication wiring: sockets made in the master before fork, receiver
//! threads started in the master after the router processes fork, sending
//! from the router process that created a session, counters shown as uWSGI
//! metrics.

use std::ffi::{c_char, c_void, CString};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{facade, log, symbols};
use crate::config::Replication;
use crate::stats::{ReplicationCounters, SharedCounters};
use crate::sync::seal::{Opener, Sealer};
use crate::sync::{self, keys, net::Sender, Applier};
use crate::tls;

/// Replication state of this process image.
pub struct Replicator {
    sender: Option<Sender>,
    /// With a key file: seals what is sent, opens what arrives.
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    accept_plain: bool,
    counters: SharedCounters,
    /// Bound in `jail`, handed to their threads on the first master cycle.
    receivers: Mutex<Vec<(SocketAddr, UdpSocket)>>,
    started: AtomicBool,
}

static REPLICATOR: OnceLock<Replicator> = OnceLock::new();

pub fn get() -> Option<&'static Replicator> {
    REPLICATOR.get()
}

/// Binds the receivers and makes the sender (master, before fork).
/// `what` names the options in errors.
pub fn setup(replication: &Replication, cache_name: &str) -> Result<&'static Replicator, String> {
    let mc = &replication.multicast;
    let mut receivers = Vec::new();
    for addr in &replication.servers {
        let socket = sync::net::bind_receiver(*addr, mc)
            .map_err(|e| format!("cannot receive session updates of cache \"{cache_name}\" on {addr}: {e}"))?;
        receivers.push((*addr, socket));
    }
    let sender = if replication.nodes.is_empty() {
        None
    } else {
        Some(
            Sender::new(replication.nodes.clone(), mc)
                .map_err(|e| format!("cannot make the socket that sends session updates: {e}"))?,
        )
    };
    let counters = SharedCounters::create().map_err(|e| format!("cannot map the replication counters: {e}"))?;
    let (sealer, opener) = match &replication.key_file {
        Some((option, path)) => {
            let keys = keys::load(option, std::path::Path::new(path))?;
            (
                Some(Sealer::new(&keys[0])),
                Some(Opener::new(keys, replication.max_skew)),
            )
        }
        None => (None, None),
    };
    let _ = REPLICATOR.set(Replicator {
        sender,
        sealer,
        opener,
        accept_plain: replication.accept_plain,
        counters,
        receivers: Mutex::new(receivers),
        started: AtomicBool::new(false),
    });
    Ok(REPLICATOR.get().expect("just set"))
}

impl Replicator {
    pub fn counters(&self) -> &ReplicationCounters {
        self.counters.get()
    }

    /// Whether datagrams are sealed, and with how many keys to open.
    pub fn sealed_with(&self) -> Option<(u64, usize)> {
        Some((self.sealer.as_ref()?.sender(), self.opener.as_ref()?.key_count()))
    }

    /// Sends a session just stored here to every peer.
    pub fn stored(&self, id: &[u8], der: &[u8], expires: u64) {
        if self.sender.is_none() {
            return;
        }
        let mut frame = Vec::with_capacity(der.len() + id.len() + 32);
        match sync::encode_set(id, der, expires, &mut frame) {
            Ok(()) => self.send(&frame),
            Err(_) => ReplicationCounters::bump(&self.counters().send_too_big),
        }
    }

    /// Tells every peer to forget a session.
    pub fn removed(&self, id: &[u8]) {
        if self.sender.is_none() {
            return;
        }
        let mut frame = Vec::with_capacity(id.len() + 8);
        if sync::encode_delete(id, &mut frame).is_ok() {
            self.send(&frame);
        }
    }

    /// Sends a plain frame, sealed first when a key is configured.
    fn send(&self, frame: &[u8]) {
        let Some(sender) = &self.sender else { return };
        match &self.sealer {
            Some(sealer) => {
                let mut sealed = Vec::with_capacity(frame.len() + 64);
                sealer.seal(frame, &self.counters().sealed, unix_ms(), &mut sealed);
                sender.send(&sealed, self.counters());
            }
            None => sender.send(frame, self.counters()),
        }
    }

    /// Starts one receiver thread per bound address, once, in the master
    /// after the router processes forked.
    pub fn start_receivers(&'static self) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let sockets = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|e| e.into_inner()));
        for (addr, socket) in sockets {
            let spawned = std::thread::Builder::new()
                .name("sslcache-recv".into())
                .spawn(move || self.receive(socket));
            if let Err(e) = spawned {
                log::line(&format!("cannot start the receiver thread for {addr}: {e}"));
            }
        }
    }

    /// The receiver thread: never returns, never touches uWSGI's structs.
    fn receive(&self, socket: UdpSocket) {
        block_signals();
        let Some(cache) = tls::installed() else { return };
        let applier = Applier {
            store: &cache.store,
            timeout: cache.timeout,
            counters: self.counters(),
            opener: self.opener.as_ref(),
            accept_plain: self.accept_plain,
        };
        let mut buf = vec![0u8; 65536];
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let outcome = applier.apply(&buf[..n], unix_ms());
                    if cache.verbose {
                        log::line(&format!("replication datagram of {n} bytes: {outcome:?}"));
                    }
                    facade::publish(&cache.store);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Registers every counter as a uWSGI metric `sslcache.<cache>.<name>`
    /// (read by uWSGI's metrics thread, shown by the stats server).
    pub fn register_metrics(&self, cache_name: &str) -> usize {
        let Some(register) = symbols::get().and_then(|s| s.register_metric) else {
            return 0;
        };
        let prefix: String = cache_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut registered = 0;
        for (field, counter) in self.counters().fields() {
            let name = CString::new(format!("sslcache.{prefix}.{field}")).expect("no NUL");
            // SAFETY: uwsgi_register_metric copies the name; the "ptr"
            // collector reads the counter (a u64 in a mapping that lives as
            // long as the process) from uWSGI's metrics thread.
            let metric = unsafe {
                register(
                    name.as_ptr() as *mut c_char,
                    std::ptr::null_mut(),
                    METRIC_COUNTER,
                    c"ptr".as_ptr() as *mut c_char,
                    counter.as_ptr().cast::<c_void>(),
                    0,
                    std::ptr::null_mut(),
                )
            };
            registered += usize::from(!metric.is_null());
        }
        registered
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `UWSGI_METRIC_COUNTER`, the first value of its enum in uwsgi.h.
const METRIC_COUNTER: u8 = 0;

/// Keeps process-directed signals for the master's main thread, as uWSGI
/// does in its own threads.
fn block_signals() {
    // SAFETY: builds a full signal set and applies it to this thread only.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}
