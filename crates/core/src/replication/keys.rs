//! Replication key files.
//!
//! One key per line, 64 hexadecimal digits (32 bytes); blank lines and
//! lines starting with `#` are ignored. The first key seals what this node
//! sends; every key opens what arrives, so keys rotate without a flag day:
//! add the new key second everywhere, then move it first everywhere, then
//! drop the old one. The file must not be readable by group or others.
//! Keys never appear in logs: only their ids (derived from the key).

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::shm::SecretPage;

/// Bytes of a key (AES-256).
pub const KEY_LEN: usize = 32;
/// Largest key file read: far more than any sane rotation list.
const MAX_FILE: u64 = 64 * 1024;

/// A replication key and its public id. The bytes live in a page left out
/// of core dumps and zeroed when the key is dropped.
pub struct Key {
    pub id: u32,
    secret: SecretPage,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes.
        write!(f, "Key({:08x})", self.id)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.id == other.id && self.bytes() == other.bytes()
    }
}

impl Clone for Key {
    fn clone(&self) -> Key {
        Key::from_bytes(self.bytes()).expect("a page for a copy of a key")
    }
}

/// Overwrites a buffer that held key material.
pub fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&buf);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Overwrites the whole capacity of a buffer that held sessions, and
/// empties it.
pub fn wipe_capacity(buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(buf.capacity(), 0);
    wipe(buf);
    buf.clear();
}

impl Key {
    /// A key from its bytes (tests, benches); panics if no page can be
    /// mapped.
    pub fn new(bytes: [u8; KEY_LEN]) -> Key {
        Key::from_bytes(&bytes).expect("a page for a key")
    }

    fn from_bytes(bytes: &[u8; KEY_LEN]) -> std::io::Result<Key> {
        let mut secret = SecretPage::new(KEY_LEN)?;
        secret.bytes_mut()[..KEY_LEN].copy_from_slice(bytes);
        let digest = openssl::sha::sha256(&[b"sslcache key id\0".as_slice(), bytes].concat());
        Ok(Key {
            id: u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
            secret,
        })
    }

    /// A key that claims another key's id: what a forger who knows only
    /// the id would seal with (tests).
    pub fn claiming(id: u32, bytes: [u8; KEY_LEN]) -> Key {
        Key { id, ..Key::new(bytes) }
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        self.secret.bytes()[..KEY_LEN]
            .try_into()
            .expect("a key page holds a key")
    }
}

fn parse_hex(line: &[u8], out: &mut [u8; KEY_LEN]) -> bool {
    if line.len() != KEY_LEN * 2 {
        return false;
    }
    for (i, pair) in line.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
            _ => return false,
        }
    }
    true
}

/// Reads a key file; `option` names the option in errors, `reader` is the
/// uid reading it (the file must belong to root or to it).
///
/// The file is opened without following a symbolic link, and its type,
/// mode and owner are checked on the opened descriptor, so nothing can be
/// swapped in between. It must be a regular file, not readable or writable
/// by group or others, owned by root or by the user reading it (uWSGI's
/// master reads it before dropping privileges). The text read is wiped.
pub fn load(option: &str, path: &Path, reader: u32) -> Result<Vec<Key>, String> {
    let shown = format!("{option} = {}", path.display());
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{shown}: the key file is a symbolic link; name the file itself"),
            _ => format!("{shown}: cannot read the key file: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read the key file: {e}"))?;
    crate::os::check_private(&meta, &shown, "key file", reader)?;
    if meta.len() > MAX_FILE {
        return Err(format!("{shown}: the key file is larger than {MAX_FILE} bytes"));
    }
    let mut text = Vec::with_capacity(meta.len() as usize + 1);
    let read = file.by_ref().take(MAX_FILE + 1).read_to_end(&mut text);
    let parsed = read
        .map_err(|e| format!("{shown}: cannot read the key file: {e}"))
        .and_then(|_| parse(&shown, &text));
    wipe(&mut text);
    parsed
}

