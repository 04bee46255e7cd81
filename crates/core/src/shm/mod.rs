//! Shared memory: mappings (anonymous, or of a memory or store file) reserved up front and paid for as they are touched.
//!
//! A shared region (`MAP_SHARED | MAP_ANONYMOUS`) is made before `fork()` and
//! inherited by every child: all processes see the same bytes. A private one
//! is zero-filled memory each process may read (the kernel's zero page) or
//! write (its own copy). Both are `MAP_NORESERVE`: the kernel hands out pages
//! only when first touched, so resident memory follows what is actually
//! written, not the reserved size.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

mod lock;
pub mod scrub;

pub use lock::{Locked, RobustMutex};

/// Plain data that may live in a shared region: `#[repr(C)]`, no pointers,
/// no drop glue, and valid when every byte is zero (a fresh mapping).
///
/// # Safety
/// Implementors must meet all of the above; the region hands out references
/// to such types over memory that another process may have written.
pub unsafe trait SharedPod: Sized {}

/// Shared-memory data that other processes may change at any time: every
/// field is an atomic or a lock, so a shared reference to it is sound even
/// while another process writes it.
///
/// # Safety
/// Implementors must have only interior-mutable fields used through atomic
/// or locking operations.
pub unsafe trait Concurrent: SharedPod {}

// SAFETY: integers are plain data and zero is a valid value.
unsafe impl SharedPod for u32 {}
// SAFETY: a u8 is plain data (no pointer, no drop glue) and zero is a valid
// value.
unsafe impl SharedPod for u8 {}
// SAFETY: atomics are plain integers in memory; zero is a valid value.
unsafe impl SharedPod for std::sync::atomic::AtomicU32 {}
// SAFETY: an atomic is only changed through atomic operations.
unsafe impl Concurrent for std::sync::atomic::AtomicU32 {}
// SAFETY: arrays of plain data are plain data.
unsafe impl<T: SharedPod, const N: usize> SharedPod for [T; N] {}
// SAFETY: CachePadded is `repr(C)` with T as its only field, aligned to the
// cache line (crossbeam-utils >= 0.8.22): plain data and zero-valid if T is.
unsafe impl<T: SharedPod> SharedPod for crossbeam_utils::CachePadded<T> {}
// SAFETY: a CachePadded<T> holds a T and padding only, and is used through
// its Deref to T: every field another process may change is one of T's,
// which `T: Concurrent` promises are atomics or locks.
unsafe impl<T: Concurrent> Concurrent for crossbeam_utils::CachePadded<T> {}

/// Owner of one mapping.
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    /// Set when application processes must not keep this mapping.
    scrub: std::sync::OnceLock<scrub::Registration>,
}

