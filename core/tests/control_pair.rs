//! Our connector's control stream against our edge's, with stream bytes cut at random places.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use burrow_core::control::connector::{ControlClient, ControlEvent, RpcCall, RpcMethod};
use burrow_core::control::edge::{ControlServer, EdgeControlEvent};
use burrow_core::control::{
    CallFailure, ConnectionDetails, Registration, RegistrationError, RegistrationFailure,
};
use proptest::prelude::*;
use uuid::Uuid;

fn registration(conn_index: u8) -> Registration {
    Registration {
        account_tag: "acct".into(),
        tunnel_secret: vec![7; 32],
        tunnel_id: Uuid::from_u128(1),
        conn_index,
        client_id: Uuid::from_u128(2),
        features: vec!["support_datagram_v3_2".into()],
        version: "burrow-test".into(),
        arch: "linux_amd64".into(),
        origin_local_ip: Some(IpAddr::from([127, 0, 0, 1])),
        replace_existing: false,
        compression_quality: 0,
        num_previous_attempts: 2,
    }
}

fn details(remotely_managed: bool) -> ConnectionDetails {
    ConnectionDetails {
        uuid: Uuid::from_u128(3),
        location: "LHR".into(),
        remotely_managed,
    }
}

/// Moves bytes both ways in chunks of the given sizes (cycled) until both sides are quiet;
/// the edge answers registrations with `answer`. Returns both sides' events.
fn converse(
    client: &mut ControlClient,
    server: &mut ControlServer,
    chunks: &[usize],
    answer: &Result<ConnectionDetails, RegistrationError>,
    now: Instant,
) -> (Vec<ControlEvent>, Vec<EdgeControlEvent>) {
    let mut sizes = chunks.iter().copied().cycle();
    let (mut ce, mut se) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        if let Some(bytes) = client.poll_transmit() {
            moved = true;
            for piece in split(&bytes, &mut sizes) {
                server
                    .handle_bytes(piece)
                    .expect("edge accepts our connector's bytes");
                while let Some(e) = server.poll_event() {
                    if matches!(e, EdgeControlEvent::RegisterRequested(_)) {
                        server.respond_registration(answer.clone()).unwrap();
                    }
                    se.push(e);
                }
            }
        }
        if let Some(bytes) = server.poll_transmit() {
            moved = true;
            for piece in split(&bytes, &mut sizes) {
                client
                    .handle_bytes(now, piece)
                    .expect("connector accepts our edge's bytes");
                ce.extend(std::iter::from_fn(|| client.poll_event()));
            }
        }
        if !moved {
            return (ce, se);
        }
    }
}

fn split<'a>(bytes: &'a [u8], sizes: &mut impl Iterator<Item = usize>) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The count of a call answered at once (these conversations take no time).
fn called(method: RpcMethod, failed: bool) -> ControlEvent {
    ControlEvent::Called(RpcCall {
        method,
        latency: Duration::ZERO,
        failed,
    })
}

const CONFIG: &[u8] = br#"{"ingress":[{"service":"hello_world"}]}"#;

proptest! {
    #[test]
    fn register_configure_unregister_whatever_the_chunking(
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        let now = Instant::now();
        let mut c = ControlClient::new(now, &registration(0), Some(CONFIG.to_vec()), Duration::from_secs(5)).unwrap();
        let mut s = ControlServer::new();
        let (ce, se) = converse(&mut c, &mut s, &chunks, &Ok(details(false)), now);
        prop_assert_eq!(ce, vec![
            called(RpcMethod::RegisterConnection, false),
            ControlEvent::Registered(details(false)),
            called(RpcMethod::UpdateLocalConfiguration, false),
            ControlEvent::LocalConfigurationAccepted,
        ]);
        prop_assert_eq!(se, vec![EdgeControlEvent::RegisterRequested(registration(0)), EdgeControlEvent::LocalConfiguration(CONFIG.to_vec())]);
        prop_assert!(c.is_registered());

        c.unregister(now, Duration::from_secs(30)).unwrap();
        let (ce, se) = converse(&mut c, &mut s, &chunks, &Ok(details(false)), now);
        prop_assert_eq!(ce, vec![called(RpcMethod::UnregisterConnection, false), ControlEvent::Unregistered]);
        prop_assert_eq!(se, vec![EdgeControlEvent::Unregistered]);
        prop_assert_eq!(c.poll_timeout(), None);

        c.close();
        let (_, se) = converse(&mut c, &mut s, &chunks, &Ok(details(false)), now);
        prop_assert_eq!(se, vec![EdgeControlEvent::Aborted("rpc: shutdown".into())]);
    }
}

#[test]
fn refusal_reaches_the_connector_with_cause_and_retry_hint() {
    let now = Instant::now();
    let mut c = ControlClient::new(now, &registration(1), None, Duration::from_secs(5)).unwrap();
    let mut s = ControlServer::new();
    let refusal = RegistrationError {
        cause: "EDUPCONN".into(),
        should_retry: true,
        retry_after: Duration::from_secs(3),
    };
    let (ce, _) = converse(&mut c, &mut s, &[7], &Err(refusal.clone()), now);
    assert_eq!(
        ce,
        vec![
            called(RpcMethod::RegisterConnection, true),
            ControlEvent::RegistrationFailed(RegistrationFailure::Refused(refusal.clone()))
        ]
    );
    assert!(refusal.is_duplicate_connection());
    assert!(!c.is_registered());
    assert_eq!(c.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn no_local_config_when_remotely_managed_or_not_connection_zero() {
    let now = Instant::now();
    for (index, remote) in [(0, true), (1, false)] {
        let mut c = ControlClient::new(
            now,
            &registration(index),
            Some(CONFIG.to_vec()),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut s = ControlServer::new();
        let (ce, se) = converse(&mut c, &mut s, &[1000], &Ok(details(remote)), now);
        assert_eq!(
            ce,
            vec![
                called(RpcMethod::RegisterConnection, false),
                ControlEvent::Registered(details(remote))
            ],
            "index {index}"
        );
        assert_eq!(se.len(), 1, "only the registration: {se:?}");
    }
}

#[test]
fn unregister_that_is_never_answered_times_out_at_the_grace_period() {
    let now = Instant::now();
    let mut c = ControlClient::new(now, &registration(2), None, Duration::from_secs(5)).unwrap();
    let mut s = ControlServer::new();
    converse(&mut c, &mut s, &[1000], &Ok(details(false)), now);
    c.unregister(now, Duration::from_secs(30)).unwrap();
    let _lost = c.poll_transmit();
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(30)));
    c.handle_timeout(now + Duration::from_secs(30));
    assert_eq!(
        c.poll_event(),
        Some(ControlEvent::Called(RpcCall {
            method: RpcMethod::UnregisterConnection,
            latency: Duration::from_secs(30),
            failed: true,
        }))
    );
    assert_eq!(
        c.poll_event(),
        Some(ControlEvent::UnregisterFailed(CallFailure::TimedOut))
    );
}

#[test]
fn garbage_from_the_peer_is_an_error_not_a_panic() {
    let now = Instant::now();
    let mut c = ControlClient::new(now, &registration(0), None, Duration::from_secs(5)).unwrap();
    // A frame header announcing two words that have not arrived yet: wait for them.
    assert!(c.handle_bytes(now, &[0, 0, 0, 0, 2, 0, 0, 0, 0xff]).is_ok());
    let mut s = ControlServer::new();
    assert!(s.handle_bytes(&[0xff; 16]).is_err());
}
