//! ICMP against cloudflared 2026.8.2's own bytes: TTL-exceeded replies byte for byte, echo
//! packets encoded exactly and decoded back to their fields.

use std::fmt::Write as _;
use std::net::IpAddr;

use burrow_core::icmp::{
    self, Echo, EchoKind, IcmpMessage, IcmpPacket, IpVersion, TTL_EXCEEDED_MAX_V6,
};
use burrow_testvectors::{icmp as icmp_vectors, Vector};

fn hex_field(v: &Vector, key: &str) -> Vec<u8> {
    hex::decode(v.str_field(key)).unwrap_or_else(|e| panic!("{}: {key}: {e}", v.name))
}

fn ip_field(v: &Vector, key: &str) -> IpAddr {
    v.str_field(key)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {key}: {e}", v.name))
}

fn u16_field(v: &Vector, key: &str) -> u16 {
    v.u64_field(key).try_into().expect("u16 field")
}

/// The echo an `icmp.encode` vector describes (IPv6 vectors name the TTL `hop_limit`).
fn echo_of<'a>(v: &Vector, data: &'a [u8]) -> Echo<'a> {
    let ttl_key = if v.fields.get("hop_limit").is_some() {
        "hop_limit"
    } else {
        "ttl"
    };
    Echo {
        src: ip_field(v, "src"),
        dst: ip_field(v, "dst"),
        ttl: v.u64_field(ttl_key).try_into().expect("u8 ttl"),
        kind: EchoKind::Request,
        id: u16_field(v, "echo_id"),
        seq: u16_field(v, "seq"),
        data,
    }
}

#[test]
fn ttl_exceeded_replies_match_byte_for_byte() {
    let mut seen = 0;
    for v in icmp_vectors()
        .vectors
        .iter()
        .filter(|v| v.kind == "icmp.ttl_exceeded")
    {
        let input = hex_field(v, "input_hex");
        let expected = hex_field(v, "expected_hex");
        let original = icmp::parse(&input).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert!(original.ttl() <= 1, "{}: vector is for TTL ≤ 1", v.name);
        let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
        let n = icmp::write_ttl_exceeded(&original, ip_field(v, "router_ip"), &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            hex::encode(&out[..n]),
            hex::encode(&expected),
            "{}: TTL-exceeded reply differs",
            v.name
        );

        // The reply itself decodes: time exceeded quoting the start of the original.
        let reply = icmp::parse(&out[..n]).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let IcmpMessage::TimeExceeded { rest, original: q } = reply.message() else {
            panic!("{}: reply is not time exceeded", v.name);
        };
        assert_eq!(rest, 0);
        assert!(input.starts_with(q), "{}: quote is not a prefix", v.name);
        assert_eq!(reply.ttl(), 255);
        assert_eq!(reply.dst(), original.src());
        seen += 1;
    }
    assert!(seen >= 4, "vector file shrank");
}

#[test]
fn echo_vectors_encode_exactly_and_decode_to_their_fields() {
    let mut seen = 0;
    for v in icmp_vectors()
        .vectors
        .iter()
        .filter(|v| v.kind == "icmp.encode")
    {
        let data = v.str_field("data").as_bytes();
        let echo = echo_of(v, data);
        let mut out = [0u8; 2048];
        let n = icmp::write_echo(&echo, &mut out).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            hex::encode(&out[..n]),
            v.hex.as_deref().unwrap(),
            "{}",
            v.name
        );

        let bytes = v.bytes();
        let p = icmp::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(p.src(), echo.src, "{}", v.name);
        assert_eq!(p.dst(), echo.dst, "{}", v.name);
        assert_eq!(p.ttl(), echo.ttl, "{}", v.name);
        assert_eq!(p.version(), IpVersion::of(echo.src), "{}", v.name);
        assert_eq!(
            p.message(),
            IcmpMessage::EchoRequest {
                id: echo.id,
                seq: echo.seq,
                data
            },
            "{}",
            v.name
        );
        seen += 1;
    }
    assert!(seen >= 2, "vector file shrank");
}

#[test]
fn every_vector_kind_is_known() {
    for v in &icmp_vectors().vectors {
        assert!(
            matches!(v.kind.as_str(), "icmp.ttl_exceeded" | "icmp.encode"),
            "{}: unexpected kind {}",
            v.name,
            v.kind
        );
    }
}

#[test]
fn decoded_forms_snapshot() {
    let mut out = String::new();
    for v in &icmp_vectors().vectors {
        let packets: Vec<(&str, Vec<u8>)> = match v.kind.as_str() {
            "icmp.ttl_exceeded" => vec![
                ("input", hex_field(v, "input_hex")),
                ("reply", hex_field(v, "expected_hex")),
            ],
            _ => vec![("packet", v.bytes())],
        };
        for (role, bytes) in packets {
            let rendered = match icmp::parse(&bytes) {
                Ok(p) => render(&p),
                Err(e) => format!("error: {e}"),
            };
            writeln!(out, "{} {role}: {rendered}", v.name).unwrap();
        }
    }
    insta::assert_snapshot!(out);
}

/// One line per packet, long byte strings shortened.
fn render(p: &IcmpPacket<'_>) -> String {
    let short = |b: &[u8]| {
        if b.len() > 16 {
            format!("{}.. ({} bytes)", hex::encode(&b[..16]), b.len())
        } else {
            hex::encode(b)
        }
    };
    let msg = match p.message() {
        IcmpMessage::EchoRequest { id, seq, data } => {
            format!(
                "EchoRequest {{ id: {id:#06x}, seq: {seq}, data: {} }}",
                short(data)
            )
        }
        IcmpMessage::EchoReply { id, seq, data } => {
            format!(
                "EchoReply {{ id: {id:#06x}, seq: {seq}, data: {} }}",
                short(data)
            )
        }
        IcmpMessage::TimeExceeded { rest, original } => format!(
            "TimeExceeded {{ rest: {rest:#010x}, original: {} }}",
            short(original)
        ),
        IcmpMessage::DestinationUnreachable { rest, original } => format!(
            "DestinationUnreachable {{ rest: {rest:#010x}, original: {} }}",
            short(original)
        ),
        IcmpMessage::Other {
            icmp_type,
            code,
            body,
        } => format!(
            "Other {{ type: {icmp_type}, code: {code}, body: {} }}",
            short(body)
        ),
    };
    format!(
        "{} {} -> {} ttl {} proto {} type {} code {} csum {:#06x} len {} {msg}",
        p.version(),
        p.src(),
        p.dst(),
        p.ttl(),
        p.protocol(),
        p.icmp_type(),
        p.code(),
        p.checksum(),
        p.ip_packet().len(),
    )
}
