//! The file of a persistent store (`cache-store`, cache2 `store=`): the
//! region is a shared mapping of it, so it holds every session (master
//! secrets included) and must stay private to the user who runs uWSGI.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// A store file, opened read-write.
pub enum StoreFile {
    /// One of sslcache's store files (its header says so): its contents
    /// are taken over if they fit, else it is made anew.
    Existing(OwnedFd),
    /// Empty: made just now (mode 0600), or found with nothing in it.
    Created(OwnedFd),
}

/// Opens (or creates, mode 0600) the store file at `path`, following no
/// symbolic link in any component of the path, and checks on the open
/// descriptor that it is a regular file with one name, owned by `owner` or
/// root, that neither group nor others may read or write, and that no
/// other process holds. A file that is neither empty nor a session store
/// (its first bytes are not the store's header) is refused and left as it
/// is: the store would overwrite it. `option` names the setting in errors.
pub fn open_private(option: &str, path: &Path, owner: u32) -> Result<StoreFile, String> {
    let shown = format!("{option} = {}", path.display());
    let open = |create: bool| {
        let (flags, mode) = if create {
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)
        } else {
            (libc::O_RDWR, 0)
        };
        crate::os::open_no_symlinks(path, flags, mode)
    };
    let symlink = || format!("{shown}: a component of the path is a symbolic link; name the real path");
    let (fd, created) = match open(false) {
        Ok(fd) => (fd, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match open(true) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(symlink()),
            Err(e) => return Err(format!("{shown}: cannot create the store file: {e}")),
        },
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(symlink()),
        Err(e) => return Err(format!("{shown}: cannot open the store file: {e}")),
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read the store file: {e}"))?;
    crate::os::check_private(&meta, &shown, "store file", owner)?;
    if meta.nlink() != 1 {
        return Err(format!(
            "{shown}: the store file has other names (hard links); give it one of its own"
        ));
    }
    // One instance per file: another uWSGI using it would see its mapping
    // truncated or its locks re-made under it. The lock belongs to the open
    // file, so it goes along with the descriptor through a reload's exec.
    if !crate::os::try_lock_exclusive(file.as_fd()) {
        return Err(format!("{shown}: another uWSGI instance uses this store file"));
    }
    // Only read so far: whatever is not ours stays as it was.
    let empty = created || meta.len() == 0;
    if !empty {
        let mut first = [0u8; super::MAGIC.len()];
        let read = read_prefix(&file, &mut first).map_err(|e| format!("{shown}: cannot read the store file: {e}"))?;
        if !super::is_store_prefix(&first[..read]) {
            return Err(format!(
                "{shown}: the file is not a session store ({} bytes that do not start with a store's header); \
                 it was left as it is: name a new or empty file, or remove it",
                meta.len()
            ));
        }
    }
    let fd = OwnedFd::from(file);
    Ok(if empty {
        StoreFile::Created(fd)
    } else {
        StoreFile::Existing(fd)
    })
}

