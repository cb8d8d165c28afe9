#![no_main]
//! Any bytes as an HTTP/2 configuration-push body: decoding must not panic, and what decodes must
//! re-encode and decode to the same push.

use burrow_core::http2::configuration::PushBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut body = PushBody::default();
    if body.extend(data).is_err() {
        return;
    }
    let Ok(push) = body.decode() else {
        return;
    };
    let again = format!(r#"{{"version":{},"config":{}}}"#, push.version, push.config);
    let mut body = PushBody::default();
    body.extend(again.as_bytes()).expect("small");
    assert_eq!(body.decode().expect("our encoding decodes"), push);
});
