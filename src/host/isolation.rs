//! Processes uWSGI forks for the application hold no secrets.
//!
//! The store, the keys and the replication engine are made in the master
//! before it forks anything, so every child inherits them: the router
//! processes (uWSGI gateways: `http-processes`, sslrouter), which need
//! them, and the workers, mules and spoolers of the application, which must
//! not have them (code running there, a bad dependency, would read every
//! session's master secret and the cluster key).
//!
//! A `pthread_atfork` child handler runs first in every child, before
//! uWSGI's own code and any plugin's or application's: in a child that is
//! not a router process it replaces the store's mapping, the key pages and
//! the stacks of the threads that handled sessions with zeros, points the
//! store's descriptor and the session-carrying sockets at `/dev/null`
//! (see `sslcache_core::shm::scrub`), and frees the sealing and opening
//! contexts (their AES key schedules start with the derived keys). Heap
//! blocks that held sessions were zeroed when freed (`alloc`).
//!
//! Which child is which is known in the parent: the fork's prepare handler
//! runs on the forking thread, whose stack goes through uWSGI's
//! `gateway_respawn` for a router process and `uwsgi_respawn_worker` for a
//! worker (both exported by the uWSGI binary; their extents come from its
//! dynamic symbol table). Every other child (mules, spoolers, daemons,
//! hooks, an application's own `fork()`) forgets, and so does any child of
//! a process that already forgot. Workers keep everything only where TLS
//! itself runs in them (`https-socket`, `ssl-socket`).

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use sslcache_core::shm::scrub;

use super::plugin;
use crate::ffi::RTLD_DL_SYMENT;

/// What the next child will be, decided by the prepare handler.
const APPLICATION: u8 = 0;
const ROUTER: u8 = 1;
const WORKER: u8 = 2;

static NEXT_CHILD: AtomicU8 = AtomicU8::new(APPLICATION);
/// Extents of `gateway_respawn` and `uwsgi_respawn_worker`.
static GATEWAY: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static RESPAWN_WORKER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// TLS runs in the workers (core https/ssl sockets): they keep it all.
static WORKERS_KEEP: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// This process already forgot (an application process): so did all of
/// its children.
static FORGOT: AtomicBool = AtomicBool::new(false);
/// Frames of the forking thread looked at: handler, glibc's fork, uWSGI's
/// `uwsgi_fork`, its caller, with room to spare.
const FRAMES: usize = 16;

/// Start and end of an exported function of the running binary.
fn extent(name: &CStr) -> Option<(usize, usize)> {
    // SAFETY: looks a NUL-terminated name up in the global scope.
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if addr.is_null() {
        return None;
    }
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let mut sym: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 fills `info` and points `sym` at the symbol's ELF
    // entry (RTLD_DL_SYMENT) for an address of a loaded object.
    let found = unsafe { libc::dladdr1(addr, info.as_mut_ptr(), &mut sym, RTLD_DL_SYMENT) };
    if found == 0 || sym.is_null() {
        return None;
    }
    // SAFETY: dladdr1 succeeded: `sym` points at the ELF64 symbol entry in
    // the object's dynamic symbol table, mapped for the process's life.
    let size = unsafe { (*sym.cast::<libc::Elf64_Sym>()).st_size } as usize;
    (size > 0).then_some((addr as usize, addr as usize + size))
}

/// Installs the fork handlers (master, in `jail`, before any fork).
/// `workers_keep`: TLS runs in the workers.
pub fn install(workers_keep: bool) {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let (Some(gateway), Some(worker)) = (extent(c"gateway_respawn"), extent(c"uwsgi_respawn_worker")) else {
        log::warn!(
            "this uWSGI binary does not export gateway_respawn and uwsgi_respawn_worker: router processes cannot be \
             told from the application's, so the application's workers, mules and spoolers keep the session store \
             and the keys"
        );
        return;
    };
    for (slot, (start, end)) in [(&GATEWAY, gateway), (&RESPAWN_WORKER, worker)] {
        slot[0].store(start, Ordering::Relaxed);
        slot[1].store(end, Ordering::Relaxed);
    }
    WORKERS_KEEP.store(workers_keep, Ordering::Relaxed);
    if workers_keep {
        log::warn!(
            "TLS runs in the workers (https-socket, ssl-socket): they keep the session store and the keys, within \
             reach of the application; the HTTPS router (https =) keeps them away from it"
        );
    }
    // The unwinder glibc's backtrace uses is loaded on first use: now, not
    // inside a fork.
    let mut frames = [std::ptr::null_mut::<c_void>(); FRAMES];
    // SAFETY: backtrace writes at most FRAMES addresses into `frames`.
    unsafe { libc::backtrace(frames.as_mut_ptr(), FRAMES as c_int) };
    // SAFETY: registers handlers that only read the stack, atomics and
    // make system calls (see `prepare` and `child`).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), None, Some(child)) };
    if rc != 0 {
        log::warn!("cannot install the fork handler: the application's processes keep the session store and the keys");
    }
}

fn within(range: &[AtomicUsize; 2], addr: usize) -> bool {
    (range[0].load(Ordering::Relaxed)..range[1].load(Ordering::Relaxed)).contains(&addr)
}

/// Runs in the parent, on the forking thread, before the fork.
extern "C" fn prepare() {
    let mut frames = [std::ptr::null_mut::<c_void>(); FRAMES];
    // SAFETY: backtrace writes at most FRAMES addresses into `frames` (its
    // unwinder was loaded by `install`).
    let n = unsafe { libc::backtrace(frames.as_mut_ptr(), FRAMES as c_int) }.clamp(0, FRAMES as c_int) as usize;
    let mut kind = APPLICATION;
    for &frame in &frames[..n] {
        let addr = frame as usize;
        if within(&GATEWAY, addr) {
            kind = ROUTER;
            break;
        }
        if within(&RESPAWN_WORKER, addr) {
            kind = WORKER;
            break;
        }
    }
    NEXT_CHILD.store(kind, Ordering::Relaxed);
}

/// Runs first in every child. No lock, no log (the forking thread may hold
/// uWSGI's logger lock): at most one line straight to stderr on failure.
extern "C" fn child() {
    let kind = NEXT_CHILD.swap(APPLICATION, Ordering::Relaxed);
    if kind == ROUTER || (kind == WORKER && WORKERS_KEEP.load(Ordering::Relaxed)) {
        return;
    }
    if FORGOT.swap(true, Ordering::Relaxed) {
        return;
    }
    let done = scrub::forget_in_child();
    let contexts = plugin::forget_replication_secrets();
    if done.failed > 0 || !contexts {
        let line =
            c"[sslcache] warning: this application process could not drop all of the TLS session store and keys\n";
        write_stderr(line);
    }
}

fn write_stderr(line: &CStr) {
    let bytes = line.to_bytes();
    // SAFETY: writes our own bytes to descriptor 2; a failure changes
    // nothing.
    unsafe { libc::write(2, bytes.as_ptr().cast::<c_void>(), bytes.len()) };
}
