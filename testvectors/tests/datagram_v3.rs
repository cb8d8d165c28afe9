//! Datagram v3 against cloudflared 2026.8.2's own bytes.

use std::net::SocketAddr;

use burrow_core::datagram::v3::{self, Datagram, DecodeError, RequestId, ResponseCode};
use burrow_testvectors::{v3_datagrams, v3_decode_behaviour, Vector};

fn request_id(v: &Vector) -> RequestId {
    v.str_field("request_id").parse().expect("request id")
}

fn hex_field(v: &Vector, key: &str) -> Vec<u8> {
    hex::decode(v.str_field(key)).expect("hex field")
}

/// Builds the datagram the vector's fields describe (borrowing `bufs` for payloads).
fn from_fields<'a>(v: &Vector, payload: &'a [u8], msg: &'a str) -> Datagram<'a> {
    match v.kind.as_str() {
        "v3.registration" => Datagram::Registration(v3::Registration {
            request_id: request_id(v),
            dest: v.str_field("dest").parse::<SocketAddr>().expect("dest"),
            traced: v.fields["traced"].as_bool().expect("traced"),
            idle_hint_secs: v.u64_field("idle_hint_secs").try_into().expect("u16"),
            payload,
        }),
        "v3.payload" => Datagram::Payload(v3::Payload {
            request_id: request_id(v),
            payload,
        }),
        "v3.registration_response" => Datagram::RegistrationResponse(v3::RegistrationResponse {
            request_id: request_id(v),
            code: ResponseCode::from_u8(v.u64_field("response_type").try_into().expect("u8")),
            error_msg: msg,
        }),
        "v3.icmp" => Datagram::Icmp(v3::Icmp { packet: payload }),
        other => panic!("{}: unexpected kind {other}", v.name),
    }
}

fn payload_of(v: &Vector) -> Vec<u8> {
    match v.kind.as_str() {
        "v3.icmp" => hex_field(v, "packet_hex"),
        "v3.registration_response" => Vec::new(),
        _ => hex_field(v, "payload_hex"),
    }
}

#[test]
fn every_v3_vector_encodes_to_exactly_its_bytes() {
    let file = v3_datagrams();
    assert!(file.vectors.len() >= 17, "vector file shrank");
    for v in &file.vectors {
        let payload = payload_of(v);
        let msg = v.fields["error_msg"].as_str().unwrap_or("");
        let d = from_fields(v, &payload, msg);
        let mut out = [0u8; 2048];
        let n = d
            .encode(&mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            hex::encode(&out[..n]),
            v.hex.as_deref().unwrap(),
            "{}",
            v.name
        );
        assert_eq!(n, d.encoded_len(), "{}", v.name);
    }
}

#[test]
fn every_v3_vector_decodes_to_exactly_its_fields() {
    for v in &v3_datagrams().vectors {
        let bytes = v.bytes();
        let payload = payload_of(v);
        let msg = v.fields["error_msg"].as_str().unwrap_or("");
        let want = from_fields(v, &payload, msg);
        let got = v3::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got, want, "{}", v.name);
    }
}

/// What we return where cloudflared errored or panicked: a typed error, named per vector.
fn expected_error(name: &str) -> DecodeError {
    match name {
        "response_errlen_too_big" => DecodeError::ResponseMsgTooLong(0xffff),
        "unknown_type_0x04" => DecodeError::UnknownType(0x04),
        "unknown_type_0xff" => DecodeError::UnknownType(0xff),
        "empty" => DecodeError::Empty,
        "type_only_registration" => DecodeError::RegistrationTooShort { len: 1, need: 26 },
        "registration_truncated_10" => DecodeError::RegistrationTooShort { len: 10, need: 26 },
        "registration_v6_flag_short" => DecodeError::RegistrationTooShort { len: 30, need: 38 },
        "payload_type_only" => DecodeError::PayloadInvalidSize(1),
        "payload_too_large" => DecodeError::PayloadInvalidSize(1298),
        "icmp_empty" => DecodeError::IcmpMissing,
        "payload_header_15" => DecodeError::PayloadInvalidSize(16),
        "response_short" => DecodeError::ResponseTooShort(5),
        // Declares 16 bytes of message, carries "short".
        "response_errlen_overflow" => DecodeError::ResponseMsgTruncated {
            declared: 16,
            available: 5,
        },
        other => panic!("no expectation recorded for vector {other}"),
    }
}

#[test]
fn cloudflared_errors_and_panics_are_typed_errors_here() {
    let file = v3_decode_behaviour();
    for v in &file.vectors {
        let bytes = v.bytes();
        let result = v.result.as_deref().expect("result");
        let got = v3::decode(&bytes);
        if result == "ok" {
            let d = got.unwrap_or_else(|e| panic!("{}: cloudflared accepts, we said {e}", v.name));
            let Datagram::Registration(r) = d else {
                panic!("{}: expected a registration, got {d:?}", v.name)
            };
            assert_eq!(r.dest.to_string(), v.str_field("dest"), "{}", v.name);
            assert_eq!(r.request_id.to_string(), v.str_field("request_id"));
            assert_eq!(u64::from(r.idle_hint_secs), v.u64_field("idle_hint_secs"));
            assert_eq!(hex::encode(r.payload), v.str_field("payload_hex"));
            assert_eq!(r.traced, v.fields["traced"].as_bool().unwrap());
            continue;
        }
        let err = got.expect_err(&format!(
            "{}: cloudflared says {result}, we accepted",
            v.name
        ));
        assert_eq!(
            err,
            expected_error(&v.name),
            "{} (cloudflared: {result})",
            v.name
        );
    }
}

#[test]
fn decoded_forms_snapshot() {
    let mut out = String::new();
    for v in &v3_datagrams().vectors {
        let bytes = v.bytes();
        out.push_str(&format!(
            "{}: {:?}\n",
            v.name,
            v3::decode(&bytes).map(Short)
        ));
    }
    insta::assert_snapshot!(out);
}

/// Debug form with long payloads shortened so the snapshot stays readable.
struct Short<'a>(Datagram<'a>);

impl std::fmt::Debug for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |p: &[u8]| {
            if p.len() > 16 {
                format!("{}.. ({} bytes)", hex::encode(&p[..16]), p.len())
            } else {
                hex::encode(p)
            }
        };
        match self.0 {
            Datagram::Registration(r) => write!(
                f,
                "Registration {{ id: {}, dest: {}, traced: {}, idle: {}s, payload: {} }}",
                r.request_id,
                r.dest,
                r.traced,
                r.idle_hint_secs,
                short(r.payload)
            ),
            Datagram::Payload(p) => {
                write!(
                    f,
                    "Payload {{ id: {}, payload: {} }}",
                    p.request_id,
                    short(p.payload)
                )
            }
            Datagram::Icmp(i) => write!(f, "Icmp {{ packet: {} }}", short(i.packet)),
            Datagram::RegistrationResponse(r) => write!(
                f,
                "RegistrationResponse {{ id: {}, code: {:?}, msg: {:?} }}",
                r.request_id, r.code, r.error_msg
            ),
        }
    }
}
