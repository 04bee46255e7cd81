//! What the core asks of the operating system beyond the `libc` crate's
//! declarations, in one place: glibc functions `libc` lacks, opening a path
//! without following symbolic links, the fork guard of threads that run
//! beside uWSGI's forks, and thread signal masks.

use std::cell::UnsafeCell;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
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

/// `struct open_how` of `<linux/openat2.h>` (its first version, 24 bytes):
/// the `libc` crate's is `#[non_exhaustive]`, so it cannot be built here.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn c_path(path: &OsStr) -> io::Result<CString> {
    CString::new(path.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the path"))
}

/// A descriptor the kernel just returned (`rc >= 0`), or the error.
fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc >= 0` (checked above) is the descriptor the open call of
    // our caller just made in this process: no other owner exists, so the
    // OwnedFd is its only owner and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Opens `path` (relative paths from the current directory, as uWSGI
/// resolves them) without following a symbolic link in any component,
/// the last one included: an error of kind `ELOOP` if one is met.
/// `flags` are open(2)'s (close-on-exec is always added); `mode` is used
/// with `O_CREAT` only.
///
/// `openat2(2)` with `RESOLVE_NO_SYMLINKS` (Linux >= 5.6); where the kernel
/// (or a seccomp filter) refuses that call, the same walk done one
/// component at a time ([`open_walking`]).
pub fn open_no_symlinks(path: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = c_path(path.as_os_str())?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let how = OpenHow {
        flags: flags as u32 as u64,
        // openat2 refuses a mode without O_CREAT.
        mode: if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 },
        resolve: libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: openat2 reads a NUL-terminated path and `size` bytes of `how`,
    // both alive for the call; it returns a new descriptor or -1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    match owned(rc) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => open_walking(path, flags, mode),
        other => other,
    }
}

/// [`open_no_symlinks`] without openat2: from `/` (absolute paths) or the
/// current directory, each directory component is opened with `O_PATH |
/// O_NOFOLLOW` and checked to be a directory, not a symbolic link; the last
/// one is opened with `O_NOFOLLOW`.
pub fn open_walking(path: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if bytes.ends_with(b"/") {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let mut parts: Vec<&[u8]> = bytes.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
    let last = parts.pop().expect("a path not ending in / has a last component");
    let mut dir: Option<OwnedFd> = if bytes.starts_with(b"/") {
        Some(open_at(None, OsStr::new("/"), libc::O_PATH | libc::O_DIRECTORY, 0)?)
    } else {
        None
    };
    for part in parts {
        let next = open_at(
            dir.as_ref(),
            OsStr::from_bytes(part),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )?;
        match file_type(&next)? {
            libc::S_IFDIR => dir = Some(next),
            libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    open_at(dir.as_ref(), OsStr::from_bytes(last), flags | libc::O_NOFOLLOW, mode)
}

/// openat(2) relative to `dir` (the current directory when `None`),
/// close-on-exec.
fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = c_path(name)?;
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat reads `c`, a NUL-terminated CString alive for the
    // call; `dir` is AT_FDCWD or the number of an OwnedFd borrowed for this
    // call, so open until it returns; it returns a new descriptor or -1.
    let rc = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    owned(libc::c_long::from(rc))
}

/// The `S_IFMT` bits of an open descriptor's file.
fn file_type(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a stat-sized buffer on this stack frame, written by
    // fstat only; `fd` is borrowed from an OwnedFd, so open for the call
    // (fstat takes O_PATH descriptors too).
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() }.st_mode & libc::S_IFMT)
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
    // SAFETY: `fd` is a BorrowedFd, open for the call; flock takes no
    // pointer and changes only the lock on that file.
    unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Gives the first `len` bytes of a file their disk blocks now
/// (`posix_fallocate`).
pub fn allocate(fd: BorrowedFd<'_>, len: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is a BorrowedFd, open for the call; posix_fallocate takes
    // no pointer and only gives that file's first `len` bytes disk blocks
    // (a read-only descriptor fails with EBADF, returned as the error).
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
    // SAFETY: sigfillset initialises `set` (on this stack frame) before
    // pthread_sigmask reads it; the old mask is not asked for (null), and
    // only the calling thread's mask changes.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Waits up to `timeout_ms` for any of `fds` to be readable; which are.
/// An interrupted wait reads as none ready.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32, ready: &mut Vec<bool>) -> io::Result<()> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polled` is a valid array of `polled.len()` pollfd of open
    // descriptors (borrowed for the call).
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout_ms) };
    ready.clear();
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    ready.extend(polled.iter().map(|p| n > 0 && p.revents != 0));
    Ok(())
}

