#![no_main]
//! Any bytes as the connector's HTTP/1.1 request head toward an `http2Origin` origin: parsing
//! must not panic, and what parses must write back as a head that parses to the same request.

use burrow_core::http2::origin::{parse_request, write_request_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((request, framing, end))) = parse_request(data) else {
        return;
    };
    assert!(end <= data.len());
    let mut again = Vec::new();
    write_request_head(&request, framing, &mut again);
    let (request2, framing2, end2) = parse_request(&again)
        .expect("our head parses")
        .expect("our head is whole");
    assert_eq!(end2, again.len());
    assert_eq!(framing, framing2);
    assert_eq!(request.method(), request2.method());
    assert_eq!(request.uri(), request2.uri());
    assert_eq!(request.headers(), request2.headers());
});
