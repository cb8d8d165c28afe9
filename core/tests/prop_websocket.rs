//! WebSocket client frames of any sizes and masks, split anywhere, decode to their payloads
//! in order; pings come back as pings, each message's end as its end.

use burrow_core::stream::websocket::{Control, Decoder, OP_BINARY};
use proptest::prelude::*;

fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

proptest! {
    #[test]
    fn frames_round_trip_through_any_split(
        frames in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..70_000), any::<[u8; 4]>(), any::<bool>()), 1..6),
        step in 1usize..5000,
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut wanted = Vec::new();
        for (payload, mask, ping) in &frames {
            if *ping {
                let p = &payload[..payload.len().min(125)];
                wire.extend(client_frame(9, p, *mask));
                wanted.push(Control::Ping(p.to_vec()));
            } else {
                wire.extend(client_frame(OP_BINARY, payload, *mask));
                want.extend_from_slice(payload);
                wanted.push(Control::MessageEnd { text: false, end: want.len() });
            }
        }
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut controls = Vec::new();
        for chunk in wire.chunks(step) {
            controls.extend(d.feed(chunk, &mut out).unwrap());
        }
        prop_assert_eq!(out, want);
        prop_assert_eq!(controls, wanted);
    }
}
