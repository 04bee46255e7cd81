//! Key material: self-signed listener certificates, a CA and a client
//! certificate it signed, made once per test run with the `openssl` CLI;
//! cluster key files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::env::made_once;

/// Self-signed certificate + key for `cn`, made once per test run (an RSA
/// key costs a tenth of a second of CPU: once, not once per test process).
pub fn cert(cn: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (format!("{cn}.crt"), format!("{cn}.key"));
    let dir = made_once("certs", &crt, |dir| {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(dir.join(&key))
            .arg("-out")
            .arg(dir.join(&crt))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl CLI");
        assert!(status.success(), "openssl req failed");
    });
    (dir.join(crt), dir.join(key))
}

/// Listener certificates (self-signed), a CA that client-certificate
/// listeners trust, and a client certificate it signed.
pub struct Pki {
    pub a: (PathBuf, PathBuf),
    pub b: (PathBuf, PathBuf),
    pub ca_crt: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
}

/// `openssl` with `args` (split on whitespace) in `dir`.
pub fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Made once per test run.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = made_once("pki", "client.crt", |dir| {
            openssl(
                dir,
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt",
            );
            openssl(
                dir,
                "req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr",
            );
            openssl(
                dir,
                "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out client.crt",
            );
        });
        Pki {
            a: cert("listener-a"),
            b: cert("listener-b"),
            ca_crt: dir.join("ca.crt"),
            client_crt: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    })
}

/// A cluster key file `dir/name` (mode 0600, as sslcache requires) holding
/// `keys` (hex), one a line.
pub fn key_file(dir: &Path, name: &str, keys: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, keys.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
