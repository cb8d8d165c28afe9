//! Property tests for the data-stream `ConnectRequest` / `ConnectResponse` codec: decode ∘ encode
//! is the identity, any bytes decode or fail without panicking, and frame limits hold from the
//! header alone.

use burrow_core::rpc::frame::{frame_len, FrameError, FrameLimits};
use burrow_core::stream::connect::{
    decode_connect_request, decode_connect_response, ConnectRequest, ConnectRequestReader,
    ConnectResponse, ConnectResponseReader, ConnectionType, Metadata, UnknownConnectionType,
};
use burrow_core::stream::preamble::{self, StreamKind, DATA_PREAMBLE_LEN};
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits::CONNECT_REQUEST;

fn connection_type() -> impl Strategy<Value = ConnectionType> {
    prop_oneof![
        Just(ConnectionType::Http),
        Just(ConnectionType::WebSocket),
        Just(ConnectionType::Tcp),
    ]
}

/// Any unicode, often empty, sometimes long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "[ -~]{0,300}",
        "\\PC{0,40}",
    ]
}

fn metadata() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..24)
}

fn borrow(md: &[(String, String)]) -> Vec<Metadata<'_>> {
    md.iter().map(|(key, val)| Metadata { key, val }).collect()
}

fn owned_metadata<'a>(
    it: impl Iterator<Item = Result<Metadata<'a>, burrow_core::rpc::frame::DecodeError>>,
) -> Vec<(String, String)> {
    it.map(|m| {
        let m = m.expect("metadata entry");
        (m.key.to_owned(), m.val.to_owned())
    })
    .collect()
}

/// Reads every accessor of a decoded request (what a fuzzer or a careless caller would do).
fn walk_request(r: &ConnectRequestReader<'_>) {
    let _ = r.dest();
    let _ = r.raw_type();
    let _ = r.connection_type();
    for m in r.metadata() {
        let _ = m.map(|m| (m.key.len(), m.val.len()));
    }
    let _ = format!("{r:?}");
}

fn walk_response(r: &ConnectResponseReader<'_>) {
    let _ = r.error();
    for m in r.metadata() {
        let _ = m.map(|m| (m.key.len(), m.val.len()));
    }
    let _ = format!("{r:?}");
}

/// The number of segments a frame declares (cloudflared and we write one).
fn segments(frame: &[u8]) -> u32 {
    u32::from_le_bytes(frame[..4].try_into().unwrap()) + 1
}

