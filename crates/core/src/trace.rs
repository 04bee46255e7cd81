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

/// The time of an event, when tracing (taken before the work that
/// follows it, written after: the write must not delay that work).
pub fn now() -> Option<u64> {
    file()?;
    let t = crate::os::monotonic();
    Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// A session stored here from a handshake at `at` (from [`now`]).
pub fn stored(id: &[u8], at: Option<u64>) {
    if let Some(at) = at {
        event('S', id, at);
    }
}

/// A session from a peer, now usable here.
pub fn applied(id: &[u8]) {
    if let Some(at) = now() {
        event('A', id, at);
    }
}

fn event(kind: char, id: &[u8], at: u64) {
    let Some(mut file) = file() else { return };
    let mut line = String::with_capacity(8 + 2 * id.len() + 24);
    line.push(kind);
    line.push(' ');
    for b in id {
        let _ = write!(line, "{b:02x}");
    }
    let _ = writeln!(line, " {at}");
    let _ = file.write_all(line.as_bytes());
}
