//! Property tests for the HTTP/1.1 origin codec and the data-stream proxy: chunked bodies
//! de-chunk to what was chunked however they are split, response heads parse back to what was
//! written, any `ConnectRequest` becomes a request head httparse accepts or a clean error, and
//! arbitrary bytes from either side never panic or outgrow the window.

use burrow_core::rpc::frame::FrameLimits;
use burrow_core::stream::connect::{
    decode_connect_request, ConnectRequest, ConnectionType, Metadata,
};
use burrow_core::stream::http1::{
    self, canonical, parse_response, write_chunk, write_request, BodyReader, Framing, LAST_CHUNK,
};
use burrow_core::stream::proxy::DataStream;
use proptest::prelude::*;

/// Feeds `wire` to a body reader in pieces cut at `cuts`, as a socket would deliver it.
fn dechunk(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), http1::ResponseError> {
    let mut reader = BodyReader::new(Framing::Chunked);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut offset = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        let cut = cut.clamp(offset, wire.len());
        pending.extend_from_slice(&wire[offset..cut]);
        offset = cut;
        let used = reader.read(&pending, &mut out, usize::MAX)?;
        pending.drain(..used);
    }
    Ok((out, reader.is_done() && pending.is_empty()))
}

proptest! {
    #[test]
    fn chunked_bodies_round_trip(
        pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        mut cuts in proptest::collection::vec(0usize..4000, 0..10),
    ) {
        let mut wire = Vec::new();
        for p in &pieces {
            write_chunk(&mut wire, p);
        }
        wire.extend_from_slice(LAST_CHUNK);
        cuts.sort_unstable();
        let (body, done) = dechunk(&wire, &cuts).expect("our chunking reads back");
        prop_assert!(done);
        prop_assert_eq!(body, pieces.concat());
    }

    #[test]
    fn arbitrary_chunked_input_never_panics(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = dechunk(&wire, &[wire.len() / 2]);
    }

    #[test]
    fn response_heads_parse_back(
        status in 200u16..600,
        headers in proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,20}", "[ -~]{0,40}"), 0..20),
    ) {
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n != "content-length" && n != "transfer-encoding" && n != "connection"
            })
            .map(|(n, v)| (n, v.trim().to_owned()))
            .collect();
        let mut head = format!("HTTP/1.1 {status} X\r\n");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("content-length: 7\r\n\r\nbody...");
        let (parsed, used) = parse_response(head.as_bytes(), false).unwrap().unwrap();
        prop_assert_eq!(used, head.len() - 7);
        prop_assert_eq!(parsed.status, status);
        let expected: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (canonical(n), v.clone()))
            .chain(std::iter::once(("Content-Length".to_owned(), "7".to_owned())))
            .collect();
        prop_assert_eq!(parsed.headers, expected);
        prop_assert!(parsed.keep_alive);
        let body_expected = if status == 204 || status == 304 { Framing::Empty } else { Framing::Length(7) };
        prop_assert_eq!(parsed.body, body_expected);
    }

    #[test]
    fn any_request_becomes_a_valid_head_or_an_error(
        dest in prop_oneof![Just("/".to_owned()), "\\PC{0,40}", "http://[a-z]{1,10}/[ -~]{0,30}"],
        metadata in proptest::collection::vec(
            (prop_oneof![
                Just("HttpMethod".to_owned()),
                Just("HttpHost".to_owned()),
                "HttpHeader:[ -~]{0,20}",
                "\\PC{0,20}",
            ], "\\PC{0,30}"),
            0..12,
        ),
        websocket in any::<bool>(),
        host_header in proptest::option::of("\\PC{0,20}"),
        disable_chunked_encoding in any::<bool>(),
    ) {
        // originRequest options never make a head unparsable: a bad override is refused.
        let options = http1::RequestOptions { host_header: host_header.as_deref(), disable_chunked_encoding, tags: &[] };
        let md: Vec<Metadata<'_>> = metadata.iter().map(|(key, val)| Metadata { key, val }).collect();
        let mut buf = Vec::new();
        ConnectRequest { dest: &dest, connection_type: ConnectionType::Http, metadata: &md }
            .encode_body(&mut buf)
            .unwrap();
        let (req, _) = decode_connect_request(&buf, &FrameLimits::CONNECT_REQUEST).unwrap().unwrap();
        let mut out = Vec::new();
        if write_request(&req, websocket, &options, &mut out).is_ok() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            let status = parsed.parse(&out);
            prop_assert!(
                matches!(status, Ok(httparse::Status::Complete(n)) if n == out.len()),
                "{:?} for {:?}", status, String::from_utf8_lossy(&out)
            );
        } else {
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn proxy_takes_any_bytes_within_its_window(
        edge in proptest::collection::vec(any::<u8>(), 0..400),
        origin in proptest::collection::vec(any::<u8>(), 0..400),
        step in 1usize..64,
    ) {
        const WINDOW: usize = 128;
        let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
        let mut rest = &edge[..];
        while !rest.is_empty() && s.edge_room() > 0 {
            let n = rest.len().min(step).min(s.edge_room());
            if s.on_edge_data(&rest[..n]).is_err() {
                return Ok(());
            }
            rest = &rest[n..];
            s.to_origin().clear();
        }
        s.on_origin_connected();
        let mut rest = &origin[..];
        loop {
            let n = s.on_origin_data(&rest[..rest.len().min(step)]);
            rest = &rest[n..];
            prop_assert!(s.to_edge().len() <= WINDOW + 2 * origin.len() + 64);
            s.to_edge().clear();
            if n == 0 {
                break;
            }
        }
        s.on_origin_finished();
        s.on_edge_finished();
        // Once both sides are done, the stream always knows how it ends.
        prop_assert!(s.edge_end().is_some());
    }
}