// SAFETY: a Region owns its mapping (`base`, `len`) alone, and the mapping
// belongs to the process, not to a thread: moving the Region to another
// thread moves only that ownership (munmap in Drop works from any thread);
// its registration is an index into scrub's atomic table.
unsafe impl Send for Region {}
// SAFETY: through `&Region` the mapping is reached only as a raw pointer
// (`ptr_at`: dereferencing it is unsafe, and synchronised by its user: the
// store's shard locks, the stats entry's atomics) or as a shared reference
// to a Concurrent type (`shared_ref`: atomics and locks, safe to share
// between threads and processes); `size` and `resident_bytes` read nothing
// of the memory, and the OnceLock of the registration is Sync.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of zeroed memory shared with future children.
    pub fn shared(len: usize) -> io::Result<Self> {
        Self::map(len, libc::MAP_SHARED)
    }

    /// Maps `len` bytes of zeroed memory private to each process.
    pub fn private(len: usize) -> io::Result<Self> {
        Self::map(len, libc::MAP_PRIVATE)
    }

    /// Maps `len` bytes of a new memory file (`memfd_create`, close-on-exec)
    /// shared with future children: like [`Region::shared`], and its
    /// descriptor can hand the same memory to a new process image (the
    /// caller clears close-on-exec just before that exec). Nothing of it
    /// reaches a disk: the file lives in memory, and only while someone
    /// holds the descriptor or a mapping.
    pub fn memory_file(name: &CStr, len: usize) -> io::Result<(Region, OwnedFd)> {
        // SAFETY: a NUL-terminated name and known flags; the result is
        // checked before use.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to us and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `fd` is the memory file made above and owned here, not
        // mapped yet: its size is set before the mapping below, so no mapping
        // ever reaches past its end (sparse: nothing is allocated).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let region = Self::map_fd(len, libc::MAP_SHARED, fd.as_raw_fd())?;
        Ok((region, fd))
    }

    /// Maps the whole of a memory file made by [`Region::memory_file`]
    /// (possibly by an earlier process image), or of a store file.
    pub fn map_file(fd: BorrowedFd<'_>) -> io::Result<Region> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `st` is a stat-sized buffer on this stack frame, written by
        // fstat only; `fd` is a BorrowedFd, open for the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so `st` is initialised.
        let st = unsafe { st.assume_init() };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size <= 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a memory file"));
        }
        Self::map_fd(st.st_size as usize, libc::MAP_SHARED, fd.as_raw_fd())
    }

    fn map(len: usize, sharing: libc::c_int) -> io::Result<Self> {
        Self::map_fd(len, sharing | libc::MAP_ANONYMOUS, -1)
    }

    fn map_fd(len: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty region"));
        }
        // SAFETY: a null hint never replaces an existing mapping; `fd` is -1
        // with MAP_ANONYMOUS or a descriptor the caller holds; the result is
        // checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Region {
            base,
            len,
            scrub: std::sync::OnceLock::new(),
        })
    }

    /// Processes forked for the application (see [`scrub`]) get private
    /// zeros instead of this mapping, for as long as it lives.
    pub fn forget_in_app_children(&self) {
        let _ = self
            .scrub
            .get_or_init(|| scrub::register_range(self.base.as_ptr() as usize, self.len));
    }

    /// Reserved size in bytes (never zero).
    pub fn size(&self) -> usize {
        self.len
    }

    /// A pointer to a `T` at `offset`, checked for bounds and alignment.
    pub fn ptr_at<T: SharedPod>(&self, offset: usize, count: usize) -> *mut T {
        let bytes = count
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .expect("region offset overflow");
        assert!(bytes <= self.len, "region access out of bounds");
        assert_eq!(offset % std::mem::align_of::<T>(), 0, "misaligned region access");
        // SAFETY: offset + count * size_of::<T>() <= len was checked above, so
        // the pointer stays inside the mapping.
        unsafe { self.base.as_ptr().add(offset).cast::<T>() }
    }

    /// A shared reference to the `T` at `offset`: only for [`Concurrent`]
    /// types, which other processes may write concurrently.
    pub fn shared_ref<T: Concurrent>(&self, offset: usize) -> &T {
        // SAFETY: in bounds and aligned (ptr_at), zero-valid and pointer-free
        // (SharedPod), so any bytes another process left there are a valid
        // T; T: Concurrent has only atomics and locks, so sharing the
        // reference while other processes write is sound; the mapping lives
        // as long as `self`, which the reference borrows.
        unsafe { &*self.ptr_at::<T>(offset, 1) }
    }

    /// Bytes of the region that are resident (touched at least once).
    pub fn resident_bytes(&self) -> io::Result<usize> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let pages = self.len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: base/len describe our own mapping and `vec` holds one byte
        // per page of it, as mincore requires.
        let rc = unsafe { libc::mincore(self.base.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(vec.iter().filter(|b| **b & 1 == 1).count() * page)
    }
}

/// A private page (or more) for secrets: left out of core dumps
/// (`MADV_DONTDUMP`), kept out of swap when the limits allow (`mlock`),
/// replaced by zeros in processes forked for the application (see
/// [`scrub`]), and zeroed before it is unmapped.
pub struct SecretPage {
    region: Region,
}

impl SecretPage {
    pub fn new(len: usize) -> io::Result<SecretPage> {
        let region = Region::map(len, libc::MAP_PRIVATE)?;
        region.forget_in_app_children();
        let base = region.base.as_ptr().cast::<libc::c_void>();
        // SAFETY: base/len describe our own fresh mapping.
        if unsafe { libc::madvise(base, region.len, libc::MADV_DONTDUMP) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: mlock reads no memory of ours: it pins `base..base + len`,
        // the private mapping made above; failing (RLIMIT_MEMLOCK) only
        // leaves those pages swappable.
        unsafe { libc::mlock(base, region.len) };
        Ok(SecretPage { region })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: a private mapping only this process writes, and only
        // through `bytes_mut`, which borrows `self` mutably.
        unsafe { std::slice::from_raw_parts(self.region.base.as_ptr(), self.region.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `base..base + len` is this page's private mapping, alive as
        // long as `self`, which the slice borrows; `&mut self` makes the
        // slice the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.region.base.as_ptr(), self.region.len) }
    }
}

impl Drop for SecretPage {
    fn drop(&mut self) {
        let base = self.region.base.as_ptr();
        for i in 0..self.region.len {
            // SAFETY: in bounds of our own mapping; volatile so that the
            // zeroing of memory about to be unmapped is not elided.
            unsafe { std::ptr::write_volatile(base.add(i), 0) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Unregistered before the range can be mapped by anyone else.
        drop(self.scrub.take());
        // SAFETY: base/len are exactly what mmap returned; nothing borrowed
        // from the region outlives it (all references borrow `self`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// One value of type `T` (counters) in its own shared mapping, made before
/// fork and seen by every process of the node.
pub struct Shared<T> {
    region: Region,
    _kind: std::marker::PhantomData<T>,
}

impl<T: Concurrent> Shared<T> {
    pub fn create() -> io::Result<Shared<T>> {
        Ok(Shared {
            region: Region::shared(std::mem::size_of::<T>())?,
            _kind: std::marker::PhantomData,
        })
    }

    pub fn get(&self) -> &T {
        self.region.shared_ref(0)
    }
}
