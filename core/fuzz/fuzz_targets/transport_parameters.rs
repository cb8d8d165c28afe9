#![no_main]
//! Any bytes as encoded transport parameters: the `max_udp_payload_size` search never panics
//! and never answers more than a QUIC varint holds.

use burrow_core::quic::client_metrics::max_udp_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(max_udp_payload(data) < 1 << 62);
});
