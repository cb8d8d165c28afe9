//! Client and server of RPC streams against each other, bytes cut at every place: the calls
//! the edge makes on the connector (per datagram version), the connector's call on the edge,
//! and cloudflared's answers to malformed session calls.

use std::net::SocketAddr;

use super::client::{Called, RpcCallOutcome, RpcStreamClient};
use super::server::{
    invalid_uuid, CallRefusal, RpcStreamEvent, RpcStreamServer, INVALID_DESTINATION_IP,
    NULL_DESTINATION_IP, V3_REFUSES_REGISTER, V3_REFUSES_UNREGISTER,
};
use super::ConfigUpdateResult;
use crate::rpc::frame::FrameLimits;
use crate::rpc::message::{decode_message, Message, ReturnBody};
use crate::rpc::method::{Empty, Method};
use crate::rpc::session::{
    self, RegisterUdpSessionRequest, RegisterUdpSessionResponse, UnregisterUdpSessionRequest,
};
use crate::session::{DatagramVersion, SessionId, SessionMethod};
use crate::stream::preamble::RPC_STREAM_SIGNATURE;

const ID: SessionId = SessionId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);

/// `registerUdpSession` with unchecked params, to send what a broken edge might.
struct RawRegister;
impl Method for RawRegister {
    const INTERFACE_ID: u64 = session::INTERFACE_ID;
    const METHOD_ID: u16 = 0;
    const NAME: &'static str = "registerUdpSession";
    type Params<'a> = RegisterUdpSessionRequest<'a>;
    type Results<'a> = RegisterUdpSessionResponse<'a>;
}

/// `unregisterUdpSession` with an unchecked session id.
struct RawUnregister;
impl Method for RawUnregister {
    const INTERFACE_ID: u64 = session::INTERFACE_ID;
    const METHOD_ID: u16 = 1;
    const NAME: &'static str = "unregisterUdpSession";
    type Params<'a> = UnregisterUdpSessionRequest<'a>;
    type Results<'a> = Empty;
}

/// Moves bytes both ways, in pieces of `chunk` bytes, until both sides are quiet; the server
/// answers registrations with `answer`. Returns the client's outcome and the server's events.
fn converse(
    client: &mut RpcStreamClient,
    server: &mut RpcStreamServer,
    chunk: usize,
    answer: Result<(), String>,
) -> (Option<RpcCallOutcome>, Vec<RpcStreamEvent>) {
    let mut events = Vec::new();
    let mut outcome = None;
    let mut signature_seen = false;
    loop {
        let mut moved = false;
        if let Some(mut bytes) = client.poll_transmit() {
            moved = true;
            if !signature_seen {
                assert_eq!(bytes[..6], RPC_STREAM_SIGNATURE, "the stream starts signed");
                bytes.drain(..6);
                signature_seen = true;
            }
            for piece in bytes.chunks(chunk) {
                server
                    .handle_bytes(piece)
                    .expect("server takes the client's bytes");
                while let Some(e) = server.poll_event() {
                    match &e {
                        RpcStreamEvent::RegisterUdpSession { .. } => {
                            server.respond_register_udp_session(answer.clone()).unwrap()
                        }
                        RpcStreamEvent::ConfigurationOffered { version, .. } => server
                            .respond_configuration(&ConfigUpdateResult {
                                latest_applied_version: *version,
                                error: None,
                            })
                            .unwrap(),
                        _ => {}
                    }
                    events.push(e);
                }
            }
        }
        if let Some(bytes) = server.poll_transmit() {
            moved = true;
            for piece in bytes.chunks(chunk) {
                client
                    .handle_bytes(piece)
                    .expect("client takes the server's bytes");
                if let Some(o) = client.poll_outcome() {
                    assert!(outcome.replace(o).is_none(), "one outcome per call");
                }
            }
        }
        if !moved {
            return (outcome, events);
        }
    }
}

fn register(dest: &str) -> RpcStreamClient {
    RpcStreamClient::register_udp_session(ID, dest.parse().unwrap(), 3_000_000_000, "").unwrap()
}

#[test]
fn v2_registration_round_trips_whatever_the_chunking() {
    for chunk in [1, 3, 7, 64, 4096] {
        for (dest, answer) in [
            ("192.0.2.7:53", Ok(())),
            ("[2001:db8::1]:443", Ok(())),
            (
                "10.99.0.1:7",
                Err("connect: network is unreachable".to_owned()),
            ),
        ] {
            let mut c = register(dest);
            let mut s = RpcStreamServer::connector(DatagramVersion::V2);
            let (outcome, events) = converse(&mut c, &mut s, chunk, answer.clone());
            assert_eq!(
                events,
                vec![RpcStreamEvent::RegisterUdpSession {
                    id: ID,
                    dest: dest.parse::<SocketAddr>().unwrap(),
                    idle_hint_nanos: 3_000_000_000,
                    trace_context: String::new(),
                }],
                "IPv4 arrives in mapped form and is read back as IPv4 ({dest})"
            );
            assert_eq!(outcome, Some(RpcCallOutcome::UdpSessionRegistered(answer)));
            assert!(s.is_settled());
        }
    }
}

