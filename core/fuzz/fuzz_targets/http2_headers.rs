#![no_main]
//! Any bytes as a connector's `cf-cloudflared-response-headers` (and meta) value: decoding must
//! not panic, and what decodes must re-encode (control headers dropped, names canonical) and
//! decode to the same pairs.

use burrow_core::http2::headers::{
    decode, encode_user_headers, is_control_response_header, is_websocket_client_header,
    push_canonical,
};
use burrow_core::http2::response::{ConnectorResponse, META_HEADER, USER_HEADERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut head = http::Response::new(()).into_parts().0;
        head.headers.insert(USER_HEADERS, value.clone());
        head.headers.insert(META_HEADER, value);
        let _ = ConnectorResponse::from_head(head);
    }
    let Ok(pairs) = decode(data) else {
        return;
    };
    let mut blob = String::new();
    encode_user_headers(
        pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        &mut blob,
        &mut Vec::new(),
    );
    let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .filter(|(n, _)| {
            let lower = n.to_ascii_lowercase();
            !is_control_response_header(&lower) || is_websocket_client_header(&lower)
        })
        .map(|(n, v)| {
            let mut name = Vec::new();
            push_canonical(n, &mut name);
            (name, v.clone())
        })
        .collect();
    assert_eq!(decode(blob.as_bytes()).expect("our encoding decodes"), expected);
});
