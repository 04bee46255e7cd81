//! What a process forked for the application (a uWSGI worker, mule or
//! spooler) must not keep of its parent: mappings that hold sessions or
//! keys (the store, key pages, the stacks of threads that handled sessions)
//! and descriptors that reach them (the store's file, sockets carrying
//! sessions).
//!
//! Whoever makes such a thing registers it here; the host calls
//! [`forget_in_child`] in a freshly forked child that is not a router
//! process. Registered ranges are then replaced by private zero-filled
//! pages at the same address (`MAP_FIXED`): the child's view of the store
//! or of a key becomes empty memory, no longer shared with anyone, so even
//! a stray access reads zeros instead of crashing. Registered descriptors
//! are pointed at `/dev/null`, so their numbers are never taken by
//! something else while the objects that own them live on.
//!
//! The registry is a fixed table of atomics: registering and forgetting
//! take no lock, so the child (which may have been forked while another
//! thread held any lock) only makes system calls.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Mappings registered at once, at most (a store, a few key pages, a few
/// thread stacks).
const RANGES: usize = 128;
/// Descriptors registered, at most.
const FDS: usize = 64;

struct Range {
    /// Start address; 0 when the slot is free, 1 while being filled.
    addr: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_RANGE: Range = Range {
    addr: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const FREE_FD: AtomicI32 = AtomicI32::new(-1);

static TABLE: [Range; RANGES] = [FREE_RANGE; RANGES];
static DESCRIPTORS: [AtomicI32; FDS] = [FREE_FD; FDS];
/// Set once this process forgot: later forks of it have nothing to forget.
static FORGOTTEN: AtomicBool = AtomicBool::new(false);
/// Registrations that found the table full (kept by the child: reported).
static OVERFLOW: AtomicUsize = AtomicUsize::new(0);

/// A registered range; dropping it unregisters (before the memory goes).
#[derive(Debug)]
pub struct Registration {
    slot: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.slot < RANGES {
            TABLE[self.slot].addr.store(0, Ordering::Release);
        }
    }
}

/// Registers `len` bytes at `addr` (a mapping of the caller's) to be
/// replaced by zeros in application processes, until the registration is
/// dropped.
pub fn register_range(addr: usize, len: usize) -> Registration {
    if addr <= 1 || len == 0 {
        return Registration { slot: RANGES };
    }
    for (slot, range) in TABLE.iter().enumerate() {
        if range
            .addr
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            range.len.store(len, Ordering::Relaxed);
            range.addr.store(addr, Ordering::Release);
            return Registration { slot };
        }
    }
    OVERFLOW.fetch_add(1, Ordering::Relaxed);
    Registration { slot: RANGES }
}

/// Registers a descriptor application processes must not keep, until
/// [`unregister_fd`] (by its owner, before it closes it).
pub fn register_fd(fd: i32) {
    if fd < 0 {
        return;
    }
    for slot in &DESCRIPTORS {
        if slot
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    OVERFLOW.fetch_add(1, Ordering::Relaxed);
}

/// Forgets a descriptor registered with [`register_fd`] (its owner closes
/// it: the number may come back for something else).
pub fn unregister_fd(fd: i32) {
    if fd < 0 {
        return;
    }
    for slot in &DESCRIPTORS {
        if slot
            .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// Registers the calling thread's stack (a thread that handles sessions),
/// until the returned registration is dropped, which the thread does as it
/// ends.
pub fn register_this_thread_stack() -> Registration {
    match this_thread_stack() {
        Some((addr, len)) => register_range(addr, len),
        None => Registration { slot: RANGES },
    }
}

fn this_thread_stack() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread;
    // it is read only if that succeeded, then destroyed.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr = std::ptr::null_mut();
        let mut len = 0usize;
        let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut len) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        ok.then_some((addr as usize, len))
    }
}

/// What [`forget_in_child`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub ranges: usize,
    pub fds: usize,
    /// Ranges or descriptors that could not be dropped (or registered).
    pub failed: usize,
}

