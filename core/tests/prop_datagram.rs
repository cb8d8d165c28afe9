//! Round trips and never-panic properties for datagram v3 and v2.

use std::net::{IpAddr, SocketAddr};

use burrow_core::datagram::{v2, v3};
use proptest::prelude::*;
use uuid::Uuid;

fn any_dest() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

proptest! {
    #[test]
    fn v3_registration_round_trips(
        id in any::<u128>(), dest in any_dest(), traced in any::<bool>(),
        idle in any::<u16>(), body in payload(v3::MAX_PAYLOAD_LEN),
    ) {
        let d = v3::Datagram::Registration(v3::Registration {
            request_id: v3::RequestId(id), dest, traced, idle_hint_secs: idle, payload: &body,
        });
        let mut out = [0u8; 2048];
        let n = d.encode(&mut out).unwrap();
        prop_assert_eq!(v3::decode(&out[..n]), Ok(d));
    }

    #[test]
    fn v3_payload_round_trips(id in any::<u128>(), body in payload(v3::MAX_PAYLOAD_LEN)) {
        let d = v3::Datagram::Payload(v3::Payload { request_id: v3::RequestId(id), payload: &body });
        let mut out = [0u8; v3::MAX_PAYLOAD_DATAGRAM_LEN];
        let n = d.encode(&mut out).unwrap();
        prop_assert_eq!(v3::decode(&out[..n]), Ok(d));
    }

    #[test]
    fn v3_response_round_trips(id in any::<u128>(), code in any::<u8>(), msg in "\\PC{0,300}") {
        prop_assume!(msg.len() <= v3::MAX_RESPONSE_MSG_LEN);
        let d = v3::Datagram::RegistrationResponse(v3::RegistrationResponse {
            request_id: v3::RequestId(id), code: v3::ResponseCode::from_u8(code), error_msg: &msg,
        });
        let mut out = [0u8; 2048];
        let n = d.encode(&mut out).unwrap();
        prop_assert_eq!(v3::decode(&out[..n]), Ok(d));
    }

    #[test]
    fn v3_icmp_round_trips(packet in prop::collection::vec(any::<u8>(), 1..=v3::MAX_PAYLOAD_LEN)) {
        let d = v3::Datagram::Icmp(v3::Icmp { packet: &packet });
        let mut out = [0u8; v3::MAX_ICMP_DATAGRAM_LEN];
        let n = d.encode(&mut out).unwrap();
        prop_assert_eq!(v3::decode(&out[..n]), Ok(d));
    }

    #[test]
    fn v3_request_id_text_round_trips(id in any::<u128>()) {
        let id = v3::RequestId(id);
        let s = id.to_string();
        prop_assert_eq!(s.len(), 32);
        prop_assert_eq!(s.parse::<v3::RequestId>(), Ok(id));
    }

    /// Anything that decodes re-encodes to the same bytes, except where the
    /// encoding is not unique (a registration's ignored trailing bytes or spare flag bits).
    #[test]
    fn v3_arbitrary_bytes_never_panic(bytes in payload(1400)) {
        if let Ok(d) = v3::decode(&bytes) {
            let mut out = [0u8; 2048];
            if let Ok(n) = d.encode(&mut out) {
                if !matches!(d, v3::Datagram::Registration(_)) {
                    prop_assert_eq!(&out[..n], &bytes[..]);
                }
                prop_assert_eq!(v3::decode(&out[..n]), Ok(d));
            }
        }
    }

    #[test]
    fn v2_round_trips(
        ty in 0u8..4, sid in any::<u128>(), body in payload(1200), ident in any::<[u8; 25]>(),
    ) {
        let identity = v2::TracingIdentity(&ident);
        let d = match ty {
            0 => v2::Datagram::Udp { session_id: Uuid::from_u128(sid), payload: &body },
            1 if body.is_empty() => return Ok(()),
            1 => v2::Datagram::Ip { packet: &body },
            2 => v2::Datagram::IpWithTrace { packet: &body, identity },
            _ => v2::Datagram::TracingSpan { spans: &body, identity },
        };
        let mut out = [0u8; 2048];
        let n = d.encode(&mut out).unwrap();
        prop_assert_eq!(v2::decode(&out[..n]), Ok(d));
    }

    #[test]
    fn v2_arbitrary_bytes_never_panic(bytes in payload(1400)) {
        if let Ok(d) = v2::decode(&bytes) {
            let mut out = [0u8; 2048];
            if let Ok(n) = d.encode(&mut out) {
                prop_assert_eq!(&out[..n], &bytes[..]);
            }
        }
    }

    #[test]
    fn in_place_framing_never_panics(len in 0usize..3000, buf_len in 0usize..3000, id in any::<u128>()) {
        let mut buf = vec![0u8; buf_len];
        let _ = v3::frame_payload_in_place(&mut buf, v3::RequestId(id), len);
        let _ = v3::frame_icmp_in_place(&mut buf, len);
        let _ = v2::frame_udp_in_place(&mut buf, len, Uuid::from_u128(id));
        let _ = v2::frame_ip_in_place(&mut buf, len);
    }
}
