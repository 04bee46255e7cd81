//! The plugin's heap forgets what it held: every block is zeroed when it is
//! freed (or moved by a reallocation), so sessions and keys the master's
//! threads handled are not in the freed memory a later fork copies into a
//! worker (see `isolation`). OpenSSL's own blocks are its business: it
//! clears those that hold keys.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct Wiping;

// SAFETY: every call is System's, on the layouts it was given; blocks are
// only zeroed before System frees them.
unsafe impl GlobalAlloc for Wiping {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: GlobalAlloc::alloc's contract (a layout of non-zero size)
        // binds our caller and is exactly System.alloc's: passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: GlobalAlloc::alloc_zeroed's contract (a layout of non-zero
        // size) binds our caller and is exactly System's: passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc::dealloc's contract: `ptr` was allocated by this
        // allocator (so by System: every block is System's) with `layout`, so
        // it is a live, writable block of `layout.size()` bytes until
        // System.dealloc frees it; explicit_bzero is never optimised away.
        unsafe {
            libc::explicit_bzero(ptr.cast(), layout.size());
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc::realloc's contract: `ptr` is a live block of
        // this allocator with `layout`, and `new_size` with `layout.align()`
        // is a valid layout of non-zero size, so `new_layout` may be made
        // unchecked and allocated; the new block does not overlap the old,
        // at least `min(old, new)` bytes of both are valid, and the old block
        // is then zeroed and freed as in `dealloc` (System's realloc would
        // free it as it is).
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = System.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static ALLOCATOR: Wiping = Wiping;
