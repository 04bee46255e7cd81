//! The session store survives uWSGI's reloads (SIGHUP, touch-reload, the
//! master FIFO's `r` and `R`, binary re-exec): every one of them ends in the
//! master exec'ing the uWSGI binary again, and the store lives in a memory
//! file whose descriptor the new process image inherits.
//!
//! In memory only: the file is a `memfd`, never on a disk. Its descriptor is
//! close-on-exec for every other program the master may run; uWSGI's
//! `master_cleanup` hook, which runs just before the reload exec, clears
//! that flag, and the descriptor is one of uWSGI's "safe" ones, which the
//! reload does not close. Its number travels in the environment
//! ([`ENV`]). The new image takes the store over only if it is the same
//! memory file, made by this format for the same cache sizes; otherwise it
//! says why in one line and starts empty.

use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use sslcache_core::store::{Limits, Store, MEMORY_FILE_NAME};

use super::symbols;

/// Environment variable that carries the store's descriptor to the next
/// process image.
pub const ENV: &str = "SSLCACHE_STORE_FD";

/// The descriptor of this image's store; -1 when it cannot be handed over.
static HANDED_OVER: AtomicI32 = AtomicI32::new(-1);

/// Where this image's store came from.
pub enum Origin {
    /// A new, empty store.
    New,
    /// The previous process image's store, with this many sessions.
    TakenOver(u64),
    /// The previous image's store could not be taken, for this reason.
    Discarded(String),
}

/// The store of this process image: the one the previous image handed
/// over when it fits, else a new one (master, in `jail`, before any fork).
pub fn store(limits: Limits) -> Result<(Store, Origin), String> {
    let (store, fd, origin) = match inherited() {
        Some(fd) => match Store::adopt(limits, fd) {
            Ok((store, fd)) => {
                let count = store.len();
                (store, Some(fd), Origin::TakenOver(count))
            }
            Err(why) => {
                let (store, fd) = new_store(limits)?;
                (store, fd, Origin::Discarded(why))
            }
        },
        None => {
            let (store, fd) = new_store(limits)?;
            (store, fd, Origin::New)
        }
    };
    match fd {
        Some(fd) => keep_for_reload(fd),
        None => std::env::remove_var(ENV),
    }
    Ok((store, origin))
}

/// A store in a memory file; in anonymous memory (not handed over) if the
/// kernel has no memory files.
fn new_store(limits: Limits) -> Result<(Store, Option<OwnedFd>), String> {
    match Store::create_handed_over(limits) {
        Ok((store, fd)) => Ok((store, Some(fd))),
        Err(_) => Store::create(limits)
            .map(|store| (store, None))
            .map_err(|e| e.to_string()),
    }
}

/// The descriptor named by [`ENV`], if it is a store's memory file of
/// ours: a number that names anything else is left alone.
fn inherited() -> Option<OwnedFd> {
    let value = std::env::var(ENV).ok()?;
    std::env::remove_var(ENV);
    let fd: RawFd = value.trim().parse().ok().filter(|fd| *fd > 2)?;
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let expected = format!("/memfd:{}", MEMORY_FILE_NAME.to_string_lossy());
    if !target.to_string_lossy().starts_with(&expected) {
        log::warn!("{ENV}={value} does not name a session store's memory file: ignored");
        return None;
    }
    // SAFETY: the descriptor is open (its /proc link resolved) and is the
    // memory file the previous image left us; nothing else in this process
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_close_on_exec(fd.as_raw_fd(), true);
    Some(fd)
}

/// Keeps the descriptor open for the life of this image, tells uWSGI not
/// to close it on reload, and names it to the next image.
fn keep_for_reload(fd: OwnedFd) {
    let raw = fd.as_raw_fd();
    if let Some(add_safe_fd) = symbols::get().and_then(|s| s.add_safe_fd) {
        // SAFETY: uwsgi_add_safe_fd records the number in a list uWSGI's
        // reload consults; called from the master's only thread.
        unsafe { add_safe_fd(raw as c_int) };
    }
    std::env::set_var(ENV, raw.to_string());
    HANDED_OVER.store(raw, Ordering::Relaxed);
    // Open as long as the image lives: the next one inherits it.
    std::mem::forget(fd);
}

/// Lets the store's descriptor through the exec that follows (uWSGI's
/// `master_cleanup` hook: the master, just before a reload exec or exit).
pub fn before_exec() {
    let fd = HANDED_OVER.load(Ordering::Relaxed);
    if fd >= 0 {
        set_close_on_exec(fd, false);
    }
}

fn set_close_on_exec(fd: RawFd, on: bool) {
    // SAFETY: F_GETFD/F_SETFD on a descriptor this module keeps open.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}
