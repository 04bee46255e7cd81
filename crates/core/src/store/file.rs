//! The file of a persistent store (`cache-store`, cache2 `store=`): the
//! region is a shared mapping of it, so it holds every session (master
//! secrets included) and must stay private to the user who runs uWSGI.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A store file, opened read-write.
pub enum StoreFile {
    /// It was there: its contents are taken over if they fit.
    Existing(OwnedFd),
    /// Made just now, empty, mode 0600.
    Created(OwnedFd),
}

/// Opens (or creates, mode 0600) the store file at `path` without following
/// a symbolic link, and checks on the open descriptor that it is a regular
/// file, owned by `owner` or root, that neither group nor others may read or
/// write. `option` names the setting in errors.
pub fn open_private(option: &str, path: &Path, owner: u32) -> Result<StoreFile, String> {
    let shown = format!("{option} = {}", path.display());
    let open = |create: bool| {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        if create {
            o.create_new(true).mode(0o600);
        }
        o.open(path)
    };
    let (file, created) = match open(false) {
        Ok(file) => (file, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match open(true) {
            Ok(file) => (file, true),
            Err(e) => return Err(format!("{shown}: cannot create the store file: {e}")),
        },
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "{shown}: the store file is a symbolic link; name the file itself"
            ))
        }
        Err(e) => return Err(format!("{shown}: cannot open the store file: {e}")),
    };
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
    let fd = OwnedFd::from(file);
    Ok(if created {
        StoreFile::Created(fd)
    } else {
        StoreFile::Existing(fd)
    })
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
        assert!(matches!(open_private("store", &path, uid), Ok(StoreFile::Existing(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = open_private("cache2 \"ssl\" store", &path, uid).err().unwrap();
        assert!(
            e.contains("mode 0640): chmod 600 it") && e.starts_with("cache2 \"ssl\" store = "),
            "{e}"
        );
        let link = d.join("link.store");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = open_private("store", &link, uid).err().unwrap();
        assert!(e.contains("symbolic link"), "{e}");
        let e = open_private("store", &d.join("no/such/dir/x"), uid).err().unwrap();
        assert!(e.contains("cannot create the store file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
