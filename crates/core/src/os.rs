//! What the core asks of the operating system beyond the `libc` crate's
//! declarations, in one place: glibc functions `libc` lacks, the fork guard
//! of threads that run beside uWSGI's forks, and thread signal masks.

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Once;

extern "C" {
    /// glibc >= 2.30 (`<pthread.h>`); not in the libc crate. As
    /// `pthread_mutex_timedlock`, robust mutexes included, but against the
    /// given clock.
    pub fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Checks, on the metadata of an opened descriptor, that a file holding
/// secrets (a key file, a store file: `what`) is a regular file that
/// neither group nor others may read or write, owned by root or by `owner`.
/// `shown` names the setting in the error.
pub fn check_private(meta: &std::fs::Metadata, shown: &str, what: &str, owner: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: the {what} is readable or writable by group or others (mode {mode:04o}): chmod 600 it"
        ));
    }
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(format!(
            "{shown}: the {what} belongs to uid {}, neither root nor this process (uid {owner}): chown it",
            meta.uid()
        ));
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` now.
pub fn monotonic() -> libc::timespec {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `t`; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t
}

/// Takes an exclusive `flock` on an open file without waiting; false when
/// someone else holds one.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: flock on a descriptor the caller holds open.
    unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Gives the first `len` bytes of a file their disk blocks now
/// (`posix_fallocate`).
pub fn allocate(fd: BorrowedFd<'_>, len: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: allocates blocks of a file the caller holds open read-write.
    match unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Keeps process-directed signals away from the calling thread, as uWSGI
/// does in its own threads: they stay with the master's main thread.
pub fn block_signals() {
    // SAFETY: builds a full signal set and applies it to this thread only.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Keeps `fork()` and the work of the core's threads apart.
///
/// A thread of the core calls into OpenSSL (opening sealed datagrams), and
/// OpenSSL (like malloc) takes global locks. If the process forked while
/// that thread held one, the child would inherit it held, by a thread that
/// does not exist in the child, and its first handshake would wait forever.
/// A `pthread_atfork` prepare handler takes this lock, so a fork waits for
/// the work in hand (microseconds) and never happens inside it.
pub mod fork_guard {
    use super::*;

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

    /// Held while a thread does work a fork must not split.
    pub struct Held(());

    pub fn hold() -> Held {
        lock();
        Held(())
    }

    impl Drop for Held {
        fn drop(&mut self) {
            unlock();
        }
    }
}