/// In a child just forked that must hold nothing of the above: replaces
/// every registered range with private zero pages and points every
/// registered descriptor at `/dev/null`. Only system calls; never twice in
/// one process (the ranges are zeros from then on).
///
/// Never call it in a process that still needs them: the store it sees
/// becomes an empty private copy.
pub fn forget_in_child() -> Forgotten {
    let mut done = Forgotten {
        failed: OVERFLOW.load(Ordering::Relaxed),
        ..Forgotten::default()
    };
    if FORGOTTEN.swap(true, Ordering::AcqRel) {
        return done;
    }
    for range in &TABLE {
        let addr = range.addr.load(Ordering::Acquire);
        if addr <= 1 {
            continue;
        }
        let len = range.len.load(Ordering::Relaxed);
        // SAFETY: `addr..addr + len` is a live mapping of this process,
        // registered by its owner and not yet unregistered (the owner
        // unregisters before unmapping). MAP_FIXED replaces exactly that
        // range with fresh private zero pages, so every reference into it
        // stays valid memory (it reads zeros); nothing else lives there.
        let ptr = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr as usize == addr {
            done.ranges += 1;
        } else {
            done.failed += 1;
        }
    }
    // SAFETY: opens /dev/null read-write, close-on-exec; checked below.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    for slot in &DESCRIPTORS {
        let fd = slot.load(Ordering::Acquire);
        if fd < 0 {
            continue;
        }
        // SAFETY: dup3 makes `fd` a copy of our /dev/null descriptor,
        // closing what it was (the objects holding the number keep a valid
        // descriptor); with `null` < 0 it fails and the descriptor is
        // closed instead.
        let ok = unsafe { null >= 0 && libc::dup3(null, fd, libc::O_CLOEXEC) == fd || libc::close(fd) == 0 };
        if ok {
            done.fds += 1;
        } else {
            done.failed += 1;
        }
    }
    if null >= 0 {
        // SAFETY: our own descriptor, opened above.
        unsafe { libc::close(null) };
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Region, SecretPage};

    fn maps_line(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find(|l| {
                let (lo, hi) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).unwrap(),
                    usize::from_str_radix(hi, 16).unwrap(),
                );
                (lo..hi).contains(&addr)
            })
            .unwrap_or_default()
            .to_string()
    }

    /// In a forked child: the shared region and the key page read zeros,
    /// the shared mapping is gone from maps, the descriptor is /dev/null;
    /// the parent keeps all of them.
    #[test]
    fn a_child_forgets_and_the_parent_keeps() {
        let (region, fd) = Region::memory_file(c"scrub-test", 1 << 20).unwrap();
        region.forget_in_app_children();
        let shared = region.ptr_at::<u8>(0, 1 << 20);
        // SAFETY: `shared` is the first byte of `region`'s 1 MiB mapping
        // (ptr_at checked the bounds), alive until `region` drops at the end
        // of the test; no other thread touches it.
        unsafe { shared.write(0x5a) };
        let mut page = SecretPage::new(32).unwrap();
        page.bytes_mut()[0] = 0xa5;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        register_fd(raw);
        let page_addr = page.bytes().as_ptr() as usize;
        // SAFETY: the child only makes system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let done = forget_in_child();
            // SAFETY: reads our own (now private, zero) mappings.
            let shared_byte = unsafe { shared.read_volatile() };
            // SAFETY: `page_addr` is the first byte of `page`'s mapping, which
            // this child inherited and `forget_in_child` replaced by private
            // zero pages: still mapped and readable.
            let page_byte = unsafe { (page_addr as *const u8).read_volatile() };
            let line = maps_line(shared as usize);
            let target = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
            // Each failed check sets its own bit of the exit status.
            let checks = [
                shared_byte == 0,
                page_byte == 0,
                !line.contains("scrub-test") && !line.contains("rw-s"),
                target == std::path::Path::new("/dev/null"),
                done.ranges >= 2,
                done.fds >= 1,
                forget_in_child().ranges == 0,
            ];
            let failed = checks
                .iter()
                .enumerate()
                .fold(0, |acc, (i, ok)| if *ok { acc } else { acc | 1 << i });
            // SAFETY: ends the child without running the test harness's
            // exit handlers.
            unsafe { libc::_exit(failed) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status}: failed checks (bits) {}",
            libc::WEXITSTATUS(status)
        );
        // SAFETY: `shared` points into `region`, still mapped in this
        // process (dropped at the end of the test); the child changed only
        // its own copy of the range.
        assert_eq!(unsafe { shared.read_volatile() }, 0x5a);
        assert_eq!(page.bytes()[0], 0xa5);
        assert!(maps_line(shared as usize).contains("scrub-test"));
        unregister_fd(raw);
    }

    #[test]
    fn registrations_name_their_range_until_dropped() {
        let page = SecretPage::new(32).unwrap();
        let addr = page.bytes().as_ptr() as usize;
        let registered = || TABLE.iter().any(|r| r.addr.load(Ordering::Acquire) == addr);
        assert!(registered());
        drop(page);
        assert!(!registered());
        let (lo, len) = this_thread_stack().unwrap();
        let here = &lo as *const usize as usize;
        assert!((lo..lo + len).contains(&here), "{here:x} not in {lo:x}+{len:x}");
        let stack = register_this_thread_stack();
        assert!(TABLE.iter().any(|r| r.addr.load(Ordering::Acquire) == lo));
        drop(stack);
    }
}
