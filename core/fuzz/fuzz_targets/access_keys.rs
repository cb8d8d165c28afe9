#![no_main]
//! Any bytes as the JWKS document an Access team domain serves (`originRequest.access`):
//! parsed into keys or refused with an error, never a panic.

use burrow_core::ingress::access::KeySet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = KeySet::from_json(data);
});
