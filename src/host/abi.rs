//! Refuses to run inside a uWSGI binary other than the one the bindings were
//! generated from: a different build can lay out `struct uwsgi_server`
//! differently, and reading it with the wrong layout corrupts memory.
//!
//! Two facts of the running process are compared with the build stamp: the
//! GNU build-id of the main executable (when both have one) and the size of
//! its `uwsgi` symbol.

use std::ffi::{c_int, c_void};

use sslcache_core::boundary::Boundary;

use super::symbols::Symbols;
use super::sys::{BUILT_FOR_BINARY, BUILT_FOR_BUILD_ID, BUILT_FOR_UWSGI_SIZE, BUILT_FOR_VERSION};

use crate::ffi::{NT_GNU_BUILD_ID, RTLD_DL_SYMENT};

/// Size of the ELF symbol at `addr`, from the dynamic symbol table.
fn symbol_size(addr: *const c_void) -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let mut sym: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 fills `info` and `sym` for an address in the process.
    let ok = unsafe { libc::dladdr1(addr, info.as_mut_ptr(), &mut sym, RTLD_DL_SYMENT) };
    if ok == 0 || sym.is_null() {
        return None;
    }
    // SAFETY: with RTLD_DL_SYMENT, glibc stores a pointer to the matching
    // ElfW(Sym) of the loaded object, which stays mapped.
    Some(unsafe { (*sym.cast::<libc::Elf64_Sym>()).st_size } as usize)
}

/// GNU build-id of the main executable, as lower-case hex ("" if none).
fn main_build_id() -> String {
    static FIRST_OBJECT: Boundary = Boundary::new("reading the build-id");
    unsafe extern "C" fn first_object(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        FIRST_OBJECT.guard((), || {
            // SAFETY: called by dl_iterate_phdr with a valid info; `data` is
            // the &mut String passed below. The main program comes first.
            unsafe {
                let out = &mut *data.cast::<String>();
                let info = &*info;
                for i in 0..info.dlpi_phnum as usize {
                    let ph = &*info.dlpi_phdr.add(i);
                    if ph.p_type != libc::PT_NOTE {
                        continue;
                    }
                    let start = (info.dlpi_addr + ph.p_vaddr) as *const u8;
                    let notes = std::slice::from_raw_parts(start, ph.p_memsz as usize);
                    if let Some(id) = find_build_id(notes) {
                        *out = id;
                    }
                }
            }
        });
        1 // stop after the main program
    }
    let mut id = String::new();
    // SAFETY: the callback only reads program headers of loaded objects.
    unsafe { libc::dl_iterate_phdr(Some(first_object), (&mut id as *mut String).cast()) };
    id
}

/// Finds an NT_GNU_BUILD_ID note in a PT_NOTE segment.
fn find_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8], at: usize| Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize);
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)? as u32);
        let name_end = 12 + namesz.div_ceil(4) * 4;
        let desc_end = name_end + descsz.div_ceil(4) * 4;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// `Err(reason)` when this process is not the binary we were built for.
pub fn check(host: &Symbols) -> Result<(), String> {
    let running = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "this binary".into());
    let size = symbol_size(host.server.cast());
    let build_id = main_build_id();
    let size_ok = size == Some(BUILT_FOR_UWSGI_SIZE);
    let id_ok = BUILT_FOR_BUILD_ID.is_empty() || build_id.is_empty() || build_id == BUILT_FOR_BUILD_ID;
    if size_ok && id_ok {
        return Ok(());
    }
    Err(format!(
        "refusing to start: this plugin was built for uWSGI {BUILT_FOR_VERSION} ({BUILT_FOR_BINARY}, \
         build-id {}, struct uwsgi_server of {BUILT_FOR_UWSGI_SIZE} bytes) but was loaded by {running} \
         (build-id {}, {}); rebuild it for this binary: make UWSGI={running}",
        if BUILT_FOR_BUILD_ID.is_empty() {
            "none"
        } else {
            BUILT_FOR_BUILD_ID
        },
        if build_id.is_empty() { "none" } else { &build_id },
        match size {
            Some(s) => format!("struct uwsgi_server of {s} bytes"),
            None => "size of struct uwsgi_server unknown".into(),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_build_id_note() {
        let mut note = Vec::new();
        // An unrelated note first.
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&1u32.to_ne_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[9, 9, 9, 9]);
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&NT_GNU_BUILD_ID.to_ne_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[0xde, 0xad, 0x01, 0]);
        assert_eq!(find_build_id(&note).as_deref(), Some("dead01"));
        assert_eq!(find_build_id(&note[..20]), None);
    }

    #[test]
    fn reads_the_running_binary_build_id_like_readelf() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID:"))
            .map(|id| id.trim().to_string())
            .unwrap_or_default();
        assert_eq!(main_build_id(), expected);
    }
}
