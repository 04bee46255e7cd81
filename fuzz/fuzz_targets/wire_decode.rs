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
        let key = frame.key();
        assert!(!key.is_empty() && key.len() <= LIMITS.max_key);
        if let Frame::Set { value, .. } = frame {
            assert!(!value.is_empty() && value.len() <= LIMITS.max_value);
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
