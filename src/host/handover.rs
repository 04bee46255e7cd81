//! The session store survives uWSGI's reloads (SIGHUP, touch-reload, the
//! master FIFO's `r` and `R`, binary re-exec): every one of them ends in the
//! master exec'ing the uWSGI binary again, and the store lives in a memory
//! file whose descriptor the new process image inherits.
//!
//! In memory only: the file is a `memfd`, never on a disk. Its descriptor is
//! close-on-exec for every other program the master may run; uWSGI's
//! `master_cleanup` hook, which runs just before a reload's exec, clears
//! that flag when uWSGI is reloading (so `exec-as-user-atexit` commands of
//! a reload, which uWSGI runs after that hook, inherit it too; those of a
//! stop do not), and the descriptor is one of uWSGI's "safe" ones, which
//! the reload does not close. Its number, device and inode travel in the
//! environment ([`ENV`]). The new image takes the store over only if it is the same
//! memory file, made by this format for the same cache sizes; otherwise it
//! says why in one line and starts empty.
//!
//! A persistent store (`cache-store`, cache2 `store=`) is a mapping of that
//! file instead, handed over the same way (so a master that dropped its
//! privileges keeps it across a reload), and taken over from the file
//! itself at a fresh start.

use std::ffi::c_int;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use std::path::Path;

use sslcache_core::os;
use sslcache_core::store::file::{self, StoreFile};
use sslcache_core::store::{Limits, Store, MEMORY_FILE_NAME};

use super::symbols;

/// Environment variable that carries the store's descriptor to the next
/// process image.
pub const ENV: &str = "SSLCACHE_STORE_FD";

/// The descriptor of this image's store; -1 when it cannot be handed over.
static HANDED_OVER: AtomicI32 = AtomicI32::new(-1);
/// Whether that descriptor is a store file (not the memory file).
static FILE_BACKED: AtomicBool = AtomicBool::new(false);

/// Where this image's store came from.
pub enum Origin {
    /// A new, empty store.
    New,
    /// The previous process image's store, with this many sessions.
    TakenOver(u64),
    /// The store file's sessions, this many, at a fresh start.
    FromFile(u64),
    /// What could not be taken over, and why.
    Discarded(String),
}

/// The store of this process image: the one the previous image handed
/// over when it fits, else the store file's (if `persist` names one: the
/// option and the path), else a new one (master, in `jail`, before any
/// fork).
pub fn store(limits: Limits, persist: Option<(&str, &Path)>) -> Result<(Store, Origin), String> {
    let inherited = inherited(persist.is_some());
    let (store, fd, origin) = match (inherited, persist) {
        (Some(fd), _) => {
            // A store file is cleared through this very descriptor if it does
            // not fit: a master that dropped its privileges cannot open it.
            let spare = persist.and_then(|_| fd.try_clone().ok());
            match Store::adopt(limits, fd) {
                Ok((store, fd)) => {
                    let count = store.len();
                    (store, Some(fd), Origin::TakenOver(count))
                }
                Err(why) => {
                    let (store, fd) = match spare {
                        Some(fd) => {
                            let (store, fd) = Store::create_in_file(limits, fd).map_err(|e| e.to_string())?;
                            (store, Some(fd))
                        }
                        None => new_store(limits, persist)?,
                    };
                    (
                        store,
                        fd,
                        Origin::Discarded(format!("the store of the previous process image ({why})")),
                    )
                }
            }
        }
        (None, Some((option, path))) => match file::open_private(option, path, os::effective_uid())? {
            StoreFile::Existing(fd) => match reserved(fd, path).and_then(|fd| Store::adopt(limits, fd)) {
                Ok((store, fd)) => {
                    let count = store.len();
                    (store, Some(fd), Origin::FromFile(count))
                }
                Err(why) => {
                    let (store, fd) = new_store(limits, persist)?;
                    (
                        store,
                        fd,
                        Origin::Discarded(format!("the store file {} ({why})", path.display())),
                    )
                }
            },
            StoreFile::Created(fd) => {
                let (store, fd) = Store::create_in_file(limits, fd).map_err(|e| e.to_string())?;
                (store, Some(fd), Origin::New)
            }
        },
        (None, None) => {
            let (store, fd) = new_store(limits, None)?;
            (store, fd, Origin::New)
        }
    };
    FILE_BACKED.store(persist.is_some(), Ordering::Relaxed);
    match fd {
        Some(fd) => keep_for_reload(fd),
        None => std::env::remove_var(ENV),
    }
    Ok((store, origin))
}

