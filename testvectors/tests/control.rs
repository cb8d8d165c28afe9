//! The control-stream RPC conversation against cloudflared 2026.8.2's own bytes.
//!
//! The connector side (Bootstrap, registerConnection, updateLocalConfiguration,
//! unregisterConnection, Finishes) is read with our typed decoder and checked against what the
//! edge saw; the edge side (bootstrap Return, registerConnection Return, empty Returns) against
//! the connection details. Then the same conversation is built with our encoders and must read
//! back to the same typed values.

use std::fmt::Write as _;

use burrow_core::rpc::frame::{frame_len, FrameLimits};
use burrow_core::rpc::message::{
    decode_message, encode_bootstrap, encode_bootstrap_return, encode_call, encode_finish,
    encode_return, CapDescriptor, Message, MessageTarget, ReturnBody, SendResultsTo,
};
use burrow_core::rpc::method::{Empty, KnownParams, Method};
use burrow_core::rpc::registration::{
    self, ClientInfo, ConnectionDetails, ConnectionOptions, ConnectionResponse, RegisterConnection,
    RegisterConnectionParams, TunnelAuth, UnregisterConnection, UpdateLocalConfiguration,
    UpdateLocalConfigurationParams,
};
use burrow_testvectors::{control_stream, Vector};

/// Splits a byte stream into its frames.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = frame_len(rest, &FrameLimits::RPC)
            .expect("frame within limits")
            .expect("stream ends on a frame boundary");
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// What the edge logged for the registration: `register account=.. tunnel=.. idx=.. ...`.
struct EdgeSaw {
    account: String,
    tunnel: [u8; 16],
    idx: u8,
    features: Vec<String>,
    version: String,
    config: String,
}

fn edge_saw(v: &Vector) -> EdgeSaw {
    let lines: Vec<&str> = v.fields["edge_saw"]
        .as_array()
        .expect("edge_saw")
        .iter()
        .map(|l| l.as_str().expect("edge_saw line"))
        .collect();
    assert_eq!(lines.len(), 3, "register, config, unregister");
    let register = lines[0].strip_prefix("register ").expect("register line");
    let field = |key: &str| {
        let start = register.find(&format!("{key}=")).expect(key) + key.len() + 1;
        let end = register[start..]
            .find(' ')
            .map_or(register.len(), |e| start + e);
        register[start..end].to_owned()
    };
    let features_start = register.find("features=[").expect("features") + "features=[".len();
    let features_end = features_start + register[features_start..].find(']').expect("]");
    assert_eq!(lines[2], "unregister");
    EdgeSaw {
        account: field("account"),
        tunnel: *uuid::Uuid::parse_str(&field("tunnel"))
            .expect("tunnel uuid")
            .as_bytes(),
        idx: field("idx").parse().expect("idx"),
        features: register[features_start..features_end]
            .split(' ')
            .map(str::to_owned)
            .collect(),
        version: field("version"),
        config: lines[1]
            .strip_prefix("config ")
            .expect("config line")
            .to_owned(),
    }
}

/// Values present in the connector's bytes that the edge did not log.
const ARCH: &str = "linux_amd64";
const CLIENT_ID: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0x4c, 0xde, 0x8f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
];
const TUNNEL_SECRET: [u8; 32] = [0x42; 32];
/// `::ffff:192.0.2.10`: cloudflared sends the edge address, in 16-byte form.
const ORIGIN_LOCAL_IP: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10];

/// A decoded message in owned, comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Bootstrap(u32),
    Call {
        question: u32,
        target: String,
        method: &'static str,
        params: String,
    },
    Finish {
        question: u32,
        release_result_caps: bool,
    },
    ReturnCapability {
        answer: u32,
        cap: String,
    },
    ReturnResults {
        answer: u32,
        results: String,
    },
}

fn uuid(bytes: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*bytes)
}

/// Params in a readable form (bytes as hex, ids as UUIDs, JSON as text).
fn show_params(params: &KnownParams<'_>) -> String {
    match params {
        KnownParams::RegisterConnection(p) => {
            let c = &p.options.client;
            format!(
                "account={} secret={} tunnel={} idx={} client={} features={:?} version={} \
                 arch={} origin_ip={} replace={} compression={} attempts={}",
                p.auth.account_tag,
                hex::encode(p.auth.tunnel_secret),
                uuid(&p.tunnel_id),
                p.conn_index,
                uuid(&c.client_id),
                c.features,
                c.version,
                c.arch,
                hex::encode(p.options.origin_local_ip),
                p.options.replace_existing,
                p.options.compression_quality,
                p.options.num_previous_attempts,
            )
        }
        KnownParams::UpdateLocalConfiguration(p) => {
            format!("config={}", String::from_utf8_lossy(p.config))
        }
        KnownParams::UnregisterConnection => "()".to_owned(),
        other => panic!("unexpected params {other:?}"),
    }
}

