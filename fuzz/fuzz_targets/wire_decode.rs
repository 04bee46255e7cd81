//! Fuzzes the replication datagram decoder: whatever arrives on the UDP
//! port, decoding must return a frame or an error, never panic, and a
//! decoded frame must respect the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslcache_core::replication::wire::{decode_plain, encode_plain, Frame, FrameLimits};

const LIMITS: FrameLimits = FrameLimits {
    max_key: 128,
    max_value: 4096,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_plain(data, LIMITS) {
        match frame {
            Frame::Set { key, value, .. } => {
                assert!(!key.is_empty() && key.len() <= LIMITS.max_key);
                assert!(!value.is_empty() && value.len() <= LIMITS.max_value);
            }
            Frame::Delete { key } => assert!(!key.is_empty() && key.len() <= LIMITS.max_key),
            // Its body is the sync decoder's (fuzzed by sync_decode).
            Frame::Sync { body } => assert!(!body.is_empty()),
        }
        // What decodes re-encodes to the same bytes (for sets with an
        // expiry field; stock may omit it).
        let mut out = Vec::new();
        encode_plain(&frame, &mut out).unwrap();
        if out.len() == data.len() {
            assert_eq!(out, data);
        }
    }
});
