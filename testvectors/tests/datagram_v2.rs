//! Datagram v2 against cloudflared 2026.8.2's own bytes.

use burrow_core::datagram::v2::{self, Datagram};
use burrow_testvectors::v2_datagrams;
use uuid::Uuid;

#[test]
fn every_v2_vector_round_trips_exactly() {
    let file = v2_datagrams();
    assert_eq!(file.vectors.len(), 2, "vector file changed");
    for v in &file.vectors {
        let bytes = v.bytes();
        let packet;
        let want = match v.kind.as_str() {
            "v2.udp" => Datagram::Udp {
                session_id: Uuid::parse_str(v.str_field("session_id")).expect("uuid"),
                payload: v.str_field("payload").as_bytes(),
            },
            "v2.ip" => {
                packet = hex::decode(v.str_field("packet_hex")).unwrap();
                Datagram::Ip { packet: &packet }
            }
            other => panic!("{}: unexpected kind {other}", v.name),
        };
        assert_eq!(v2::decode(&bytes), Ok(want), "{}", v.name);
        assert_eq!(
            want.datagram_type() as u64,
            v.u64_field("type"),
            "{}",
            v.name
        );
        let mut out = [0u8; 2048];
        let n = want.encode(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..], "{}", v.name);
    }
}

#[test]
fn decoded_forms_snapshot() {
    let mut out = String::new();
    for v in &v2_datagrams().vectors {
        let bytes = v.bytes();
        let line = match v2::decode(&bytes) {
            Ok(Datagram::Udp {
                session_id,
                payload,
            }) => format!(
                "Udp {{ session: {session_id}, payload: {:?} }}",
                String::from_utf8_lossy(payload)
            ),
            Ok(Datagram::Ip { packet }) => format!("Ip {{ packet: {} }}", hex::encode(packet)),
            other => format!("{other:?}"),
        };
        out.push_str(&format!("{}: {line}\n", v.name));
    }
    insta::assert_snapshot!(out);
}