/// Asks for a receive buffer of `bytes` on `socket`: past the system's
/// limit (`net.core.rmem_max`, 208 kB on a stock Debian) where the process
/// may (root, or CAP_NET_ADMIN: the master binds its sockets before it
/// drops privileges), else up to that limit. Returns the size the kernel
/// gives (it doubles what it is asked, for its bookkeeping).
pub fn big_receive_buffer(socket: BorrowedFd<'_>, bytes: usize) -> usize {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a descriptor the caller lends for the call,
        // reading a c_int that lives through it, of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
    }
    socket2::SockRef::from(&socket).recv_buffer_size().unwrap_or(0)
}

/// Sends `datagram` to every address of `to` from `socket`, several a
/// system call (sendmmsg), never waiting; how many were sent (one the
/// kernel refuses, a full buffer, is skipped and the rest still go).
pub fn send_to_many(socket: BorrowedFd<'_>, datagram: &[u8], to: &[std::net::SocketAddr]) -> usize {
    const BATCH: usize = 64;
    let names: Vec<socket2::SockAddr> = to.iter().map(|&a| a.into()).collect();
    let mut iov = libc::iovec {
        iov_base: datagram.as_ptr().cast_mut().cast(),
        iov_len: datagram.len(),
    };
    let (mut at, mut sent) = (0, 0);
    while at < names.len() {
        let mut messages: Vec<libc::mmsghdr> = names[at..names.len().min(at + BATCH)]
            .iter()
            .map(|name| {
                // SAFETY: all-zero is a valid msghdr (no control data, no flags).
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_name = name.as_ptr().cast_mut().cast();
                header.msg_namelen = name.len();
                header.msg_iov = &raw mut iov;
                header.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: `messages` holds `messages.len()` headers whose names and
        // single iovec (only read by the kernel) outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                messages.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            sent += n as usize;
            at += n as usize;
        } else {
            at += 1;
        }
    }
    sent
}

/// How much the calling thread was favoured by [`favour_latency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Favour {
    /// Its nice value now (lower runs first under CFS's weights).
    pub nice: i32,
    /// How much lower that is than before.
    pub boost: i32,
    /// The kernel took a short slice for it (EEVDF, Linux 6.12 and later):
    /// woken, it preempts a busy process instead of waiting out that
    /// process's slice.
    pub short_slice: bool,
}

/// How far below the process's nice value the replication threads go when
/// the process may lower it (root): three times a router process's weight,
/// enough to be run first when a datagram arrives, not enough for a flood
/// of datagrams to take a core from the router processes. Relative, so an
/// operator's `prio` still ranks the whole instance.
pub const NICE_BOOST: i32 = 5;