fn parse(shown: &str, text: &[u8]) -> Result<Vec<Key>, String> {
    let mut keys: Vec<Key> = Vec::new();
    let mut bytes = [0u8; KEY_LEN];
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        if !parse_hex(line, &mut bytes) {
            wipe(&mut bytes);
            return Err(if line.len() < KEY_LEN * 2 && line.iter().all(u8::is_ascii_hexdigit) {
                format!(
                    "{shown}: line {} holds a key of {} bytes; a key is {KEY_LEN} bytes (64 hex digits)",
                    n + 1,
                    line.len() / 2
                )
            } else {
                format!("{shown}: line {} is not a key of 64 hex digits", n + 1)
            });
        }
        let key = Key::from_bytes(&bytes);
        wipe(&mut bytes);
        let key = key.map_err(|e| format!("{shown}: cannot lock memory for a key: {e}"))?;
        if keys.iter().any(|k| k.id == key.id) {
            return Err(format!("{shown}: line {} repeats a key", n + 1));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!("{shown}: the key file holds no key"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        let _ = fs::remove_file(&p);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(mode)
            .open(&p)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// This process's uid: the owner of a file it just made.
    fn me() -> u32 {
        let p = dir().join("me");
        fs::write(&p, b"").unwrap();
        fs::metadata(&p).unwrap().uid()
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sslcache-keys-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn loads_keys_in_order() {
        let d = dir();
        let p = write(&d, "ok", &format!("# rotation\n{K2}\n\n{K1}\n"), 0o600);
        let keys = load("cache-udp-key", &p, me()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].bytes()[0], 0xff);
        assert_eq!(keys[1].bytes()[31], 0x1f);
        assert_ne!(keys[0].id, keys[1].id);
        assert!(!format!("{keys:?}").contains("ffee"));
    }

    #[test]
    fn every_bad_file_is_one_clear_error() {
        let d = dir();
        let cases = [
            (write(&d, "empty", "# nothing\n\n", 0o600), "holds no key"),
            (write(&d, "short", "0011223344\n", 0o600), "holds a key of 5 bytes"),
            (
                write(&d, "junk", "not a key at all\n", 0o600),
                "line 1 is not a key of 64 hex digits",
            ),
            (
                write(&d, "group", &format!("{K1}\n"), 0o640),
                "readable or writable by group or others (mode 0640)",
            ),
            (write(&d, "world", &format!("{K1}\n"), 0o604), "mode 0604"),
            (
                write(&d, "twice", &format!("{K1}\n{K1}\n"), 0o600),
                "line 2 repeats a key",
            ),
            (d.join("missing"), "cannot read the key file"),
            (
                {
                    let link = d.join("link");
                    let _ = fs::remove_file(&link);
                    std::os::unix::fs::symlink(d.join("ok-target"), &link).unwrap();
                    write(&d, "ok-target", &format!("{K1}\n"), 0o600);
                    link
                },
                "is a symbolic link",
            ),
            (d.clone(), "not a regular file"),
        ];
        for (path, expected) in cases {
            let e = load("cache-udp-key", &path, me()).unwrap_err();
            assert!(e.starts_with(&format!("cache-udp-key = {}", path.display())), "{e}");
            assert!(e.contains(expected), "{e} does not say {expected}");
            assert!(!e.contains("000102"), "key bytes in an error: {e}");
        }
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if me() != 0 {
            return;
        }
        let d = dir();
        let p = write(&d, "nobody", &format!("{K1}\n"), 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = load("cache-udp-key", &p, me()).unwrap_err();
        assert!(e.contains("belongs to uid 65534, neither root nor this process"), "{e}");
    }

    #[test]
    fn key_pages_are_left_out_of_core_dumps() {
        let key = Key::new([0x5a; 32]);
        let addr = key.bytes().as_ptr() as usize;
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                        in_mapping = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if in_mapping {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    flags = Some(f.to_string());
                }
            }
        }
        let flags = flags.expect("the key's mapping is in smaps");
        assert!(flags.split_whitespace().any(|f| f == "dd"), "VmFlags:{flags}");
    }
}
