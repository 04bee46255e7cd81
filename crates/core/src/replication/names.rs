//! Where a cache's sessions live in Redis: one key per session under the
//! cache's prefix, one channel for updates.
//!
//! With a cluster key, a session's Redis key is a keyed hash of its id
//! (HMAC-SHA256 with a key derived from the cluster key, 128 bits shown):
//! whoever reads Redis learns no session id. Every configured key is tried
//! when checking where a record belongs, so records written before a key
//! rotation still load. Without a key, the id in hex.

use openssl::pkey::PKey;
use openssl::sign::Signer;

use super::keys::Key;

/// Bytes of the keyed hash shown in a Redis key.
const HASH_SHOWN: usize = 16;

/// A cache's Redis key names and channel.
pub struct Names {
    prefix: String,
    channel: String,
    /// Derived from each cluster key, the sealing one first; in key pages
    /// (kept from application processes, as the keys are).
    hash_keys: Vec<Key>,
}

impl Names {
    /// Names of cache `cache`; `keys`: the cluster keys, if sealed.
    pub fn new(cache: &str, keys: &[Key]) -> Names {
        let cache: String = cache
            .chars()
            // Nothing that separates name parts or means something to
            // SCAN's pattern.
            .map(|c| {
                if c.is_ascii_graphic() && !":*?[]\\^".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Names {
            prefix: format!("sslcache:{cache}:s:"),
            channel: format!("sslcache:{cache}:updates"),
            hash_keys: keys.iter().map(hash_key).collect(),
        }
    }

    /// The channel updates are published on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// What every session key starts with (for SCAN).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of session `id`.
    pub fn key_for(&self, id: &[u8]) -> String {
        match self.hash_keys.first() {
            Some(k) => self.prefix.clone() + &hex(&keyed_hash(k.bytes(), id)[..HASH_SHOWN]),
            None => self.prefix.clone() + &hex(id),
        }
    }

    /// Whether a record found under `name` is session `id`'s (under any
    /// configured key): a record moved to another name is refused.
    pub fn belongs(&self, name: &[u8], id: &[u8]) -> bool {
        let Some(shown) = name.strip_prefix(self.prefix.as_bytes()) else {
            return false;
        };
        if self.hash_keys.is_empty() {
            return shown == hex(id).as_bytes();
        }
        self.hash_keys
            .iter()
            .any(|k| shown == hex(&keyed_hash(k.bytes(), id)[..HASH_SHOWN]).as_bytes())
    }
}

fn hash_key(key: &Key) -> Key {
    let mut out = [0u8; 32];
    out.copy_from_slice(&keyed_hash(key.bytes(), b"sslcache v1 redis names"));
    let derived = Key::new(out);
    super::keys::wipe(&mut out);
    derived
}

fn keyed_hash(key: &[u8], data: &[u8]) -> Vec<u8> {
    let pkey = PKey::hmac(key).expect("HMAC key");
    let mut signer = Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).expect("HMAC-SHA256");
    signer.update(data).expect("HMAC update");
    signer.sign_to_vec().expect("HMAC")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_the_id_in_hex() {
        let names = Names::new("default", &[]);
        assert_eq!(names.key_for(&[0xab, 0x01]), "sslcache:default:s:ab01");
        assert_eq!(names.channel(), "sslcache:default:updates");
        assert!(names.belongs(b"sslcache:default:s:ab01", &[0xab, 0x01]));
        assert!(!names.belongs(b"sslcache:default:s:ab02", &[0xab, 0x01]));
        assert!(!names.belongs(b"sslcache:other:s:ab01", &[0xab, 0x01]));
        assert_eq!(Names::new("a*b?[c]:d", &[]).prefix(), "sslcache:a_b__c__d:s:");
    }

    #[test]
    fn keyed_names_hide_the_id_and_survive_rotation() {
        let (old, new) = (|| Key::new([1; 32]), || Key::new([2; 32]));
        let before = Names::new("c d", &[old()]);
        let name = before.key_for(b"session-id");
        assert!(
            name.starts_with("sslcache:c_d:s:") && !name.contains("73657373"),
            "{name}"
        );
        assert_eq!(name.len(), "sslcache:c_d:s:".len() + 2 * HASH_SHOWN);
        assert!(before.belongs(name.as_bytes(), b"session-id"));
        assert!(!before.belongs(name.as_bytes(), b"session-id2"));
        // After rotation ([new, old]): new names, old ones still recognised.
        let after = Names::new("c d", &[new(), old()]);
        assert_ne!(after.key_for(b"session-id"), name);
        assert!(after.belongs(name.as_bytes(), b"session-id"));
        // A node without the old key does not take it.
        assert!(!Names::new("c d", &[new()]).belongs(name.as_bytes(), b"session-id"));
    }
}
