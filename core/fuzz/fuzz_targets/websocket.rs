#![no_main]
//! Any bytes as an eyeball's WebSocket frames, in any pieces: no panic, the payload never
//! exceeds the input, and the same bytes give the same result whatever the split.

use burrow_core::stream::websocket::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let whole = {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.feed(rest, &mut out).map(|c| (out, c))
    };
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let mut controls = Vec::new();
    let mut failed = None;
    for chunk in rest.chunks(usize::from(step).max(1)) {
        match d.feed(chunk, &mut out) {
            Ok(c) => controls.extend(c),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(out.len() <= rest.len());
    match (whole, failed) {
        (Ok((o, c)), None) => assert_eq!((o, c), (out, controls)),
        (Err(a), Some(b)) => assert_eq!(a, b),
        (w, f) => panic!("split changed the outcome: {w:?} vs {f:?}"),
    }
});
