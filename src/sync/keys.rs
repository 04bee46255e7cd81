//! Replication key files.
//!
//! One key per line, 64 hexadecimal digits (32 bytes); blank lines and
//! lines starting with `#` are ignored. The first key seals what this node
//! sends; every key opens what arrives, so keys rotate without a flag day:
//! add the new key second everywhere, then move it first everywhere, then
//! drop the old one. The file must not be readable by group or others.
//! Keys never appear in logs: only their ids (derived from the key).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Bytes of a key (AES-256).
pub const KEY_LEN: usize = 32;

/// A replication key and its public id.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: u32,
    pub bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes.
        write!(f, "Key({:08x})", self.id)
    }
}

impl Key {
    pub fn new(bytes: [u8; KEY_LEN]) -> Key {
        let digest = openssl::sha::sha256(&[b"sslcache key id\0".as_slice(), &bytes].concat());
        Key {
            id: u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
            bytes,
        }
    }
}

fn parse_hex(line: &str) -> Option<[u8; KEY_LEN]> {
    if line.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in line.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Reads a key file; `option` names the option in errors.
pub fn load(option: &str, path: &Path) -> Result<Vec<Key>, String> {
    let shown = format!("{option} = {}", path.display());
    let meta = fs::metadata(path).map_err(|e| format!("{shown}: cannot read the key file: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: the key file is readable or writable by group or others (mode {mode:04o}): chmod 600 it"
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read the key file: {e}"))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = parse_hex(line).ok_or_else(|| {
            if line.len() < KEY_LEN * 2 && line.bytes().all(|b| b.is_ascii_hexdigit()) {
                format!(
                    "{shown}: line {} holds a key of {} bytes; a key is {KEY_LEN} bytes (64 hex digits)",
                    n + 1,
                    line.len() / 2
                )
            } else {
                format!("{shown}: line {} is not a key of 64 hex digits", n + 1)
            }
        })?;
        let key = Key::new(bytes);
        if keys.iter().any(|k: &Key| k.id == key.id) {
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
    use std::os::unix::fs::OpenOptionsExt;

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
        let keys = load("cache-udp-key", &p).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].bytes[0], 0xff);
        assert_eq!(keys[1].bytes[31], 0x1f);
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
        ];
        for (path, expected) in cases {
            let e = load("cache-udp-key", &path).unwrap_err();
            assert!(e.starts_with(&format!("cache-udp-key = {}", path.display())), "{e}");
            assert!(e.contains(expected), "{e} does not say {expected}");
            assert!(!e.contains("000102"), "key bytes in an error: {e}");
        }
    }
}
