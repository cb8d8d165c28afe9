#![no_main]
//! Any bytes as an origin's HTTP/1 response: the head parses or fails without panic and never
//! claims more bytes than it was given; the body that follows, fed in pieces of any size with
//! any room, never consumes more than offered, never writes more than the room, and waits for
//! more bytes only while it holds less than a line's bound ([`MAX_LINE`]).

use burrow_core::stream::http1::{parse_response, BodyReader, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let is_head = knobs & 1 == 1;
    let piece = usize::from(knobs >> 1).max(1);
    let room = usize::from(knobs).max(1) * 7;
    let Ok(Some((head, used))) = parse_response(rest, is_head) else {
        return;
    };
    assert!(used <= rest.len());
    let mut body = BodyReader::new(head.body);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for chunk in rest[used..].chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            let before = out.len();
            let Ok(n) = body.read(&pending, &mut out, room) else {
                return;
            };
            assert!(n <= pending.len());
            assert!(out.len() - before <= room);
            pending.drain(..n);
            if body.is_done() {
                return;
            }
            if n == 0 {
                // Only an unfinished framing line may wait, and lines are bounded.
                assert!(pending.len() < MAX_LINE);
                break;
            }
        }
    }
    let _ = body.finish();
});
