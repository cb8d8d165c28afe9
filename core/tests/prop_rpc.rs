//! Property tests for the RPC codec: every method's params and results survive encode → decode,
//! every RPC message we send reads back as sent, and any bytes decode or fail without panicking.

use burrow_core::rpc::configuration::{
    UpdateConfiguration, UpdateConfigurationParams, UpdateConfigurationResponse,
};
use burrow_core::rpc::frame::{DecodeError, FrameError, FrameLimits};
use burrow_core::rpc::message::{
    decode_message, encode_abort, encode_bootstrap, encode_bootstrap_return, encode_call,
    encode_exception_return, encode_finish, encode_release, encode_return, encode_unimplemented,
    CapDescriptor, Exception, ExceptionType, IncomingMessage, Message, MessageTarget, Payload,
    ReturnBody, SHUTDOWN_REASON,
};
use burrow_core::rpc::method::{Empty, KnownParams};
use burrow_core::rpc::registration::{
    ClientInfo, ConnectionDetails, ConnectionError, ConnectionOptions, ConnectionResponse,
    RegisterConnection, RegisterConnectionParams, TunnelAuth, UnregisterConnection,
    UpdateLocalConfiguration, UpdateLocalConfigurationParams,
};
use burrow_core::rpc::session::{
    RegisterUdpSession, RegisterUdpSessionParams, RegisterUdpSessionRequest,
    RegisterUdpSessionResponse, UnregisterUdpSession, UnregisterUdpSessionParams,
    UnregisterUdpSessionRequest,
};
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits::RPC;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), any::<String>(), "[ -~]{0,200}"]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..300)
    ]
}

fn target() -> impl Strategy<Value = MessageTarget<'static>> {
    prop_oneof![
        any::<u32>().prop_map(MessageTarget::ImportedCap),
        any::<u32>().prop_map(MessageTarget::bootstrap_answer),
    ]
}

fn exception_type() -> impl Strategy<Value = ExceptionType> {
    prop_oneof![
        Just(ExceptionType::Failed),
        Just(ExceptionType::Overloaded),
        Just(ExceptionType::Disconnected),
        Just(ExceptionType::Unimplemented),
    ]
}

/// Decodes a buffer holding exactly one single-segment frame.
fn decode_one(out: &[u8]) -> IncomingMessage<'_> {
    assert_eq!(&out[..4], &[0, 0, 0, 0], "one segment");
    let (msg, n) = decode_message(out, &LIMITS).unwrap().unwrap();
    assert_eq!(n, out.len());
    msg
}

/// Encodes a call of `$method` with `$params`, decodes it, and checks it reads back the same.
macro_rules! call_round_trip {
    ($method:ty, $q:expr, $target:expr, $params:expr, $known:pat) => {{
        let (q, target, params) = ($q, $target, $params);
        let mut out = Vec::new();
        encode_call::<$method>(q, &target, &params, &mut out).unwrap();
        let msg = decode_one(&out);
        let Message::Call(call) = msg.message().unwrap() else {
            panic!("not a call")
        };
        prop_assert!(call.is::<$method>());
        prop_assert_eq!(call.question_id, q);
        prop_assert_eq!(call.target, target);
        prop_assert_eq!(call.params_of::<$method>().unwrap(), params);
        let known = call.known_params().unwrap();
        prop_assert!(matches!(known, Some($known)), "{:?}", known);
    }};
}

/// Encodes a return of `$method` with `$results`, decodes it, and checks it reads back the same.
macro_rules! return_round_trip {
    ($method:ty, $a:expr, $results:expr) => {{
        let (a, results) = ($a, $results);
        let mut out = Vec::new();
        encode_return::<$method>(a, &results, &mut out).unwrap();
        let msg = decode_one(&out);
        let Message::Return(ret) = msg.message().unwrap() else {
            panic!("not a return")
        };
        prop_assert_eq!(ret.answer_id, a);
        let ReturnBody::Results(payload) = ret.body else {
            panic!("not results")
        };
        prop_assert_eq!(payload.cap_table().count(), 0);
        prop_assert_eq!(payload.results_of::<$method>().unwrap(), results);
    }};
}

/// Owned inputs for `registerConnection` params.
#[derive(Debug, Clone)]
struct Registration {
    account: String,
    secret: Vec<u8>,
    tunnel: [u8; 16],
    idx: u8,
    client: [u8; 16],
    features: Vec<String>,
    version: String,
    arch: String,
    ip: Vec<u8>,
    flags: (bool, u8, u8),
}

