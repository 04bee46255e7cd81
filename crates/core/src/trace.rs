//! A timing trace of replication, for the replication-window benchmark
//! (`examples/bench_window.rs`). With `SSLCACHE_TRACE=<file>` in uWSGI's
//! environment, every process appends one line per session it stores from
//! a handshake (`S`) and per session it applies from a peer (`A`):
//! `<S|A> <session id in hex> <CLOCK_MONOTONIC ns>`, one `write` each
//! (`O_APPEND`: lines of all processes interleave whole). Unset, it costs
//! one check of a value read once per process.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::OnceLock;

static FILE: OnceLock<Option<File>> = OnceLock::new();

fn file() -> Option<&'static File> {
    FILE.get_or_init(|| {
        let path = std::env::var_os("SSLCACHE_TRACE")?;
        std::fs::OpenOptions::new().append(true).create(true).open(path).ok()
    })
    .as_ref()
}

/// A session stored here from a handshake.
pub fn stored(id: &[u8]) {
    event('S', id);
}

/// A session from a peer, now usable here.
pub fn applied(id: &[u8]) {
    event('A', id);
}

fn event(kind: char, id: &[u8]) {
    let Some(mut file) = file() else { return };
    let t = crate::os::monotonic();
    let mut line = String::with_capacity(8 + 2 * id.len() + 24);
    line.push(kind);
    line.push(' ');
    for b in id {
        let _ = write!(line, "{b:02x}");
    }
    let _ = writeln!(line, " {}", t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
    let _ = file.write_all(line.as_bytes());
}
