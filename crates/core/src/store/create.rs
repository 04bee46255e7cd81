//! Where a store comes from: made empty (in a new shared mapping, in a
//! memory file whose descriptor hands it to the next process image, or in
//! a store file), or taken over from a previous process image or a store
//! file ([`Store::adopt`]) when its header says it is this build's store of
//! the same sizes, its locks made anew and every shard repaired first.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::layout::{Header, Layout, PaddedHead, ShardHead, HEAD_STRIDE, MAGIC};
use super::{file, Limits, Store};
use crate::shm::{Region, RobustMutex};

/// Name of the memory file of a store that can be handed over
/// (`/proc/<pid>/fd` shows it as `/memfd:sslcache-store`).
pub const MEMORY_FILE_NAME: &CStr = c"sslcache-store";

impl Store {
    /// Creates an empty store in a new shared mapping.
    pub fn create(limits: Limits) -> io::Result<Store> {
        let layout = Layout::new(limits)?;
        Store::format(Region::shared(layout.total)?, layout, limits)
    }

    /// Creates an empty store in a memory file (see
    /// [`Region::memory_file`]) whose descriptor can hand it to a new
    /// process image, which takes it over with [`Store::adopt`].
    pub fn create_handed_over(limits: Limits) -> io::Result<(Store, OwnedFd)> {
        let layout = Layout::new(limits)?;
        let (region, fd) = Region::memory_file(MEMORY_FILE_NAME, layout.total)?;
        Ok((Store::format(region, layout, limits)?, fd))
    }

    /// Creates an empty store in the file behind `fd` (a persistent store,
    /// see [`file::open_private`]); whatever it held is cleared first.
    pub fn create_in_file(limits: Limits, fd: OwnedFd) -> io::Result<(Store, OwnedFd)> {
        let layout = Layout::new(limits)?;
        let len = libc::off_t::try_from(layout.total).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: ftruncate takes no pointer; `fd` is owned here and no
        // mapping of this process covers the file (a new file was never
        // mapped; a refused one was unmapped when `adopt` dropped its
        // region), so shrinking it leaves no reference past its end.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The magic first: however far this gets (a full disk, a kill),
        // the file is empty or says it is a store, so the next start takes
        // it again (file::open_private refuses any other content).
        let file = std::fs::File::from(fd);
        std::os::unix::fs::FileExt::write_all_at(&file, &MAGIC, 0)?;
        let fd = OwnedFd::from(file);
        // SAFETY: ftruncate takes no pointer; it grows the file owned here,
        // still unmapped, to the store's size (sparse zeros after the
        // magic) before the region below maps exactly that size.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        file::reserve(fd.as_fd(), layout.total as u64)?;
        let region = Region::map_file(fd.as_fd())?;
        Ok((Store::format(region, layout, limits)?, fd))
    }

    /// Writes a fresh header and initialises the locks of a zeroed region.
    fn format(region: Region, layout: Layout, limits: Limits) -> io::Result<Store> {
        let mut keys = [0u8; 16];
        openssl::rand::rand_bytes(&mut keys).map_err(io::Error::other)?;
        let hash_keys = [
            u64::from_le_bytes(keys[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(keys[8..].try_into().expect("8 bytes")),
        ];
        let store = Store {
            region,
            layout,
            limits,
            hash_keys,
        };
        store.init_locks()?;
        // SAFETY: the region is ours alone (not shared with anyone yet), the
        // header is in bounds and aligned (ptr_at), and Header is SharedPod.
        unsafe {
            store
                .region
                .ptr_at::<Header>(0, 1)
                .write(Header::new(limits, &layout, hash_keys))
        };
        Ok(store)
    }

    fn init_locks(&self) -> io::Result<()> {
        for i in 0..self.layout.shards {
            // CachePadded is repr(C) around its one field: the head is at
            // offset 0.
            let head = self
                .region
                .ptr_at::<PaddedHead>(self.layout.heads_at + i * HEAD_STRIDE, 1)
                .cast::<ShardHead>();
            // SAFETY: no other process or thread uses the region yet (a new
            // one, or one taken over before any fork); `head` is in bounds
            // and aligned.
            unsafe {
                RobustMutex::init(std::ptr::addr_of_mut!((*head).lock))?;
                (*head).stalled_until.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Takes over the store a previous process image made with
    /// [`Store::create_handed_over`] and handed over as `fd`: only if it was
    /// made by this format for the same `limits`; its locks are made anew
    /// (their holders are gone) and every shard is repaired (anything left
    /// half-done is dropped) before use. `Err` says, in a few words, why the
    /// store was not taken (the caller then makes a new one).
    pub fn adopt(limits: Limits, fd: OwnedFd) -> Result<(Store, OwnedFd), String> {
        let layout = Layout::new(limits).map_err(|e| e.to_string())?;
        let region = Region::map_file(fd.as_fd()).map_err(|e| format!("cannot map it: {e}"))?;
        if region.size() < std::mem::size_of::<Header>() {
            return Err("not a session store".into());
        }
        // SAFETY: in bounds and aligned (ptr_at); a plain copy of integers,
        // any bit pattern of which is a Header (SharedPod).
        let found = unsafe { region.ptr_at::<Header>(0, 1).read() };
        let expected = Header::new(limits, &layout, found.hash_keys);
        if let Some(why) = found.refusal(&expected) {
            return Err(why);
        }
        if region.size() != layout.total {
            return Err("laid out differently".into());
        }
        let store = Store {
            region,
            layout,
            limits,
            hash_keys: found.hash_keys,
        };
        store.init_locks().map_err(|e| e.to_string())?;
        for shard in 0..layout.shards {
            store
                .with_shard(shard, |view| view.repair())
                .ok_or("a lock of it cannot be taken")?;
        }
        Ok((store, fd))
    }
}
