#![no_main]
//! Any bytes as a v2 datagram: decode must not panic, and what decodes and fits the limits
//! must re-encode to the same bytes.

use burrow_core::datagram::v2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = v2::decode(data) {
        let mut out = [0u8; 4096];
        if let Ok(n) = d.encode(&mut out) {
            assert_eq!(&out[..n], data);
        }
    }
});
