//! The control-stream state machines against cloudflared's own conversation: our connector,
//! fed the edge's bytes from the transcript, must write exactly cloudflared's connector bytes;
//! our edge, fed cloudflared's connector bytes, must write exactly the edge's bytes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use burrow_core::control::connector::{ControlClient, ControlEvent, RpcCall, RpcMethod};
use burrow_core::control::edge::{ControlServer, EdgeControlEvent};
use burrow_core::control::{ConnectionDetails, Registration};
use burrow_core::rpc::frame::{frame_len, FrameLimits};
use burrow_testvectors::control_stream;
use uuid::Uuid;

const LOCAL_CONFIG: &[u8] = br#"{"ingress":[{"service":"http_status:404"}]}"#;
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// The registration cloudflared sent in the transcript.
fn registration() -> Registration {
    Registration {
        account_tag: "0123456789abcdef0123456789abcdef".into(),
        tunnel_secret: vec![0x42; 32],
        tunnel_id: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee".parse().unwrap(),
        conn_index: 0,
        client_id: "01234567-89ab-4cde-8f01-23456789abcd".parse().unwrap(),
        features: vec![
            "serialized_headers".into(),
            "support_datagram_v3_2".into(),
            "management_logs".into(),
        ],
        version: "2026.8.2".into(),
        arch: "linux_amd64".into(),
        origin_local_ip: Some("192.0.2.10".parse::<IpAddr>().unwrap()),
        replace_existing: false,
        compression_quality: 0,
        num_previous_attempts: 0,
    }
}

fn details() -> ConnectionDetails {
    ConnectionDetails {
        uuid: Uuid::parse_str("11111111-2222-4333-8444-555555555555").unwrap(),
        location: "SJC".into(),
        remotely_managed: false,
    }
}

fn stream(key: &str) -> Vec<u8> {
    let file = control_stream();
    hex::decode(file.vectors[0].fields[key].as_str().unwrap()).unwrap()
}

/// Splits a stream into its frames.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = frame_len(rest, &FrameLimits::RPC)
            .unwrap()
            .expect("whole frame");
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

fn drain(c: &mut ControlClient) -> Vec<u8> {
    c.poll_transmit().unwrap_or_default()
}

#[test]
fn our_connector_writes_cloudflareds_bytes_given_the_edges_replies() {
    let now = Instant::now();
    let edge = frames(&stream("edge_to_connector_hex"));
    assert_eq!(
        edge.len(),
        4,
        "bootstrap, register, config and unregister returns"
    );
    let mut c = ControlClient::new(
        now,
        &registration(),
        Some(LOCAL_CONFIG.to_vec()),
        RPC_TIMEOUT,
    )
    .unwrap();
    let mut wrote = drain(&mut c);

    c.handle_bytes(now, &edge[0]).unwrap();
    c.handle_bytes(now, &edge[1]).unwrap();
    // Each call's count (cloudflared's RPC client metrics) comes before its outcome.
    let called = |method| {
        Some(ControlEvent::Called(RpcCall {
            method,
            latency: Duration::ZERO,
            failed: false,
        }))
    };
    assert_eq!(c.poll_event(), called(RpcMethod::RegisterConnection));
    assert_eq!(c.poll_event(), Some(ControlEvent::Registered(details())));
    wrote.extend(drain(&mut c));
    c.handle_bytes(now, &edge[2]).unwrap();
    assert_eq!(c.poll_event(), called(RpcMethod::UpdateLocalConfiguration));
    assert_eq!(
        c.poll_event(),
        Some(ControlEvent::LocalConfigurationAccepted)
    );
    wrote.extend(drain(&mut c));

    c.unregister(now, Duration::from_secs(30)).unwrap();
    wrote.extend(drain(&mut c));
    c.handle_bytes(now, &edge[3]).unwrap();
    assert_eq!(c.poll_event(), called(RpcMethod::UnregisterConnection));
    assert_eq!(c.poll_event(), Some(ControlEvent::Unregistered));
    wrote.extend(drain(&mut c));
    assert_eq!(c.poll_event(), None);

    assert_eq!(
        hex::encode(&wrote),
        hex::encode(stream("connector_to_edge_hex"))
    );
}

#[test]
fn our_edge_writes_cloudflare_edge_bytes_given_cloudflareds_calls() {
    let mut s = ControlServer::new();
    let mut wrote = Vec::new();
    let mut events = Vec::new();
    for frame in frames(&stream("connector_to_edge_hex")) {
        s.handle_bytes(&frame).unwrap();
        while let Some(e) = s.poll_event() {
            if let EdgeControlEvent::RegisterRequested(r) = &e {
                assert_eq!(r, &registration());
                s.respond_registration(Ok(details())).unwrap();
            }
            events.push(e);
        }
        wrote.extend(s.poll_transmit().unwrap_or_default());
    }
    assert_eq!(
        events,
        vec![
            EdgeControlEvent::RegisterRequested(registration()),
            EdgeControlEvent::LocalConfiguration(LOCAL_CONFIG.to_vec()),
            EdgeControlEvent::Unregistered,
        ]
    );
    assert_eq!(
        hex::encode(&wrote),
        hex::encode(stream("edge_to_connector_hex"))
    );
}