fn registration() -> impl Strategy<Value = Registration> {
    (
        (
            text(),
            bytes(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<[u8; 16]>(),
        ),
        (
            proptest::collection::vec(text(), 0..8),
            text(),
            text(),
            bytes(),
            any::<(bool, u8, u8)>(),
        ),
    )
        .prop_map(
            |((account, secret, tunnel, idx, client), (features, version, arch, ip, flags))| {
                Registration {
                    account,
                    secret,
                    tunnel,
                    idx,
                    client,
                    features,
                    version,
                    arch,
                    ip,
                    flags,
                }
            },
        )
}

fn connection_response() -> impl Strategy<Value = (bool, String, i64, bool, [u8; 16])> {
    (
        any::<bool>(),
        text(),
        any::<i64>(),
        any::<bool>(),
        any::<[u8; 16]>(),
    )
}

/// Reads everything a received message offers, as a fuzzer would.
fn walk(msg: &IncomingMessage<'_>) {
    let _ = format!("{msg:?}");
    if let Ok(m) = msg.message() {
        walk_message(&m);
    }
}

fn walk_message(m: &Message<'_>) {
    match m {
        Message::Unimplemented(u) => {
            if let Ok(inner) = u.message() {
                walk_message(&inner);
            }
        }
        Message::Call(c) => {
            let _ = c.known_params();
            walk_payload(&c.params);
        }
        Message::Return(r) => {
            if let ReturnBody::Results(p) = &r.body {
                walk_payload(p);
            }
        }
        _ => {}
    }
}

fn walk_payload(p: &Payload<'_>) {
    let _ = p.capability();
    p.cap_table().for_each(drop);
    let _ = p.content::<RegisterConnectionParams<'_>>();
    let _ = p.content::<ConnectionResponse<'_>>();
    let _ = p.content::<UpdateLocalConfigurationParams<'_>>();
    let _ = p.content::<RegisterUdpSessionParams<'_>>();
    let _ = p.content::<RegisterUdpSessionResponse<'_>>();
    let _ = p.content::<UnregisterUdpSessionParams<'_>>();
    let _ = p.content::<RegisterUdpSessionRequest<'_>>();
    let _ = p.content::<UnregisterUdpSessionRequest<'_>>();
    let _ = p.content::<UpdateConfigurationParams<'_>>();
    let _ = p.content::<UpdateConfigurationResponse<'_>>();
    let _ = p.content::<Empty>();
}

proptest! {
    #[test]
    fn register_connection_round_trips(r in registration(), q in any::<u32>(), t in target()) {
        let features: Vec<&str> = r.features.iter().map(String::as_str).collect();
        let params = RegisterConnectionParams {
            auth: TunnelAuth { account_tag: &r.account, tunnel_secret: &r.secret },
            tunnel_id: r.tunnel,
            conn_index: r.idx,
            options: ConnectionOptions {
                client: ClientInfo {
                    client_id: r.client,
                    features: features.as_slice().into(),
                    version: &r.version,
                    arch: &r.arch,
                },
                origin_local_ip: &r.ip,
                replace_existing: r.flags.0,
                compression_quality: r.flags.1,
                num_previous_attempts: r.flags.2,
            },
        };
        call_round_trip!(RegisterConnection, q, t, params, KnownParams::RegisterConnection(_));
    }

    #[test]
    fn register_connection_results_round_trip(
        (is_error, text, retry, flag, uuid) in connection_response(),
        a in any::<u32>(),
    ) {
        let results = if is_error {
            ConnectionResponse::Error(ConnectionError {
                cause: &text,
                retry_after_ns: retry,
                should_retry: flag,
            })
        } else {
            ConnectionResponse::Details(ConnectionDetails {
                uuid,
                location_name: &text,
                tunnel_is_remotely_managed: flag,
            })
        };
        return_round_trip!(RegisterConnection, a, results);
    }

    #[test]
    fn local_configuration_round_trips(config in bytes(), q in any::<u32>(), t in target()) {
        let params = UpdateLocalConfigurationParams { config: &config };
        call_round_trip!(
            UpdateLocalConfiguration, q, t, params, KnownParams::UpdateLocalConfiguration(_)
        );
        return_round_trip!(UpdateLocalConfiguration, q, Empty);
    }

    #[test]
    fn unregister_connection_round_trips(q in any::<u32>(), t in target()) {
        call_round_trip!(UnregisterConnection, q, t, Empty, KnownParams::UnregisterConnection);
        return_round_trip!(UnregisterConnection, q, Empty);
    }

    #[test]
    fn register_udp_session_round_trips(
        session in any::<[u8; 16]>(),
        ip in bytes(),
        port in any::<u16>(),
        idle in any::<i64>(),
        trace in text(),
        err in text(),
        spans in bytes(),
        q in any::<u32>(),
        t in target(),
    ) {
        let params = RegisterUdpSessionParams {
            session_id: session,
            dst_ip: &ip,
            dst_port: port,
            close_after_idle_hint_ns: idle,
            trace_context: &trace,
        };
        call_round_trip!(RegisterUdpSession, q, t, params, KnownParams::RegisterUdpSession(_));
        let results = RegisterUdpSessionResponse { err: &err, spans: &spans };
        return_round_trip!(RegisterUdpSession, q, results);
    }

    #[test]
    fn unregister_udp_session_round_trips(
        session in any::<[u8; 16]>(),
        message in text(),
        q in any::<u32>(),
        t in target(),
    ) {
        let params = UnregisterUdpSessionParams { session_id: session, message: &message };
        call_round_trip!(
            UnregisterUdpSession, q, t, params, KnownParams::UnregisterUdpSession(_)
        );
        return_round_trip!(UnregisterUdpSession, q, Empty);
    }

    #[test]
    fn update_configuration_round_trips(
        version in any::<i32>(),
        config in bytes(),
        latest in any::<i32>(),
        err in text(),
        q in any::<u32>(),
        t in target(),
    ) {
        let params = UpdateConfigurationParams { version, config: &config };
        call_round_trip!(UpdateConfiguration, q, t, params, KnownParams::UpdateConfiguration(_));
        let results = UpdateConfigurationResponse { latest_applied_version: latest, err: &err };
        return_round_trip!(UpdateConfiguration, q, results);
    }

    #[test]
    fn protocol_messages_round_trip(
        id in any::<u32>(),
        count in any::<u32>(),
        release in any::<bool>(),
        reason in text(),
        kind in exception_type(),
    ) {
        let mut out = Vec::new();
        encode_bootstrap(id, &mut out).unwrap();
        prop_assert!(matches!(
            decode_one(&out).message().unwrap(),
            Message::Bootstrap { question_id } if question_id == id
        ), "bootstrap");

        out.clear();
        encode_finish(id, release, &mut out).unwrap();
        prop_assert!(matches!(
            decode_one(&out).message().unwrap(),
            Message::Finish { question_id, release_result_caps }
                if question_id == id && release_result_caps == release
        ), "finish");

        out.clear();
        encode_release(id, count, &mut out).unwrap();
        prop_assert!(matches!(
            decode_one(&out).message().unwrap(),
            Message::Release { id: got, reference_count } if got == id && reference_count == count
        ), "release");

        let exception = Exception { reason: &reason, kind };
        out.clear();
        encode_abort(&exception, &mut out).unwrap();
        let msg = decode_one(&out);
        let Message::Abort(got) = msg.message().unwrap() else { panic!("abort") };
        prop_assert_eq!(got, exception);

        out.clear();
        encode_exception_return(id, &exception, &mut out).unwrap();
        let msg = decode_one(&out);
        let Message::Return(ret) = msg.message().unwrap() else { panic!("return") };
        prop_assert_eq!(ret.answer_id, id);
        prop_assert!(matches!(ret.body, ReturnBody::Exception(e) if e == exception), "exception");

        out.clear();
        encode_bootstrap_return(id, count, &mut out).unwrap();
        let msg = decode_one(&out);
        let Message::Return(ret) = msg.message().unwrap() else { panic!("return") };
        prop_assert_eq!(ret.answer_id, id);
        let ReturnBody::Results(payload) = ret.body else { panic!("results") };
        prop_assert_eq!(payload.capability().unwrap(), CapDescriptor::SenderHosted(count));
    }

    #[test]
    fn unimplemented_echoes_the_message(q in any::<u32>(), t in target(), config in bytes()) {
        let mut original = Vec::new();
        let params = UpdateLocalConfigurationParams { config: &config };
        encode_call::<UpdateLocalConfiguration>(q, &t, &params, &mut original).unwrap();
        let msg = decode_one(&original);
        let mut out = Vec::new();
        encode_unimplemented(&msg, &mut out).unwrap();
        let echo = decode_one(&out);
        let Message::Unimplemented(u) = echo.message().unwrap() else { panic!("unimplemented") };
        let Message::Call(call) = u.message().unwrap() else { panic!("call") };
        prop_assert_eq!(call.question_id, q);
        prop_assert_eq!(call.target, t);
        prop_assert_eq!(call.params_of::<UpdateLocalConfiguration>().unwrap(), params);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..768)) {
        if let Ok(Some((msg, n))) = decode_message(&bytes, &LIMITS) {
            prop_assert!(n <= bytes.len());
            walk(&msg);
            let mut out = Vec::new();
            let _ = encode_unimplemented(&msg, &mut out);
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        r in registration(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let features: Vec<&str> = r.features.iter().map(String::as_str).collect();
        let params = RegisterConnectionParams {
            auth: TunnelAuth { account_tag: &r.account, tunnel_secret: &r.secret },
            tunnel_id: r.tunnel,
            conn_index: r.idx,
            options: ConnectionOptions {
                client: ClientInfo {
                    client_id: r.client,
                    features: features.as_slice().into(),
                    version: &r.version,
                    arch: &r.arch,
                },
                origin_local_ip: &r.ip,
                replace_existing: false,
                compression_quality: 0,
                num_previous_attempts: 0,
            },
        };
        let mut out = Vec::new();
        encode_call::<RegisterConnection>(1, &MessageTarget::bootstrap_answer(0), &params, &mut out)
            .unwrap();
        encode_bootstrap_return(0, 0, &mut out).unwrap();
        for (at, byte) in edits {
            let i = at.index(out.len());
            out[i] = byte;
        }
        if let Ok(Some((msg, n))) = decode_message(&out, &LIMITS) {
            walk(&msg);
            if let Ok(Some((msg, _))) = decode_message(&out[n..], &LIMITS) {
                walk(&msg);
            }
        }
    }
}

#[test]
fn abort_carries_cloudflareds_shutdown_reason() {
    let mut out = Vec::new();
    encode_abort(&Exception::failed(SHUTDOWN_REASON), &mut out).unwrap();
    let msg = decode_one(&out);
    let Message::Abort(e) = msg.message().unwrap() else {
        panic!("abort")
    };
    assert_eq!(e.reason, "rpc: shutdown");
    assert_eq!(e.kind, ExceptionType::Failed);
}

#[test]
fn oversized_rpc_frames_fail_from_the_header() {
    let config = vec![b'x'; 2 << 20];
    let mut out = Vec::new();
    encode_call::<UpdateLocalConfiguration>(
        1,
        &MessageTarget::ImportedCap(0),
        &UpdateLocalConfigurationParams { config: &config },
        &mut out,
    )
    .unwrap();
    assert!(matches!(
        decode_message(&out[..8], &LIMITS),
        Err(DecodeError::Frame(FrameError::TooLarge { .. }))
    ));
    let roomy = LIMITS.with_max_bytes(4 << 20);
    assert!(decode_message(&out[..8], &roomy).unwrap().is_none());
    assert!(decode_message(&out, &roomy).unwrap().is_some());
}

#[test]
fn wrong_length_ids_are_decode_errors() {
    // A registerUdpSession whose session id is 15 bytes: the handler must answer an exception.
    let mut out = Vec::new();
    encode_call::<UnregisterUdpSession>(
        3,
        &MessageTarget::ImportedCap(0),
        &UnregisterUdpSessionParams {
            session_id: [7; 16],
            message: "bye",
        },
        &mut out,
    )
    .unwrap();
    // The 16-byte data list pointer's count is `16 << 3 | 2`; make it 15.
    let at = out
        .windows(4)
        .position(|w| w == [0x82, 0, 0, 0])
        .expect("16-byte list pointer");
    out[at] = 0x7a;
    let msg = decode_one(&out);
    let Message::Call(call) = msg.message().unwrap() else {
        panic!("call")
    };
    assert_eq!(call.question_id, 3);
    assert!(matches!(
        call.known_params(),
        Err(DecodeError::Length {
            expected: 16,
            actual: 15,
            ..
        })
    ));
}

#[test]
fn a_self_nested_unimplemented_is_refused_not_recursed() {
    // A Message whose `unimplemented` pointer points back at the Message itself.
    let bytes: [u8; 32] = [
        0, 0, 0, 0, 3, 0, 0, 0, // one segment of three words
        0, 0, 0, 0, 1, 0, 1, 0, // root: struct at word 1, 1 data word, 1 pointer
        0, 0, 0, 0, 0, 0, 0, 0, // union tag 0: unimplemented
        0xf8, 0xff, 0xff, 0xff, 1, 0, 1, 0, // unimplemented: struct at offset -2 (word 1)
    ];
    let msg = decode_one(&bytes);
    let Message::Unimplemented(u) = msg.message().unwrap() else {
        panic!("unimplemented")
    };
    assert!(matches!(u.message(), Err(DecodeError::Unexpected { .. })));
    walk(&msg);
    // Echoing it back copies until capnp's nesting limit, then fails.
    assert!(encode_unimplemented(&msg, &mut Vec::new()).is_err());
}
