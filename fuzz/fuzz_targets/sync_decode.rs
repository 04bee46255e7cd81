//! Fuzzes the decoder of sync messages (warm start, repair): whatever a
//! peer sends, decoding returns a message or an error, never panics, and a
//! decoded message encodes back to bodies that decode to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslcache_core::replication::digest::{Message, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    if let Ok((envelope, message)) = Message::decode(data) {
        let bodies = message.encode(&envelope);
        if data.len() <= MAX_BODY {
            // Small enough for one body: the same bytes (Keys with a bucket
            // marked incomplete encode alike; nothing is reordered).
            if let [one] = &bodies[..] {
                assert_eq!(Message::decode(one).unwrap(), (envelope, message));
            }
        }
    }
});
