//! ConnectRequest / ConnectResponse against cloudflared 2026.8.2's own bytes.

use std::fmt::Write as _;

use burrow_core::rpc::frame::FrameLimits;
use burrow_core::stream::connect::{
    decode_connect_request, decode_connect_response, ConnectRequest, ConnectResponse,
    ConnectionType, Metadata,
};
use burrow_core::stream::preamble::{self, StreamKind, DATA_PREAMBLE_LEN, DATA_STREAM_VERSION};
use burrow_testvectors::{connect_stream, Vector};

/// The vector's metadata entries as (key, val) pairs, in order.
fn metadata_fields(v: &Vector) -> Vec<(String, String)> {
    v.fields["metadata"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: metadata missing", v.name))
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().expect("metadata key/val").to_owned();
            (s("key"), s("val"))
        })
        .collect()
}

fn borrow(md: &[(String, String)]) -> Vec<Metadata<'_>> {
    md.iter().map(|(key, val)| Metadata { key, val }).collect()
}

fn connection_type(v: &Vector) -> ConnectionType {
    let t = ConnectionType::from_wire(v.u64_field("type_value").try_into().expect("u16"))
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    assert_eq!(t.as_str(), v.str_field("type"), "{}", v.name);
    t
}

/// Checks the preamble and returns the message bytes after it.
fn body(v: &Vector, bytes: &[u8]) -> Vec<u8> {
    assert_eq!(
        preamble::parse(bytes),
        Ok(Some(StreamKind::Data {
            version: DATA_STREAM_VERSION
        })),
        "{}",
        v.name
    );
    bytes[DATA_PREAMBLE_LEN..].to_vec()
}

/// Decodes a request vector, checks it against its fields and returns a printable form.
fn check_request(v: &Vector, bytes: &[u8]) -> String {
    let (r, n) = decode_connect_request(bytes, &FrameLimits::CONNECT_REQUEST)
        .unwrap_or_else(|e| panic!("{}: {e}", v.name))
        .unwrap_or_else(|| panic!("{}: incomplete", v.name));
    assert_eq!(n, bytes.len(), "{}: consumed", v.name);
    assert_eq!(r.dest().unwrap(), v.str_field("dest"), "{}", v.name);
    assert_eq!(r.raw_type(), v.u64_field("type_value") as u16, "{}", v.name);
    assert_eq!(r.connection_type(), Ok(connection_type(v)), "{}", v.name);
    let got: Vec<(String, String)> = r
        .metadata()
        .map(|m| m.map(|m| (m.key.to_owned(), m.val.to_owned())))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    assert_eq!(got, metadata_fields(v), "{}", v.name);
    format!(
        "request dest={:?} type={} metadata={got:?}",
        r.dest().unwrap(),
        r.connection_type().unwrap()
    )
}

/// Decodes a response vector, checks it against its fields and returns a printable form.
fn check_response(v: &Vector, bytes: &[u8]) -> String {
    let (r, n) = decode_connect_response(bytes, &FrameLimits::CONNECT_REQUEST)
        .unwrap_or_else(|e| panic!("{}: {e}", v.name))
        .unwrap_or_else(|| panic!("{}: incomplete", v.name));
    assert_eq!(n, bytes.len(), "{}: consumed", v.name);
    assert_eq!(r.error().unwrap(), v.str_field("error"), "{}", v.name);
    let got: Vec<(String, String)> = r
        .metadata()
        .map(|m| m.map(|m| (m.key.to_owned(), m.val.to_owned())))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    assert_eq!(got, metadata_fields(v), "{}", v.name);
    format!("response error={:?} metadata={got:?}", r.error().unwrap())
}

/// Encodes the vector's fields with our encoder (preamble included).
fn encode(v: &Vector) -> Vec<u8> {
    let md = metadata_fields(v);
    let md = borrow(&md);
    let mut out = Vec::new();
    match v.kind.as_str() {
        "stream.connect_request" => ConnectRequest {
            dest: v.str_field("dest"),
            connection_type: connection_type(v),
            metadata: &md,
        }
        .encode(&mut out),
        "stream.connect_response" => ConnectResponse {
            error: v.str_field("error"),
            metadata: &md,
        }
        .encode(&mut out),
        other => panic!("{}: unexpected kind {other}", v.name),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    out
}

fn check(v: &Vector, bytes: &[u8]) -> String {
    let body = body(v, bytes);
    match v.kind.as_str() {
        "stream.connect_request" => check_request(v, &body),
        "stream.connect_response" => check_response(v, &body),
        other => panic!("{}: unexpected kind {other}", v.name),
    }
}

#[test]
fn every_vector_decodes_to_exactly_its_fields() {
    let file = connect_stream();
    assert_eq!(file.vectors.len(), 10, "vector file changed");
    for v in &file.vectors {
        check(v, &v.bytes());
    }
}

#[test]
fn every_vector_encodes_to_exactly_its_bytes() {
    for v in &connect_stream().vectors {
        let ours = encode(v);
        // Whatever the bytes, ours must read back to the same fields.
        check(v, &ours);
        assert_eq!(hex::encode(&ours), hex::encode(v.bytes()), "{}", v.name);
    }
}

#[test]
fn partial_frames_wait_and_body_bytes_are_left_alone() {
    for v in &connect_stream().vectors {
        let bytes = v.bytes();
        let body = &bytes[DATA_PREAMBLE_LEN..];
        for cut in 0..body.len() {
            let partial = &body[..cut];
            let waiting = match v.kind.as_str() {
                "stream.connect_request" => {
                    decode_connect_request(partial, &FrameLimits::CONNECT_REQUEST)
                        .map(|r| r.is_none())
                }
                _ => decode_connect_response(partial, &FrameLimits::CONNECT_REQUEST)
                    .map(|r| r.is_none()),
            };
            assert!(matches!(waiting, Ok(true)), "{}: cut at {cut}", v.name);
        }
        // Body bytes after the message are not consumed.
        let mut with_body = body.to_vec();
        with_body.extend_from_slice(b"GET body follows");
        let consumed = match v.kind.as_str() {
            "stream.connect_request" => {
                decode_connect_request(&with_body, &FrameLimits::CONNECT_REQUEST)
                    .unwrap()
                    .unwrap()
                    .1
            }
            _ => {
                decode_connect_response(&with_body, &FrameLimits::CONNECT_REQUEST)
                    .unwrap()
                    .unwrap()
                    .1
            }
        };
        assert_eq!(consumed, body.len(), "{}", v.name);
    }
}

#[test]
fn a_small_limit_rejects_the_frame_from_its_header() {
    for v in &connect_stream().vectors {
        let bytes = v.bytes();
        let header = &bytes[DATA_PREAMBLE_LEN..DATA_PREAMBLE_LEN + 8];
        let tiny = FrameLimits::CONNECT_REQUEST.with_max_bytes(16);
        assert!(
            decode_connect_request(header, &tiny).is_err(),
            "{}: header alone must be refused",
            v.name
        );
    }
}

#[test]
fn decoded_forms_snapshot() {
    let mut out = String::new();
    for v in &connect_stream().vectors {
        writeln!(out, "{}: {}", v.name, check(v, &v.bytes())).unwrap();
    }
    insta::assert_snapshot!(out);
}
