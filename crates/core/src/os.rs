//! What the core asks of the operating system beyond the `libc` crate's
//! declarations, in one place: glibc functions `libc` lacks, the fork guard
//! of threads that run beside uWSGI's forks, and thread signal masks.

use std::cell::UnsafeCell;
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