#[test]
fn unregistration_is_answered_at_once_by_connector_and_edge() {
    for (name, mut s) in [
        ("connector", RpcStreamServer::connector(DatagramVersion::V2)),
        ("edge", RpcStreamServer::edge()),
    ] {
        let mut c = RpcStreamClient::unregister_udp_session(ID, "session idle for 3s").unwrap();
        let (outcome, events) = converse(&mut c, &mut s, 5, Ok(()));
        assert_eq!(
            outcome,
            Some(RpcCallOutcome::UdpSessionUnregistered),
            "{name}"
        );
        assert_eq!(
            events,
            vec![RpcStreamEvent::UnregisterUdpSession {
                id: ID,
                message: "session idle for 3s".into()
            }],
            "{name}"
        );
        assert!(s.is_settled(), "{name}");
    }
}

#[test]
fn v3_connection_refuses_session_calls_with_cloudflareds_texts() {
    let mut s = RpcStreamServer::connector(DatagramVersion::V3);
    let (outcome, events) = converse(&mut register("192.0.2.7:53"), &mut s, 4096, Ok(()));
    assert_eq!(
        outcome,
        Some(RpcCallOutcome::UdpSessionRegistered(Err(
            V3_REFUSES_REGISTER.into()
        )))
    );
    assert_eq!(
        events,
        vec![RpcStreamEvent::SessionMethodRefused(
            SessionMethod::Register
        )]
    );

    let mut s = RpcStreamServer::connector(DatagramVersion::V3);
    let mut c = RpcStreamClient::unregister_udp_session(ID, "bye").unwrap();
    let (outcome, events) = converse(&mut c, &mut s, 4096, Ok(()));
    assert_eq!(
        outcome,
        Some(RpcCallOutcome::Failed(V3_REFUSES_UNREGISTER.into()))
    );
    assert_eq!(
        events,
        vec![RpcStreamEvent::SessionMethodRefused(
            SessionMethod::Unregister
        )]
    );
    assert!(s.is_settled());
}

#[test]
fn configuration_is_served_on_both_versions_but_not_by_the_edge() {
    for version in [DatagramVersion::V2, DatagramVersion::V3] {
        let mut c = RpcStreamClient::update_configuration(4, b"{}").unwrap();
        let mut s = RpcStreamServer::connector(version);
        assert!(!s.is_settled());
        let (outcome, events) = converse(&mut c, &mut s, 9, Ok(()));
        assert_eq!(
            events,
            vec![RpcStreamEvent::ConfigurationOffered {
                version: 4,
                config: b"{}".to_vec()
            }]
        );
        assert_eq!(
            outcome,
            Some(RpcCallOutcome::Configuration(ConfigUpdateResult {
                latest_applied_version: 4,
                error: None
            }))
        );
    }
    for mut c in [
        RpcStreamClient::update_configuration(4, b"{}").unwrap(),
        register("192.0.2.7:53"),
    ] {
        let mut s = RpcStreamServer::edge();
        let (outcome, events) = converse(&mut c, &mut s, 4096, Ok(()));
        assert_eq!(
            outcome,
            Some(RpcCallOutcome::Failed("method not implemented".into()))
        );
        assert_eq!(events, vec![]);
    }
}

/// What a v2 connector answers to a raw `registerUdpSession`.
fn raw_register(
    params: RegisterUdpSessionRequest<'_>,
) -> (Option<RpcCallOutcome>, Vec<RpcStreamEvent>) {
    let mut c = RpcStreamClient::call::<RawRegister>(Called::RegisterUdpSession, &params).unwrap();
    let mut s = RpcStreamServer::connector(DatagramVersion::V2);
    let r = converse(&mut c, &mut s, 4096, Ok(()));
    assert!(s.is_settled(), "answered at once: {params:?}");
    r
}