/// The slice asked for (the kernel's shortest is 100 µs).
const SHORT_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` of sched_setattr(2), its first version.
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Makes the calling thread quick to run when it wakes: a thread that
/// receives and applies sessions must not wait behind busy router
/// processes, or a client that reconnects at once to another node beats
/// its session there. Asks for a short slice (any process may) and, where
/// allowed, a nice value [`NICE_BOOST`] lower; neither gives the thread a
/// larger share of the CPU than that nice value does.
pub fn favour_latency() -> Favour {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: getpriority/setpriority on this thread's id; a failure (not
    // allowed) changes nothing. errno is cleared first: -1 is a valid nice.
    let nice_now = || unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() != 0 {
            0
        } else {
            nice
        }
    };
    let before = nice_now();
    // SAFETY: setpriority takes no pointer and changes only the nice value
    // of `tid`, this thread (gettid above); a refusal (no privilege to
    // lower it) changes nothing and is read back by `nice_now`.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, (before - NICE_BOOST).max(-20)) };
    let nice = nice_now();
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: SHORT_SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(2) on this thread (pid 0) reads `attr`, of the
    // size it states; it keeps the policy and nice value and sets the slice.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    Favour {
        nice,
        boost: before - nice,
        short_slice: rc == 0 && kernel_has_custom_slices(),
    }
}

/// Linux 6.12 and later honour a fair thread's `sched_runtime` as its
/// slice; earlier kernels accept and ignore it.
fn kernel_has_custom_slices() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 12)
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
        // SAFETY: LOCK is a static made with PTHREAD_MUTEX_INITIALIZER and
        // never moved, so `get()` points at a valid mutex for the life of
        // the process.
        unsafe { libc::pthread_mutex_lock(LOCK.0.get()) };
    }

    extern "C" fn unlock() {
        // SAFETY: LOCK is a valid static mutex (see `lock`), held by the
        // calling thread: the parent and child handlers run on the thread
        // that ran the prepare handler `lock` (in the child, its copy), and
        // `Held` is dropped by the thread that made it in `hold` (it is not
        // `Send`).
        unsafe { libc::pthread_mutex_unlock(LOCK.0.get()) };
    }

    /// Registers the fork handlers (once per process image).
    pub fn install() {
        INSTALL.call_once(|| {
            // SAFETY: `lock` and `unlock` are extern "C" functions of this
            // image, valid for its life, that only lock and unlock the static
            // LOCK; pthread_atfork takes no other pointer.
            unsafe { libc::pthread_atfork(Some(lock), Some(unlock), Some(unlock)) };
        });
    }

    /// Held while a thread does work a fork must not split. Not `Send`: a
    /// pthread mutex must be unlocked by the thread that locked it.
    pub struct Held(std::marker::PhantomData<*const ()>);

    pub fn hold() -> Held {
        lock();
        Held(std::marker::PhantomData)
    }

    impl Drop for Held {
        fn drop(&mut self) {
            unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_buffer_past_the_system_limit_as_root() {
        use std::os::fd::AsFd;
        let limit: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(212_992);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let asked = 4 * limit;
        let got = big_receive_buffer(socket.as_fd(), asked);
        if effective_uid() == 0 {
            assert!(got >= asked, "asked {asked}, got {got} (rmem_max {limit})");
        } else {
            // Without the privilege: the system's limit, doubled.
            assert!(got >= limit && got <= 2 * limit + 4096, "got {got} (rmem_max {limit})");
        }
    }

    #[test]
    fn a_datagram_goes_to_many_in_one_call() {
        use std::os::fd::AsFd;
        let receivers: Vec<std::net::UdpSocket> = (0..70)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let to: Vec<std::net::SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(send_to_many(sender.as_fd(), b"hello", &to), 70);
        let mut buf = [0u8; 16];
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            let (n, from) = r.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"hello"[..], sender.local_addr().unwrap()));
        }
    }

    fn own_nice() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn a_favoured_thread_reports_its_nice_value_and_others_keep_theirs() {
        let before = own_nice();
        let (favour, seen) = std::thread::spawn(|| (favour_latency(), own_nice())).join().unwrap();
        assert_eq!(favour.nice, seen, "the nice value reported is the thread's");
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 && before > -20 + NICE_BOOST {
            assert_eq!(favour.nice, before - NICE_BOOST);
        }
        assert_eq!(favour.boost, before - favour.nice);
        assert!(favour.boost <= NICE_BOOST, "never more than asked for");
        assert_eq!(own_nice(), before, "only the calling thread is favoured");
    }
}
