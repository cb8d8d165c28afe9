#![no_main]
//! Any bytes as an RPC stream: decoding a message must not panic, nor must reading every part
//! of it (typed params of known methods, each results type, capability table, echoed
//! messages), nor echoing it back as `Unimplemented`; nor serving it as an RPC stream in any
//! role, answering what it asks.

use burrow_core::rpc::configuration::{UpdateConfigurationParams, UpdateConfigurationResponse};
use burrow_core::rpc::frame::FrameLimits;
use burrow_core::rpc::message::{
    decode_message, encode_unimplemented, Message, Payload, ReturnBody,
};
use burrow_core::rpc::method::Empty;
use burrow_core::rpc::registration::{
    ConnectionResponse, RegisterConnectionParams, UpdateLocalConfigurationParams,
};
use burrow_core::rpc::session::{
    RegisterUdpSessionParams, RegisterUdpSessionRequest, RegisterUdpSessionResponse,
    UnregisterUdpSessionParams, UnregisterUdpSessionRequest,
};
use burrow_core::rpc_stream::client::RpcStreamClient;
use burrow_core::rpc_stream::server::{RpcStreamEvent, RpcStreamServer};
use burrow_core::rpc_stream::ConfigUpdateResult;
use burrow_core::session::{DatagramVersion, SessionId};
use libfuzzer_sys::fuzz_target;

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
    let _ = format!("{:?}", p.content::<RegisterConnectionParams<'_>>());
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

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream may hold several messages; read them in turn like a state machine would.
    while let Ok(Some((msg, n))) = decode_message(rest, &FrameLimits::RPC) {
        assert!(n > 0 && n <= rest.len());
        let _ = format!("{msg:?}");
        if let Ok(m) = msg.message() {
            walk_message(&m);
        }
        let mut out = Vec::new();
        let _ = encode_unimplemented(&msg, &mut out);
        rest = &rest[n..];
    }
    for mut server in [
        RpcStreamServer::connector(DatagramVersion::V2),
        RpcStreamServer::connector(DatagramVersion::V3),
        RpcStreamServer::edge(),
    ] {
        let _ = server.handle_bytes(data);
        while let Some(e) = server.poll_event() {
            let _ = match e {
                RpcStreamEvent::RegisterUdpSession { .. } => {
                    server.respond_register_udp_session(Err("no".into()))
                }
                RpcStreamEvent::ConfigurationOffered { version, .. } => server
                    .respond_configuration(&ConfigUpdateResult {
                        latest_applied_version: version,
                        error: None,
                    }),
                _ => Ok(()),
            };
        }
        let _ = server.poll_transmit();
    }
    if let Ok(mut client) = RpcStreamClient::unregister_udp_session(SessionId(1), "x") {
        let _ = client.handle_bytes(data);
        let _ = client.poll_outcome();
    }
});
