//! The `max_udp_payload_size` search over encoded transport parameters: found among any other
//! parameters in any order, RFC 9000's default when absent.

use burrow_core::quic::client_metrics::max_udp_payload;
use proptest::prelude::*;
use quinn_proto::coding::Codec;
use quinn_proto::VarInt;

fn param(out: &mut Vec<u8>, id: u64, value: &[u8]) {
    VarInt::from_u64(id).expect("id").encode(out);
    VarInt::from_u64(value.len() as u64)
        .expect("len")
        .encode(out);
    out.extend_from_slice(value);
}

proptest! {
    #[test]
    fn max_udp_payload_round_trips(
        others in proptest::collection::vec(
            ((0u64..1 << 20).prop_filter("not 0x03", |id| *id != 3),
             proptest::collection::vec(any::<u8>(), 0..16)),
            0..8,
        ),
        at in 0usize..8,
        value in proptest::option::of(1200u64..(1 << 62)),
    ) {
        let mut enc = Vec::new();
        for (k, (id, v)) in others.iter().enumerate() {
            if k == at.min(others.len()) {
                if let Some(value) = value {
                    let mut v = Vec::new();
                    VarInt::from_u64(value).expect("value").encode(&mut v);
                    param(&mut enc, 3, &v);
                }
            }
            param(&mut enc, *id, v);
        }
        if at >= others.len() {
            if let Some(value) = value {
                let mut v = Vec::new();
                VarInt::from_u64(value).expect("value").encode(&mut v);
                param(&mut enc, 3, &v);
            }
        }
        prop_assert_eq!(max_udp_payload(&enc), value.unwrap_or(65527));
    }
}