/// The store file with all its blocks allocated (see `file::reserve`).
fn reserved(fd: OwnedFd, path: &Path) -> Result<OwnedFd, String> {
    let len = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| e.to_string())?
        .len();
    file::reserve(fd.as_fd(), len).map_err(|e| format!("cannot reserve the disk space of {}: {e}", path.display()))?;
    Ok(fd)
}

/// An empty store: in the store file if one is configured (cleared), else
/// in a memory file, else in anonymous memory (not handed over) if the
/// kernel has no memory files.
fn new_store(limits: Limits, persist: Option<(&str, &Path)>) -> Result<(Store, Option<OwnedFd>), String> {
    if let Some((option, path)) = persist {
        let fd = match file::open_private(option, path, os::effective_uid())? {
            StoreFile::Existing(fd) | StoreFile::Created(fd) => fd,
        };
        let (store, fd) = Store::create_in_file(limits, fd).map_err(|e| e.to_string())?;
        return Ok((store, Some(fd)));
    }
    match Store::create_handed_over(limits) {
        Ok((store, fd)) => Ok((store, Some(fd))),
        Err(_) => Store::create(limits)
            .map(|store| (store, None))
            .map_err(|e| e.to_string()),
    }
}

/// The descriptor named by [`ENV`] (`fd:device:inode`), if it is still the
/// very file the previous image left, of the kind this image uses (a store
/// file when `file`, else the memory file); anything else is left alone.
/// Nothing is resolved by path: a master that dropped its privileges may
/// not be able to.
fn inherited(file: bool) -> Option<OwnedFd> {
    let value = std::env::var(ENV).ok()?;
    std::env::remove_var(ENV);
    let mut parts = value.trim().split(':').map(|p| p.parse::<u64>().ok());
    let (Some(Some(fd)), Some(Some(dev)), Some(Some(ino))) = (parts.next(), parts.next(), parts.next()) else {
        log::warn!("{ENV}={value} is not a descriptor this plugin set: ignored");
        return None;
    };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd > 2)?;
    if identity(fd) != Some((dev, ino)) {
        log::warn!("{ENV}={value} no longer names the store it named: ignored");
        return None;
    }
    let memory = format!("/memfd:{}", MEMORY_FILE_NAME.to_string_lossy());
    let is_memory = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|target| target.to_string_lossy().starts_with(&memory));
    // SAFETY: the descriptor is open (fstat answered), is the file the
    // previous image left us, and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_close_on_exec(fd.as_raw_fd(), true);
    // The configuration changed between memory and a store file: start
    // from what it says now (dropping `fd` closes it).
    (is_memory != file).then_some(fd)
}

/// Device and inode of an open descriptor.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat fills `st`; a closed or foreign number just fails.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
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
    if let Some((dev, ino)) = identity(raw) {
        std::env::set_var(ENV, format!("{raw}:{dev}:{ino}"));
    }
    HANDED_OVER.store(raw, Ordering::Relaxed);
    // The application's processes could map the store through it.
    sslcache_core::shm::scrub::register_fd(raw);
    // Open as long as the image lives: the next one inherits it.
    std::mem::forget(fd);
}

/// Before uWSGI's reload exec or its exit (the `master_cleanup` hook):
/// writes a store file back to disk, and, only when `reloading`, lets the
/// store's descriptor through the exec that follows.
pub fn before_exec(reloading: bool) {
    let fd = HANDED_OVER.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    write_back(true);
    if reloading {
        set_close_on_exec(fd, false);
    }
}

/// Writes a store file's changed pages to disk: waiting for them
/// (`fdatasync`), or only starting the writes (`sync_file_range`), which
/// never blocks the master for long. Nothing to do for the memory file.
pub fn write_back(wait: bool) {
    let fd = HANDED_OVER.load(Ordering::Relaxed);
    if fd < 0 || !FILE_BACKED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: syncs a descriptor this module keeps open for the image's life.
    unsafe {
        if wait {
            libc::fdatasync(fd);
        } else {
            libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
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