proptest! {
    #[test]
    fn request_round_trips(
        dest in text(),
        t in connection_type(),
        md in metadata(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let entries = borrow(&md);
        let req = ConnectRequest { dest: &dest, connection_type: t, metadata: &entries };
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        let msg_len = out.len() - DATA_PREAMBLE_LEN;
        out.extend_from_slice(&body);

        let kind = preamble::parse(&out).unwrap().unwrap();
        prop_assert!(matches!(kind, StreamKind::Data { .. }), "data stream");
        let rest = &out[kind.preamble_len()..];
        prop_assert_eq!(segments(rest), 1);
        prop_assert_eq!(frame_len(rest, &LIMITS).unwrap(), Some(msg_len));

        let (r, n) = decode_connect_request(rest, &LIMITS).unwrap().unwrap();
        prop_assert_eq!(n, msg_len);
        prop_assert_eq!(&rest[n..], &body[..]);
        prop_assert_eq!(r.dest().unwrap(), dest.as_str());
        prop_assert_eq!(r.connection_type(), Ok(t));
        prop_assert_eq!(r.raw_type(), t.wire());
        prop_assert_eq!(&owned_metadata(r.metadata()), &md);

        // encode_body is encode without the preamble.
        let mut body_only = Vec::new();
        req.encode_body(&mut body_only).unwrap();
        prop_assert_eq!(&body_only[..], &out[DATA_PREAMBLE_LEN..DATA_PREAMBLE_LEN + msg_len]);
    }

    #[test]
    fn response_round_trips(error in text(), md in metadata()) {
        let entries = borrow(&md);
        let mut out = Vec::new();
        ConnectResponse { error: &error, metadata: &entries }.encode(&mut out).unwrap();
        let rest = &out[DATA_PREAMBLE_LEN..];
        prop_assert_eq!(segments(rest), 1);
        let (r, n) = decode_connect_response(rest, &LIMITS).unwrap().unwrap();
        prop_assert_eq!(n, rest.len());
        prop_assert_eq!(r.error().unwrap(), error.as_str());
        prop_assert_eq!(&owned_metadata(r.metadata()), &md);
    }

    #[test]
    fn unknown_connection_types_decode(raw in 3u16.., dest in text()) {
        let mut out = Vec::new();
        ConnectRequest { dest: &dest, connection_type: ConnectionType::Tcp, metadata: &[] }
            .encode_body(&mut out)
            .unwrap();
        // The type is the first data word of the root struct: 8 (table) + 8 (root pointer).
        out[16..18].copy_from_slice(&raw.to_le_bytes());
        let (r, _) = decode_connect_request(&out, &LIMITS).unwrap().unwrap();
        prop_assert_eq!(r.raw_type(), raw);
        prop_assert_eq!(r.connection_type(), Err(UnknownConnectionType(raw)));
        prop_assert_eq!(r.dest().unwrap(), dest.as_str());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame_len(&bytes, &LIMITS);
        if let Ok(Some((r, n))) = decode_connect_request(&bytes, &LIMITS) {
            prop_assert!(n <= bytes.len());
            walk_request(&r);
        }
        if let Ok(Some((r, n))) = decode_connect_response(&bytes, &LIMITS) {
            prop_assert!(n <= bytes.len());
            walk_response(&r);
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        dest in text(),
        md in metadata(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let entries = borrow(&md);
        let mut out = Vec::new();
        ConnectRequest { dest: &dest, connection_type: ConnectionType::Http, metadata: &entries }
            .encode_body(&mut out)
            .unwrap();
        for (at, byte) in edits {
            let i = at.index(out.len());
            out[i] = byte;
        }
        if let Ok(Some((r, _))) = decode_connect_request(&out, &LIMITS) {
            walk_request(&r);
        }
        if let Ok(Some((r, _))) = decode_connect_response(&out, &LIMITS) {
            walk_response(&r);
        }
    }

    #[test]
    fn oversized_frames_fail_from_the_header(
        count in 1u32..=8,
        sizes in proptest::collection::vec(any::<u32>(), 8),
        max_bytes in 8usize..4096,
    ) {
        let sizes = &sizes[..count as usize];
        let mut header = (count - 1).to_le_bytes().to_vec();
        for s in sizes {
            header.extend_from_slice(&s.to_le_bytes());
        }
        if count % 2 == 0 {
            header.extend_from_slice(&[0; 4]);
        }
        let total = header.len() as u64 + sizes.iter().map(|&s| u64::from(s) * 8).sum::<u64>();
        let limits = LIMITS.with_max_bytes(max_bytes);
        // Only the header is given: a frame over the limit is refused, one under it waits.
        let got = frame_len(&header, &limits);
        if total > max_bytes as u64 {
            prop_assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{got:?}");
            prop_assert!(decode_connect_request(&header, &limits).is_err());
        } else if total > header.len() as u64 {
            prop_assert_eq!(got, Ok(None));
        }
    }

    #[test]
    fn too_many_segments_fail_from_four_bytes(count in 512u32..) {
        let first = (count - 1).to_le_bytes();
        prop_assert!(
            matches!(frame_len(&first, &LIMITS), Err(FrameError::TooManySegments { .. })),
            "segment count {}", count
        );
    }
}

#[test]
fn requests_over_the_limit_are_refused_without_reading_the_segments() {
    let md = [Metadata {
        key: "HttpHeader:X-Big",
        val: &"x".repeat(4096),
    }];
    let mut out = Vec::new();
    ConnectRequest {
        dest: "/",
        connection_type: ConnectionType::Http,
        metadata: &md,
    }
    .encode_body(&mut out)
    .unwrap();
    let small = LIMITS.with_max_bytes(1024);
    // The first 8 bytes (the segment table) suffice.
    assert!(matches!(
        decode_connect_request(&out[..8], &small),
        Err(burrow_core::rpc::frame::DecodeError::Frame(
            FrameError::TooLarge { .. }
        ))
    ));
    assert!(decode_connect_request(&out, &LIMITS).unwrap().is_some());
}

#[test]
fn null_and_empty_text_read_the_same() {
    // A ConnectResponse whose error is an explicit empty text (just the NUL), not null.
    let bytes: [u8; 40] = [
        0, 0, 0, 0, 4, 0, 0, 0, // one segment of four words
        0, 0, 0, 0, 0, 0, 2, 0, // root: struct, 0 data, 2 pointers
        5, 0, 0, 0, 10, 0, 0, 0, // error: byte list of 1, at word 3
        0, 0, 0, 0, 0, 0, 0, 0, // metadata: null
        0, 0, 0, 0, 0, 0, 0, 0, // the text: its NUL
    ];
    let (r, n) = decode_connect_response(&bytes, &LIMITS).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(r.error().unwrap(), "");
    assert_eq!(r.metadata().count(), 0);
}

/// A `ConnectRequest` whose `entries` metadata keys all point at one shared text of `text_len`
/// bytes: small on the wire, expensive to walk.
fn aliased_metadata(entries: u32, text_len: u32) -> Vec<u8> {
    let word = |lo: u32, hi: u32| [lo.to_le_bytes(), hi.to_le_bytes()].concat();
    let text_words = text_len.div_ceil(8);
    let text_at = 5 + 2 * entries;
    let mut seg = Vec::new();
    seg.extend(word(0, 2 << 16 | 1)); // root: struct at word 1, 1 data word, 2 pointers
    seg.extend(word(0, 0)); // type http
    seg.extend(word(0, 0)); // dest: null
    seg.extend(word(1, (2 * entries) << 3 | 7)); // metadata: composite list at word 4
    seg.extend(word(entries << 2, 2 << 16)); // list tag: `entries` structs of 0 data, 2 pointers
    for i in 0..entries {
        let key_at = 5 + 2 * i;
        let offset = text_at - (key_at + 1);
        seg.extend(word(offset << 2 | 1, text_len << 3 | 2)); // key: the shared text
        seg.extend(word(0, 0)); // val: null
    }
    seg.extend(vec![b'k'; text_len as usize - 1]);
    seg.resize(seg.len() + (text_words * 8 - (text_len - 1)) as usize, 0);
    let mut frame = word(0, text_at + text_words);
    frame.extend(seg);
    frame
}

#[test]
fn aliased_pointers_cannot_amplify_work() {
    // 2,000 keys sharing one 8 KiB text: 40 KiB on the wire, 16 MiB to walk.
    let frame = aliased_metadata(2000, 8192);
    assert_eq!(frame_len(&frame, &LIMITS), Ok(Some(frame.len())));
    let err = decode_connect_request(&frame, &LIMITS).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    // Sharing a little is legal and reads fine.
    let small = aliased_metadata(3, 64);
    let (r, _) = decode_connect_request(&small, &LIMITS).unwrap().unwrap();
    assert_eq!(r.metadata().count(), 3);
    assert_eq!(r.metadata().next().unwrap().unwrap().key, "k".repeat(63));
}

#[test]
fn a_reader_can_be_read_many_times() {
    let md = [
        Metadata {
            key: "HttpMethod",
            val: "GET",
        },
        Metadata {
            key: "HttpHost",
            val: "example.com",
        },
    ];
    let mut out = Vec::new();
    ConnectRequest {
        dest: "http://example.com/",
        connection_type: ConnectionType::Http,
        metadata: &md,
    }
    .encode_body(&mut out)
    .unwrap();
    let (r, _) = decode_connect_request(&out, &LIMITS).unwrap().unwrap();
    for _ in 0..200 {
        assert_eq!(r.dest().unwrap(), "http://example.com/");
        assert_eq!(r.metadata().filter(Result::is_ok).count(), 2);
    }
}
