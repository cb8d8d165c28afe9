#![no_main]
//! Any bytes as a v3 datagram: decode must not panic, and what decodes must re-encode and
//! decode to the same value.

use burrow_core::datagram::v3;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = v3::decode(data) {
        let mut out = [0u8; 4096];
        if let Ok(n) = d.encode(&mut out) {
            assert_eq!(v3::decode(&out[..n]), Ok(d));
        }
    }
});