/// Reads the first bytes of `file` into `buf` (fewer at the end of the
/// file); returns how many.
fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Gives the whole file its disk blocks now (`posix_fallocate`): a
/// shared mapping of a sparse file would raise SIGBUS in whichever router
/// process first writes a page the full disk cannot hold.
pub fn reserve(fd: BorrowedFd<'_>, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    crate::os::allocate(fd, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sslcache-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn creates_private_files_and_refuses_shared_ones() {
        let d = dir("open");
        let path = d.join("s.store");
        let uid = crate::os::effective_uid();
        assert!(matches!(open_private("store", &path, uid), Ok(StoreFile::Created(_))));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Still empty: to be formatted.
        assert!(matches!(open_private("store", &path, uid), Ok(StoreFile::Created(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = open_private("cache2 \"ssl\" store", &path, uid).err().unwrap();
        assert!(
            e.contains("mode 0640): chmod 600 it") && e.starts_with("cache2 \"ssl\" store = "),
            "{e}"
        );
        let e = open_private("store", &d.join("no/such/dir/x"), uid).err().unwrap();
        assert!(e.contains("cannot create the store file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    const SYMLINK: &str = "a component of the path is a symbolic link; name the real path";

    #[test]
    fn a_symbolic_link_as_the_last_component_is_refused() {
        let d = dir("last-link");
        let uid = crate::os::effective_uid();
        let real = d.join("real.store");
        assert!(matches!(open_private("store", &real, uid), Ok(StoreFile::Created(_))));
        let link = d.join("link.store");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = open_private("cache-store", &link, uid).err().unwrap();
        assert_eq!(e, format!("cache-store = {}: {SYMLINK}", link.display()));
        // A dangling link is not created through either.
        let dangling = d.join("dangling.store");
        std::os::unix::fs::symlink(d.join("elsewhere"), &dangling).unwrap();
        let e = open_private("cache-store", &dangling, uid).err().unwrap();
        assert!(e.ends_with(SYMLINK), "{e}");
        assert!(!d.join("elsewhere").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symbolic_link_to_a_directory_on_the_path_is_refused() {
        let d = dir("dir-link");
        let uid = crate::os::effective_uid();
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("linked")).unwrap();
        // An existing file behind the link, and one that would be created.
        let target = d.join("real/victim");
        std::fs::write(&target, b"root's file").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        for name in ["linked/victim", "linked/new.store", "linked/../linked/victim"] {
            let path = d.join(name);
            let e = open_private("cache-store", &path, uid).err().unwrap();
            assert_eq!(e, format!("cache-store = {}: {SYMLINK}", path.display()));
        }
        assert!(!d.join("real/new.store").exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"root's file");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The walk used where the kernel has no openat2 resolves as openat2
    /// does: every component, `..` included, and relative paths from the
    /// current directory.
    #[test]
    fn the_walk_without_openat2_refuses_links_in_any_component() {
        let d = dir("walk");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("la")).unwrap();
        std::os::unix::fs::symlink(d.join("a/b/f"), d.join("a/lf")).unwrap();
        let walk = |p: &Path| crate::os::open_walking(p, libc::O_RDONLY, 0).map(|_| ());
        let raw = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        assert!(walk(&d.join("a/b/f")).is_ok());
        assert!(walk(&d.join("a/b/../b/./f")).is_ok());
        assert_eq!(raw(walk(&d.join("la/b/f"))), Some(libc::ELOOP));
        assert_eq!(raw(walk(&d.join("a/lf"))), Some(libc::ELOOP));
        assert_eq!(raw(walk(&d.join("a/b/f/g"))), Some(libc::ENOTDIR));
        assert_eq!(raw(walk(&d.join("a/b/none"))), Some(libc::ENOENT));
        let created = crate::os::open_walking(&d.join("a/new"), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600);
        assert!(created.is_ok());
        assert_eq!(std::fs::metadata(d.join("a/new")).unwrap().mode() & 0o777, 0o600);
        let relative = relative_to_cwd(&d.join("a/b/f"));
        assert!(relative.is_relative());
        assert!(walk(&relative).is_ok(), "{}", relative.display());
        assert!(crate::os::open_no_symlinks(&relative, libc::O_RDONLY, 0).is_ok());
        assert_eq!(raw(walk(&relative_to_cwd(&d.join("la/b/f")))), Some(libc::ELOOP));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `path` (absolute) written relative to the current directory.
    fn relative_to_cwd(path: &Path) -> std::path::PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let mut rel = std::path::PathBuf::new();
        for _ in cwd.components().skip(1) {
            rel.push("..");
        }
        rel.join(path.strip_prefix("/").unwrap())
    }

    #[test]
    fn a_relative_path_is_opened_from_the_current_directory() {
        let d = dir("relative");
        let uid = crate::os::effective_uid();
        let path = relative_to_cwd(&d.join("s.store"));
        assert!(matches!(open_private("store", &path, uid), Ok(StoreFile::Created(_))));
        assert!(d.join("s.store").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_and_left_as_it_is() {
        let d = dir("foreign");
        let uid = crate::os::effective_uid();
        for content in [&b"#!/bin/sh\nreal data\n"[..], b"SSLC", &[0u8; 8192]] {
            let path = d.join("data");
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let before = std::fs::metadata(&path).unwrap();
            let e = open_private("cache-store", &path, uid).err().unwrap();
            assert!(
                e.starts_with(&format!(
                    "cache-store = {}: the file is not a session store",
                    path.display()
                )) && e.contains("left as it is"),
                "{e}"
            );
            let after = std::fs::metadata(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), content);
            assert_eq!(
                (after.len(), after.mtime(), after.mtime_nsec()),
                (before.len(), before.mtime(), before.mtime_nsec())
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_file_is_used_and_a_store_file_is_taken_again() {
        let d = dir("reuse");
        let uid = crate::os::effective_uid();
        let path = d.join("s.store");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let limits = super::super::Limits {
            capacity: 1000,
            keysize: 64,
            blocksize: 512,
        };
        let Ok(StoreFile::Created(fd)) = open_private("store", &path, uid) else {
            panic!("an empty file is used")
        };
        let (store, fd) = super::super::Store::create_in_file(limits, fd).unwrap();
        assert!(matches!(
            store.insert(b"k", b"v", 2_000, 1_000),
            super::super::Insert::Stored { .. }
        ));
        drop((store, fd));
        let Ok(StoreFile::Existing(fd)) = open_private("store", &path, uid) else {
            panic!("our own store file is taken")
        };
        let (store, fd) = super::super::Store::adopt(limits, fd).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            store.get(b"k", 1_500, &mut out),
            super::super::Lookup::Hit { .. }
        ));
        assert_eq!(out, b"v");
        // The flock goes with the last descriptor.
        drop((store, fd));
        // A store of other sizes is still ours: opened, then made anew by
        // the caller (adopt says why).
        let Ok(StoreFile::Existing(fd)) = open_private("store", &path, uid) else {
            panic!("a store of other sizes is ours")
        };
        let other = super::super::Limits {
            capacity: 2000,
            ..limits
        };
        assert!(super::super::Store::adopt(other, fd)
            .err()
            .unwrap()
            .contains("made for items=1000"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
