//! TLS files for `rediss://`: the CA that verifies the Redis servers, and a
//! client certificate and key for servers that ask for one.
//!
//! The files are read while the settings are resolved, in uWSGI's master
//! before it drops privileges (as the replication key file is), and checked
//! there: a file that is missing, unreadable or not what it should be is one
//! error naming its option, and uWSGI does not start. The client key must be
//! private to this process (as the replication key file must).

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use super::ConfigError;

/// Largest CA bundle or certificate chain read.
const MAX_CERTS: u64 = 1 << 20;
/// Largest private key file read.
const MAX_KEY: u64 = 64 * 1024;

/// A file as configured and what it held: PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// How errors and logs name the setting (`ssl-sessions-redis-ca`, or
    /// `cache2 "name" redis_ca`).
    pub option: String,
    pub path: String,
    pub pem: Vec<u8>,
}

impl PemFile {
    /// `option = path`, as logs show it.
    pub fn shown(&self) -> String {
        format!("{} = {}", self.option, self.path)
    }
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents (a private key, for the client's).
        write!(f, "PemFile({} = {}, {} bytes)", self.option, self.path, self.pem.len())
    }
}

impl Drop for PemFile {
    fn drop(&mut self) {
        wipe(&mut self.pem);
    }
}

/// What `rediss://` connections of a cache use beyond the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA certificates (PEM) that verify the servers, instead of the
    /// system's trust store.
    pub ca: Option<PemFile>,
    /// A client certificate (chain, PEM) and its key (PKCS#8 PEM), shown
    /// to servers that verify clients (`tls-auth-clients yes`).
    pub client: Option<(PemFile, PemFile)>,
    /// How logs name the CA and client certificate settings of this cache
    /// (given or not).
    pub ca_option: String,
    pub cert_option: String,
}

impl RedisTls {
    /// Whether any file was given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// The options naming the files, as errors name them, and their values.
pub struct Given<'a> {
    pub ca: (String, Option<&'a str>),
    pub cert: (String, Option<&'a str>),
    pub key: (String, Option<&'a str>),
}

/// Reads and checks the files given; `reader` is the uid that must own the
/// key file (or root).
pub fn load(given: Given<'_>, reader: u32) -> Result<RedisTls, ConfigError> {
    let value = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let (ca_option, ca) = (given.ca.0, value(given.ca.1));
    let (cert_option, cert) = (given.cert.0, value(given.cert.1));
    let (key_option, key) = (given.key.0, value(given.key.1));
    let ca = match ca {
        Some(path) => Some(certificates(ca_option.clone(), path, "CA file")?.0),
        None => None,
    };
    let client = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError(format!(
                "{cert_option} needs {key_option}: the private key of that certificate"
            )))
        }
        (None, Some(_)) => {
            return Err(ConfigError(format!(
                "{key_option} needs {cert_option}: the certificate of that key"
            )))
        }
        (Some(cert), Some(key)) => {
            let (cert, leaf) = certificates(cert_option.clone(), cert, "certificate file")?;
            let key = private_key(key_option, key, &leaf, &cert, reader)?;
            Some((cert, key))
        }
    };
    Ok(RedisTls {
        ca,
        client,
        ca_option,
        cert_option,
    })
}

fn error(shown: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{shown}: {why}"))
}

/// Reads `path` (at most `max` bytes); `nofollow`: a symbolic link is
/// refused; `private`: the file must be private to `reader`.
fn read(shown: &str, path: &Path, what: &str, max: u64, private: Option<u32>) -> Result<Vec<u8>, ConfigError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if private.is_some() {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if private.is_some() => {
                error(shown, format!("the {what} is a symbolic link; name the file itself"))
            }
            _ => error(shown, format!("cannot read the {what}: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| error(shown, format!("cannot read the {what}: {e}")))?;
    match private {
        Some(reader) => crate::os::check_private(&meta, shown, what, reader).map_err(ConfigError)?,
        None if !meta.is_file() => return Err(error(shown, "not a regular file")),
        None => {}
    }
    if meta.len() > max {
        return Err(error(shown, format!("the {what} is larger than {max} bytes")));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    if let Err(e) = file.by_ref().take(max + 1).read_to_end(&mut bytes) {
        wipe(&mut bytes);
        return Err(error(shown, format!("cannot read the {what}: {e}")));
    }
    Ok(bytes)
}

/// A file of PEM certificates; the first of them.
fn certificates(option: String, path: String, what: &str) -> Result<(PemFile, X509), ConfigError> {
    let shown = format!("{option} = {path}");
    let pem = read(&shown, Path::new(&path), what, MAX_CERTS, None)?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        error(
            &shown,
            format!("the {what} is not PEM certificates ({})", first_reason(&e)),
        )
    })?;
    let Some(first) = certs.into_iter().next() else {
        return Err(error(&shown, format!("the {what} holds no PEM certificate")));
    };
    Ok((PemFile { option, path, pem }, first))
}

/// The client's private key, which must belong to `leaf`: re-encoded as
/// unencrypted PKCS#8 PEM (what the TLS library takes), whatever PEM form
/// it came in.
fn private_key(option: String, path: String, leaf: &X509, cert: &PemFile, reader: u32) -> Result<PemFile, ConfigError> {
    let shown = format!("{option} = {path}");
    let mut text = read(&shown, Path::new(&path), "key file", MAX_KEY, Some(reader))?;
    // A callback that gives no passphrase: an encrypted key is an error,
    // never a prompt on the master's terminal.
    let parsed = PKey::private_key_from_pem_callback(&text, |_| Ok(0));
    let encrypted = text.windows(9).any(|w| w == b"ENCRYPTED");
    wipe(&mut text);
    let key: PKey<Private> = parsed.map_err(|e| {
        if encrypted {
            error(&shown, "the key is encrypted: give it unencrypted (mode 0600)")
        } else {
            error(
                &shown,
                format!("the key file is not a PEM private key ({})", first_reason(&e)),
            )
        }
    })?;
    let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(error(
            &shown,
            format!("this key is not the key of the certificate in {}", cert.shown()),
        ));
    }
    let pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| error(&shown, format!("cannot encode the key ({})", first_reason(&e))))?;
    Ok(PemFile { option, path, pem })
}

/// OpenSSL's first reason, for a short error line.
fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason())
        .unwrap_or("unreadable")
        .to_string()
}

/// Overwrites a buffer that held key material.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&buf);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