#[test]
fn malformed_registrations_get_cloudflareds_answers() {
    let ok = RegisterUdpSessionRequest {
        session_id: &[7; 16],
        dst_ip: Some(&[192, 0, 2, 7]),
        dst_port: 53,
        close_after_idle_hint_ns: 0,
        trace_context: "",
    };
    // 4-byte addresses are taken as they are.
    let (outcome, events) = {
        let mut c = RpcStreamClient::call::<RawRegister>(Called::RegisterUdpSession, &ok).unwrap();
        let mut s = RpcStreamServer::connector(DatagramVersion::V2);
        converse(&mut c, &mut s, 4096, Ok(()))
    };
    assert_eq!(outcome, Some(RpcCallOutcome::UdpSessionRegistered(Ok(()))));
    assert!(
        matches!(&events[..], [RpcStreamEvent::RegisterUdpSession { dest, .. }] if *dest == "192.0.2.7:53".parse().unwrap())
    );

    for id_len in [0, 15, 17] {
        let id = vec![1; id_len];
        let (outcome, events) = raw_register(RegisterUdpSessionRequest {
            session_id: &id,
            ..ok
        });
        assert_eq!(outcome, Some(RpcCallOutcome::Failed(invalid_uuid(id_len))));
        // Reported (for the driver's log, which budgets it), and nothing else.
        assert_eq!(
            events,
            vec![RpcStreamEvent::CallRefused(CallRefusal::BadParams {
                method: "registerUdpSession",
                reason: invalid_uuid(id_len),
            })]
        );
    }
    assert_eq!(invalid_uuid(15), "invalid UUID (got 15 bytes)");
    let (outcome, _) = raw_register(RegisterUdpSessionRequest { dst_ip: None, ..ok });
    assert_eq!(
        outcome,
        Some(RpcCallOutcome::Failed(NULL_DESTINATION_IP.into()))
    );
    for ip in [&[][..], &[1, 2, 3], &[1; 5], &[1; 15], &[1; 17]] {
        let (outcome, events) = raw_register(RegisterUdpSessionRequest {
            dst_ip: Some(ip),
            ..ok
        });
        assert_eq!(
            outcome,
            Some(RpcCallOutcome::UdpSessionRegistered(Err(
                INVALID_DESTINATION_IP.into()
            ))),
            "{ip:?}"
        );
        assert_eq!(
            events,
            vec![RpcStreamEvent::CallRefused(CallRefusal::DestinationIp {
                error: INVALID_DESTINATION_IP
            })]
        );
    }

    let mut c = RpcStreamClient::call::<RawUnregister>(
        Called::UnregisterUdpSession,
        &UnregisterUdpSessionRequest {
            session_id: &[1; 3],
            message: "x",
        },
    )
    .unwrap();
    let mut s = RpcStreamServer::edge();
    let (outcome, events) = converse(&mut c, &mut s, 4096, Ok(()));
    assert_eq!(outcome, Some(RpcCallOutcome::Failed(invalid_uuid(3))));
    assert_eq!(
        events,
        vec![RpcStreamEvent::CallRefused(CallRefusal::BadParams {
            method: "unregisterUdpSession",
            reason: invalid_uuid(3),
        })]
    );
}

#[test]
fn the_answer_is_a_capnp_return_with_the_response_struct() {
    // Decode the server's bytes ourselves, without the client.
    let mut c = register("[2001:db8::5]:9");
    let mut s = RpcStreamServer::connector(DatagramVersion::V2);
    let bytes = c.poll_transmit().unwrap();
    s.handle_bytes(&bytes[RPC_STREAM_SIGNATURE.len()..])
        .unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(RpcStreamEvent::RegisterUdpSession { .. })
    ));
    s.respond_register_udp_session(Ok(())).unwrap();
    assert!(
        s.respond_register_udp_session(Ok(())).is_err(),
        "one answer per call"
    );
    let out = s.poll_transmit().unwrap();
    let mut rest = &out[..];
    let mut returns = Vec::new();
    while let Some((m, n)) = decode_message(rest, &FrameLimits::RPC).unwrap() {
        if let Message::Return(r) = m.message().unwrap() {
            let err = match r.body {
                ReturnBody::Results(p) if r.answer_id == 1 => Some(
                    p.results_of::<session::RegisterUdpSession>()
                        .unwrap()
                        .err
                        .to_owned(),
                ),
                _ => None,
            };
            returns.push((r.answer_id, err));
        }
        rest = &rest[n..];
    }
    assert_eq!(returns, vec![(0, None), (1, Some(String::new()))]);
}

#[test]
fn a_pending_registration_blocks_a_second_one_on_the_stream() {
    let mut s = RpcStreamServer::connector(DatagramVersion::V2);
    let first = register("192.0.2.7:53").poll_transmit().unwrap();
    s.handle_bytes(&first[RPC_STREAM_SIGNATURE.len()..])
        .unwrap();
    assert!(s.poll_event().is_some());
    assert!(!s.is_settled(), "waiting for the session manager");
    let _ = s.poll_transmit();

    let mut again = register("192.0.2.7:53");
    let second = again.poll_transmit().unwrap();
    s.handle_bytes(&second[RPC_STREAM_SIGNATURE.len()..])
        .unwrap();
    assert_eq!(s.poll_event(), None);
    again.handle_bytes(&s.poll_transmit().unwrap()).unwrap();
    assert_eq!(
        again.poll_outcome(),
        Some(RpcCallOutcome::Failed(
            "a registration is already pending".into()
        ))
    );
    assert!(!s.is_settled(), "the first one is still pending");
    s.respond_register_udp_session(Ok(())).unwrap();
    assert!(s.is_settled());
}