fn show_response(r: &ConnectionResponse<'_>) -> String {
    match r {
        ConnectionResponse::Details(d) => format!(
            "details uuid={} location={} remotely_managed={}",
            uuid(&d.uuid),
            d.location_name,
            d.tunnel_is_remotely_managed
        ),
        ConnectionResponse::Error(e) => format!("{e:?}"),
    }
}

fn method_name(interface_id: u64, method_id: u16) -> &'static str {
    use burrow_core::rpc::method::is;
    if is::<RegisterConnection>(interface_id, method_id) {
        RegisterConnection::NAME
    } else if is::<UnregisterConnection>(interface_id, method_id) {
        UnregisterConnection::NAME
    } else if is::<UpdateLocalConfiguration>(interface_id, method_id) {
        UpdateLocalConfiguration::NAME
    } else {
        panic!("unexpected method {interface_id:#x}.{method_id}")
    }
}

/// Reads the connector → edge stream.
fn read_connector_side(bytes: &[u8]) -> Vec<Seen> {
    frames(bytes)
        .into_iter()
        .map(|frame| {
            let (incoming, n) = decode_message(frame, &FrameLimits::RPC)
                .expect("decodes")
                .expect("complete");
            assert_eq!(n, frame.len());
            match incoming.message().expect("typed") {
                Message::Bootstrap { question_id } => Seen::Bootstrap(question_id),
                Message::Call(call) => {
                    assert_eq!(call.send_results_to, SendResultsTo::Caller);
                    assert_eq!(call.interface_id, registration::INTERFACE_ID);
                    let params = call
                        .known_params()
                        .expect("params decode")
                        .expect("known method");
                    Seen::Call {
                        question: call.question_id,
                        target: format!("{:?}", call.target),
                        method: method_name(call.interface_id, call.method_id),
                        params: show_params(&params),
                    }
                }
                Message::Finish {
                    question_id,
                    release_result_caps,
                } => Seen::Finish {
                    question: question_id,
                    release_result_caps,
                },
                other => panic!("unexpected connector message {other:?}"),
            }
        })
        .collect()
}

/// Reads the edge → connector stream; `methods[i]` is what the i-th Return answers
/// (`None` for the bootstrap).
fn read_edge_side(bytes: &[u8], methods: &[Option<&str>]) -> Vec<Seen> {
    let frames = frames(bytes);
    assert_eq!(frames.len(), methods.len());
    frames
        .into_iter()
        .zip(methods)
        .map(|(frame, method)| {
            let (incoming, _) = decode_message(frame, &FrameLimits::RPC)
                .expect("decodes")
                .expect("complete");
            let Message::Return(ret) = incoming.message().expect("typed") else {
                panic!("edge sends only Returns here")
            };
            let ReturnBody::Results(payload) = ret.body else {
                panic!("unexpected {:?}", ret.body)
            };
            match *method {
                None => Seen::ReturnCapability {
                    answer: ret.answer_id,
                    cap: format!("{:?}", payload.capability().expect("capability")),
                },
                Some(RegisterConnection::NAME) => Seen::ReturnResults {
                    answer: ret.answer_id,
                    results: show_response(
                        &payload
                            .content::<ConnectionResponse<'_>>()
                            .expect("ConnectionResponse"),
                    ),
                },
                Some(_) => Seen::ReturnResults {
                    answer: ret.answer_id,
                    results: format!("{:?}", payload.content::<Empty>().expect("empty")),
                },
            }
        })
        .collect()
}

const EDGE_METHODS: [Option<&str>; 4] = [
    None,
    Some(RegisterConnection::NAME),
    Some(UpdateLocalConfiguration::NAME),
    Some(UnregisterConnection::NAME),
];

fn vector() -> Vector {
    let mut file = control_stream();
    assert_eq!(file.vectors.len(), 1);
    file.vectors.remove(0)
}

fn stream(v: &Vector, key: &str) -> Vec<u8> {
    hex::decode(v.str_field(key)).expect("hex")
}

