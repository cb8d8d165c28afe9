#![no_main]
//! Any bytes as the start of a data stream after its preamble: decoding a `ConnectRequest` must
//! not panic, every accessor of what decodes must not panic, and what decodes (with a known
//! type and UTF-8 text) must re-encode and decode to the same fields.

use burrow_core::rpc::frame::FrameLimits;
use burrow_core::stream::connect::{decode_connect_request, ConnectRequest, Metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((r, n))) = decode_connect_request(data, &FrameLimits::CONNECT_REQUEST) else {
        return;
    };
    assert!(n <= data.len());
    let _ = format!("{r:?}");
    let metadata: Result<Vec<Metadata<'_>>, _> = r.metadata().collect();
    let (Ok(dest), Ok(connection_type), Ok(metadata)) = (r.dest(), r.connection_type(), metadata)
    else {
        return;
    };
    let request = ConnectRequest {
        dest,
        connection_type,
        metadata: &metadata,
    };
    let mut out = Vec::new();
    if request.encode_body(&mut out).is_err() {
        return;
    }
    let (again, m) = decode_connect_request(&out, &FrameLimits::CONNECT_REQUEST)
        .expect("our encoding decodes")
        .expect("our encoding is complete");
    assert_eq!(m, out.len());
    assert_eq!(again.dest().ok(), Some(dest));
    assert_eq!(again.connection_type(), Ok(connection_type));
    let again: Vec<Metadata<'_>> = again.metadata().map(|m| m.expect("utf-8")).collect();
    assert_eq!(again, metadata);
});
