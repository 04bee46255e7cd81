//! A process-shared, robust mutex that survives a holder killed by SIGKILL.
//!
//! glibc keeps a per-thread list of robust mutexes held (re-registered in the
//! child after `fork()`); when a thread dies, the kernel walks that list and
//! marks each mutex "owner died". The next locker gets `EOWNERDEAD`, repairs
//! what the dead holder may have left half-done, and calls
//! `pthread_mutex_consistent`. The holder of a lock is therefore never trusted
//! to finish: every structure guarded by one of these must be repairable.
//!
//! Waiting is bounded: a holder that is alive but stuck (stopped, traced)
//! must not hang a TLS handshake, so `lock` gives up after a timeout.

use std::cell::UnsafeCell;
use std::io;
use std::time::Duration;

use super::SharedPod;
use crate::os::pthread_mutex_clocklock;

/// The outcome of a bounded lock attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Locked {
    /// Acquired; the previous holder released it normally.
    Clean,
    /// Acquired from a holder that died: the caller must repair the guarded
    /// data, then call [`RobustMutex::mark_consistent`].
    OwnerDied,
    /// Not acquired within the timeout.
    TimedOut,
}

#[repr(C)]
pub struct RobustMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: a pthread_mutex_t is plain bytes; the all-zero pattern is never
// used as a lock because `init` runs on it before any process locks it.
unsafe impl SharedPod for RobustMutex {}
// SAFETY: the mutex is designed for concurrent use through shared references
// (PTHREAD_PROCESS_SHARED); all access goes through pthread calls.
unsafe impl Sync for RobustMutex {}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

impl RobustMutex {
    /// Initialises the mutex in place as process-shared and robust.
    ///
    /// # Safety
    /// `this` must point to writable shared memory that no process is using
    /// as a mutex yet.
    pub unsafe fn init(this: *mut RobustMutex) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: attr is initialised by pthread_mutexattr_init before any
        // other use and destroyed afterwards; `this` points to writable memory
        // that no process uses as a mutex yet (this function's contract: its
        // one caller, `Store::init_locks`, runs on a region no other process
        // or thread uses yet), so initialising it in place races with nobody.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let result = (|| {
                check(libc::pthread_mutexattr_setpshared(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                check(libc::pthread_mutex_init((*this).inner.get(), attr.as_ptr()))
            })();
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            result
        }
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Locked {
        // SAFETY: `inner` is a mutex `init` initialised before the region was
        // shared (a new store, or one taken over before any fork); it lives in
        // the region as long as `self`, and pthread calls are the only access
        // to it.
        let rc = unsafe { libc::pthread_mutex_trylock(self.inner.get()) };
        let rc = if rc == libc::EBUSY && !timeout.is_zero() {
            // A monotonic deadline: a wall clock stepped back must not
            // stretch the wait.
            let deadline = deadline_after(timeout);
            // SAFETY: the same initialised mutex as the trylock above;
            // `deadline` is a timespec on this stack frame, only read.
            unsafe { pthread_mutex_clocklock(self.inner.get(), libc::CLOCK_MONOTONIC, &deadline) }
        } else {
            rc
        };
        match rc {
            0 => Locked::Clean,
            libc::EOWNERDEAD => Locked::OwnerDied,
            // ENOTRECOVERABLE cannot happen (we always mark consistent after a
            // repair); treat it, and timeouts, as "not acquired".
            _ => Locked::TimedOut,
        }
    }

    /// After repairing the data of a dead holder: the lock is usable again.
    pub fn mark_consistent(&self) {
        // SAFETY: an initialised mutex (see `lock`) that lives as long as
        // `self`; the call touches only the mutex. Its caller is the holder
        // after EOWNERDEAD (`Store::with_shard`); on a mutex not in that
        // state glibc returns EINVAL and changes nothing.
        unsafe {
            libc::pthread_mutex_consistent(self.inner.get());
        }
    }

    /// Releases a lock taken by [`lock`](Self::lock).
    pub fn unlock(&self) {
        // SAFETY: an initialised mutex (see `lock`) that lives as long as
        // `self`; the call touches only the mutex. A robust mutex checks its
        // owner: unlocked by a thread that does not hold it, it returns
        // EPERM and stays locked.
        unsafe {
            libc::pthread_mutex_unlock(self.inner.get());
        }
    }
}

/// `timeout` from now on the monotonic clock.
fn deadline_after(timeout: Duration) -> libc::timespec {
    let now = crate::clock::monotonic();
    let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
    libc::timespec {
        tv_sec: now.tv_sec + timeout.as_secs() as libc::time_t + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}