/// Re-reads the registerConnection params of the vector with typed access (not via Debug).
fn registered_params(bytes: &[u8], check: impl FnOnce(&RegisterConnectionParams<'_>)) {
    let frame = frames(bytes)[1];
    let (incoming, _) = decode_message(frame, &FrameLimits::RPC).unwrap().unwrap();
    let Message::Call(call) = incoming.message().unwrap() else {
        panic!("second message is the registerConnection call")
    };
    assert!(call.is::<RegisterConnection>());
    assert_eq!(
        call.target,
        MessageTarget::bootstrap_answer(0),
        "pipelined on the bootstrap"
    );
    check(&call.params_of::<RegisterConnection>().unwrap());
}

#[test]
fn connector_side_matches_what_the_edge_saw() {
    let v = vector();
    let saw = edge_saw(&v);
    let bytes = stream(&v, "connector_to_edge_hex");
    registered_params(&bytes, |p| {
        assert_eq!(p.auth.account_tag, saw.account);
        assert_eq!(p.auth.tunnel_secret, TUNNEL_SECRET);
        assert_eq!(p.tunnel_id, saw.tunnel);
        assert_eq!(p.conn_index, saw.idx);
        let c = &p.options.client;
        let features: Vec<&str> = c.features.iter().map(Result::unwrap).collect();
        assert_eq!(features, saw.features);
        assert_eq!(c.version, saw.version);
        assert_eq!(c.version, "2026.8.2");
        assert_eq!(c.arch, ARCH);
        assert_eq!(c.client_id, CLIENT_ID);
        assert_eq!(p.options.origin_local_ip, ORIGIN_LOCAL_IP);
        assert!(!p.options.replace_existing);
        assert_eq!(p.options.compression_quality, 0);
        assert_eq!(p.options.num_previous_attempts, 0);
    });

    let seen = read_connector_side(&bytes);
    let kinds: Vec<String> = seen
        .iter()
        .map(|s| match s {
            Seen::Bootstrap(q) => format!("bootstrap q{q}"),
            Seen::Call {
                question, method, ..
            } => format!("call q{question} {method}"),
            Seen::Finish {
                question,
                release_result_caps,
            } => format!("finish q{question} release={release_result_caps}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "bootstrap q0",
            "call q1 registerConnection",
            "finish q0 release=false",
            "finish q1 release=false",
            "call q1 updateLocalConfiguration",
            "finish q1 release=false",
            "call q1 unregisterConnection",
            "finish q1 release=false",
        ]
    );

    // The config call carries the JSON the edge saw, on the imported bootstrap capability.
    let frame = frames(&bytes)[4];
    let (incoming, _) = decode_message(frame, &FrameLimits::RPC).unwrap().unwrap();
    let Message::Call(call) = incoming.message().unwrap() else {
        panic!("fifth message is a call")
    };
    assert_eq!(call.target, MessageTarget::ImportedCap(0));
    let Some(KnownParams::UpdateLocalConfiguration(p)) = call.known_params().unwrap() else {
        panic!("updateLocalConfiguration")
    };
    assert_eq!(p.config, saw.config.as_bytes());
    assert_eq!(p.config, br#"{"ingress":[{"service":"http_status:404"}]}"#);
}

#[test]
fn edge_side_matches_the_connection_details() {
    let v = vector();
    let details = &v.fields["details"];
    let bytes = stream(&v, "edge_to_connector_hex");
    let seen = read_edge_side(&bytes, &EDGE_METHODS);
    assert_eq!(
        seen[0],
        Seen::ReturnCapability {
            answer: 0,
            cap: format!("{:?}", CapDescriptor::SenderHosted(0)),
        }
    );

    let frame = frames(&bytes)[1];
    let (incoming, _) = decode_message(frame, &FrameLimits::RPC).unwrap().unwrap();
    let Message::Return(ret) = incoming.message().unwrap() else {
        panic!("Return")
    };
    assert_eq!(ret.answer_id, 1);
    let ReturnBody::Results(payload) = ret.body else {
        panic!("results")
    };
    let ConnectionResponse::Details(d) = payload.content::<ConnectionResponse<'_>>().unwrap()
    else {
        panic!("connection details")
    };
    let uuid = uuid::Uuid::parse_str(details["uuid"].as_str().unwrap()).unwrap();
    assert_eq!(d.uuid, *uuid.as_bytes());
    assert_eq!(d.location_name, details["location"].as_str().unwrap());
    assert_eq!(d.location_name, "SJC");
    assert_eq!(
        d.tunnel_is_remotely_managed,
        details["remotely_managed"].as_bool().unwrap()
    );
    assert!(!d.tunnel_is_remotely_managed);
    for s in &seen[2..] {
        assert!(matches!(s, Seen::ReturnResults { answer: 1, results } if results == "Empty"));
    }
}

/// Builds the conversation with our encoders, from the vector's values.
fn our_conversation(v: &Vector) -> (Vec<u8>, Vec<u8>) {
    let saw = edge_saw(v);
    let features: Vec<&str> = saw.features.iter().map(String::as_str).collect();
    let params = RegisterConnectionParams {
        auth: TunnelAuth {
            account_tag: &saw.account,
            tunnel_secret: &TUNNEL_SECRET,
        },
        tunnel_id: saw.tunnel,
        conn_index: saw.idx,
        options: ConnectionOptions {
            client: ClientInfo {
                client_id: CLIENT_ID,
                features: features.as_slice().into(),
                version: &saw.version,
                arch: ARCH,
            },
            origin_local_ip: &ORIGIN_LOCAL_IP,
            replace_existing: false,
            compression_quality: 0,
            num_previous_attempts: 0,
        },
    };
    let config = UpdateLocalConfigurationParams {
        config: saw.config.as_bytes(),
    };
    let cap = MessageTarget::ImportedCap(0);

    let mut c2e = Vec::new();
    encode_bootstrap(0, &mut c2e).unwrap();
    encode_call::<RegisterConnection>(1, &MessageTarget::bootstrap_answer(0), &params, &mut c2e)
        .unwrap();
    encode_finish(0, false, &mut c2e).unwrap();
    encode_finish(1, false, &mut c2e).unwrap();
    encode_call::<UpdateLocalConfiguration>(1, &cap, &config, &mut c2e).unwrap();
    encode_finish(1, false, &mut c2e).unwrap();
    encode_call::<UnregisterConnection>(1, &cap, &Empty, &mut c2e).unwrap();
    encode_finish(1, false, &mut c2e).unwrap();

    let details = &v.fields["details"];
    let uuid = uuid::Uuid::parse_str(details["uuid"].as_str().unwrap()).unwrap();
    let response = ConnectionResponse::Details(ConnectionDetails {
        uuid: *uuid.as_bytes(),
        location_name: details["location"].as_str().unwrap(),
        tunnel_is_remotely_managed: details["remotely_managed"].as_bool().unwrap(),
    });
    let mut e2c = Vec::new();
    encode_bootstrap_return(0, 0, &mut e2c).unwrap();
    encode_return::<RegisterConnection>(1, &response, &mut e2c).unwrap();
    encode_return::<UpdateLocalConfiguration>(1, &Empty, &mut e2c).unwrap();
    encode_return::<UnregisterConnection>(1, &Empty, &mut e2c).unwrap();
    (c2e, e2c)
}

#[test]
fn our_encoders_produce_an_equivalent_conversation() {
    let v = vector();
    let (c2e, e2c) = our_conversation(&v);
    // Not required (question IDs and layout are implementation choices), but we write objects
    // in capnp-go's order, so the bytes are cloudflared's.
    assert_eq!(hex::encode(&c2e), v.str_field("connector_to_edge_hex"));
    assert_eq!(hex::encode(&e2c), v.str_field("edge_to_connector_hex"));
    assert_eq!(
        read_connector_side(&c2e),
        read_connector_side(&stream(&v, "connector_to_edge_hex"))
    );
    assert_eq!(
        read_edge_side(&e2c, &EDGE_METHODS),
        read_edge_side(&stream(&v, "edge_to_connector_hex"), &EDGE_METHODS)
    );
}

#[test]
fn partial_frames_wait() {
    let v = vector();
    for key in ["connector_to_edge_hex", "edge_to_connector_hex"] {
        let bytes = stream(&v, key);
        for frame in frames(&bytes) {
            for cut in 0..frame.len() {
                assert!(
                    matches!(decode_message(&frame[..cut], &FrameLimits::RPC), Ok(None)),
                    "{key}: cut at {cut}"
                );
            }
        }
    }
}

#[test]
fn decoded_conversation_snapshot() {
    let v = vector();
    let mut out = String::from("connector -> edge\n");
    for s in read_connector_side(&stream(&v, "connector_to_edge_hex")) {
        writeln!(out, "  {s:?}").unwrap();
    }
    out.push_str("edge -> connector\n");
    for s in read_edge_side(&stream(&v, "edge_to_connector_hex"), &EDGE_METHODS) {
        writeln!(out, "  {s:?}").unwrap();
    }
    insta::assert_snapshot!(out);
}
