//! Fuzzes the sealed datagram path of a receiver: opening (header parsing,
//! key lookup, AES-GCM verification, clock and replay checks) and decoding
//! what it carries. Inputs starting with 'S' exercise the sealed parser;
//! the first input byte also picks whether the datagram is sealed for real
//! with the receiver's key (so that the decoder behind it is reached too).
#![no_main]

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sslcache_core::replication::keys::Key;
use sslcache_core::replication::seal::{Opener, Sealer};
use sslcache_core::replication::wire::{decode_plain, FrameLimits};

const NOW: u64 = 1_800_000_000_000;
const LIMITS: FrameLimits = FrameLimits {
    max_key: 128,
    max_value: 4096,
};

struct State {
    opener: Opener,
    sealer: Sealer,
    seq: AtomicU64,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let key = Key::new([7; 32]);
        State {
            opener: Opener::new(vec![key.clone(), Key::new([9; 32])], 30, 0),
            sealer: Sealer::with_sender(&key, 1),
            seq: AtomicU64::new(0),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = state();
    let datagram = match data.split_first() {
        // Seal the rest for real: the frame decoder runs on fuzzed bytes.
        Some((&0, rest)) => {
            let mut out = Vec::new();
            s.sealer.seal(rest, &s.seq, NOW, &mut out);
            out
        }
        _ => data.to_vec(),
    };
    if let Ok(frame) = s.opener.open(&datagram, NOW) {
        let _ = decode_plain(&frame, LIMITS);
    }
});
