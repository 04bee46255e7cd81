//! Replication wiring: sockets made in the master before fork, receiver
//! threads started in the master after the router processes fork, sending
//! from the router process that created a session, counters shown as uWSGI
//! metrics.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{facade, log, metrics};
use crate::config::Replication;
use crate::stats::{ReplicationCounters, SharedCounters};
use crate::store::monotonic_ms;
use crate::sync::keys::{self, Key};
use crate::sync::ratelimit::{LogBudget, Verdict};
use crate::sync::seal::{Opener, Sealer};
use crate::sync::{self, net::Sender, Applier};
use crate::tls;

static RECEIVER_PANICKED: AtomicBool = AtomicBool::new(false);

/// Keeps `fork()` in the master and the receiver threads' work apart.
///
/// A receiver thread calls into OpenSSL (opening sealed datagrams), and
/// OpenSSL takes global locks. If the master forked a router process while
/// that thread held one, the child would inherit it held, by a thread that
/// does not exist in the child, and its first handshake would wait forever.
/// A `pthread_atfork` prepare handler takes this lock, so a fork waits for
/// the datagram being applied (microseconds) and never happens inside one.
mod fork_guard {
    use std::cell::UnsafeCell;
    use std::sync::Once;

    struct Lock(UnsafeCell<libc::pthread_mutex_t>);
    // SAFETY: the mutex is only used through pthread calls, which are
    // thread-safe.
    unsafe impl Sync for Lock {}

    static LOCK: Lock = Lock(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
    static INSTALL: Once = Once::new();

    extern "C" fn lock() {
        // SAFETY: a statically initialised mutex.
        unsafe { libc::pthread_mutex_lock(LOCK.0.get()) };
    }

    extern "C" fn unlock() {
        // SAFETY: called by the thread that locked it in `lock` (in the
        // child, the forking thread is that thread's copy).
        unsafe { libc::pthread_mutex_unlock(LOCK.0.get()) };
    }

    /// Registers the fork handlers (once per process image).
    pub fn install() {
        INSTALL.call_once(|| {
            // SAFETY: registers handlers that only lock and unlock LOCK.
            unsafe { libc::pthread_atfork(Some(lock), Some(unlock), Some(unlock)) };
        });
    }

    /// Held while a receiver thread works on a datagram.
    pub struct Held;

    pub fn hold() -> Held {
        lock();
        Held
    }

    impl Drop for Held {
        fn drop(&mut self) {
            unlock();
        }
    }
}

/// Replication state of this process image.
pub struct Replicator {
    sender: Option<Sender>,
    /// With a key file: seals what is sent, opens what arrives.
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    accept_plain: bool,
    /// Clock skew tolerated on sealed datagrams, seconds.
    max_skew: u64,
    counters: SharedCounters,
    /// Bound in `post_init`, handed to their threads on the first master
    /// cycle.
    receivers: Mutex<Vec<(SocketAddr, UdpSocket)>>,
    started: AtomicBool,
}

static REPLICATOR: OnceLock<Replicator> = OnceLock::new();

pub fn get() -> Option<&'static Replicator> {
    REPLICATOR.get()
}

/// Keys read in `jail`, while the master still has its privileges (uWSGI
/// drops them before `post_init`); taken by `setup`.
static PRELOADED_KEYS: Mutex<Option<Vec<Key>>> = Mutex::new(None);

/// Reads the replication keys, if any (master, before privileges drop).
pub fn preload_keys(replication: &Replication) -> Result<Option<usize>, String> {
    let Some((option, path)) = &replication.key_file else {
        return Ok(None);
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let reader = unsafe { libc::geteuid() };
    let keys = keys::load(option, std::path::Path::new(path), reader)?;
    let count = keys.len();
    *PRELOADED_KEYS.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    Ok(Some(count))
}

/// Binds the receivers, makes the sender, takes the keys (master, before
/// fork).
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
    let preloaded = PRELOADED_KEYS.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (sealer, opener) = match (&replication.key_file, preloaded) {
        (Some(_), Some(keys)) => (
            Some(Sealer::new(&keys[0])),
            Some(Opener::new(keys, replication.max_skew, unix_ms())),
        ),
        (Some((option, path)), None) => {
            return Err(format!(
                "{option} = {path}: the keys were not read before privileges dropped"
            ))
        }
        (None, _) => (None, None),
    };
    let _ = REPLICATOR.set(Replicator {
        sender,
        sealer,
        opener,
        accept_plain: replication.accept_plain,
        max_skew: replication.max_skew,
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
        let mut sealed = Vec::new();
        let datagram = match &self.sealer {
            Some(sealer) => {
                sealer.seal(frame, &self.counters().sealed, unix_ms(), &mut sealed);
                &sealed[..]
            }
            None => frame,
        };
        if datagram.len() > MAX_UDP_PAYLOAD {
            ReplicationCounters::bump(&self.counters().send_too_big);
            return;
        }
        sender.send(datagram, self.counters());
    }

    /// Starts one receiver thread per bound address, once, in the master
    /// after the router processes forked.
    pub fn start_receivers(&'static self) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let sockets = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|e| e.into_inner()));
        if !sockets.is_empty() {
            fork_guard::install();
        }
        for (addr, socket) in sockets {
            let spawned = std::thread::Builder::new()
                .name("sslcache-recv".into())
                .spawn(move || self.receive(socket));
            if let Err(e) = spawned {
                log::line(&format!("cannot start the receiver thread for {addr}: {e}"));
            }
        }
    }

    /// The receiver thread: never returns. Of uWSGI it only touches the
    /// stats entry's counters (atomically, see `facade`).
    fn receive(&self, socket: UdpSocket) {
        block_signals();
        let Some(cache) = tls::installed() else { return };
        let applier = Applier {
            store: &cache.store,
            timeout: cache.timeout,
            counters: self.counters(),
            opener: self.opener.as_ref(),
            accept_plain: self.accept_plain,
            tombstone_secs: self.max_skew + 1,
        };
        let mut buf = vec![0u8; 65536];
        // ssl-verbose logs datagrams, but never more than 20 lines a second:
        // the senders choose how many arrive.
        let mut budget = LogBudget::new(20, 1000);
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    // Not while the master forks: a child must not inherit a
                    // lock (OpenSSL's, malloc's) this thread holds mid-work.
                    let _held = fork_guard::hold();
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let outcome = applier.apply(&buf[..n], unix_ms());
                        facade::publish(&cache.store);
                        outcome
                    }));
                    match applied {
                        Ok(outcome) if cache.verbose => match budget.check(monotonic_ms()) {
                            Verdict::Log { suppressed: 0 } => {
                                log::line(&format!("replication datagram of {n} bytes: {outcome:?}"))
                            }
                            Verdict::Log { suppressed } => log::line(&format!(
                                "replication datagram of {n} bytes: {outcome:?} \
                                 ({suppressed} datagram lines held back before this one)"
                            )),
                            Verdict::Suppress => {}
                        },
                        Ok(_) => {}
                        Err(_) => log::once(&RECEIVER_PANICKED, "internal error applying a replication datagram"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Registers every counter as a uWSGI metric `sslcache.<cache>.<name>`.
    pub fn register_metrics(&self, cache_name: &str) -> usize {
        metrics::register(cache_name, &self.counters().fields())
    }
}

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
