//! `burrow decode`: the capture inspector. Presentation only; every decision about the bytes is
//! burrow-core's.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use burrow_core::datagram::{v2, v3};
use burrow_core::icmp;
use burrow_core::rpc::{self, frame::FrameLimits};
use burrow_core::stream::{connect, preamble};
use serde_json::{json, Value};

/// Kinds of bytes the inspector understands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Datagram v3 (type byte first).
    V3,
    /// Datagram v2 (type byte last).
    V2,
    /// Data-stream preamble + ConnectRequest, as the edge sends it.
    ConnectRequest,
    /// Data-stream preamble + ConnectResponse, as the connector sends it.
    ConnectResponse,
    /// An IPv4/IPv6 ICMP packet.
    Icmp,
}

/// Decodes every input and prints JSON Lines; exit status 1 if any input failed.
pub fn run(kind: Kind, args: Vec<String>) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    let mut emit = |line: &str| -> io::Result<()> {
        let v = decode_line(kind, line).unwrap_or_else(|e| {
            failed = true;
            json!({ "error": e })
        });
        writeln!(out, "{v}")
    };
    let result = if args.is_empty() {
        io::stdin().lock().lines().try_for_each(|line| match line {
            Ok(l) if l.trim().is_empty() => Ok(()),
            Ok(l) => emit(&l),
            Err(e) => Err(e),
        })
    } else {
        args.iter().try_for_each(|a| emit(a))
    };
    match result {
        // A closed pipe (e.g. `| head`) is the reader's choice, not a failure to report.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("burrow decode: {e}");
            ExitCode::FAILURE
        }
        _ if failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// Parses hex leniently: whitespace, ':' separators and a leading `0x` are ignored.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let clean: String = s
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && *c != ':')
        .collect();
    hex::decode(&clean).map_err(|e| format!("invalid hex: {e}"))
}

/// One input line to its JSON form, or the reason it could not be decoded.
fn decode_line(kind: Kind, line: &str) -> Result<Value, String> {
    let bytes = parse_hex(line)?;
    match kind {
        Kind::V3 => v3_json(&bytes),
        Kind::V2 => v2_json(&bytes),
        Kind::ConnectRequest => connect_request_json(&bytes),
        Kind::ConnectResponse => connect_response_json(&bytes),
        Kind::Icmp => icmp_json(&bytes),
    }
}

fn v3_json(bytes: &[u8]) -> Result<Value, String> {
    Ok(match v3::decode(bytes).map_err(|e| e.to_string())? {
        v3::Datagram::Registration(r) => json!({
            "type": "registration",
            "request_id": r.request_id.to_string(),
            "dest": r.dest.to_string(),
            "traced": r.traced,
            "idle_hint_secs": r.idle_hint_secs,
            "payload_hex": hex::encode(r.payload),
        }),
        v3::Datagram::Payload(p) => json!({
            "type": "payload",
            "request_id": p.request_id.to_string(),
            "payload_hex": hex::encode(p.payload),
        }),
        v3::Datagram::RegistrationResponse(r) => json!({
            "type": "registration_response",
            "request_id": r.request_id.to_string(),
            "response_type": r.code.to_u8(),
            "error_msg": r.error_msg,
        }),
        v3::Datagram::Icmp(i) => json!({
            "type": "icmp",
            "packet_hex": hex::encode(i.packet),
        }),
    })
}

fn v2_json(bytes: &[u8]) -> Result<Value, String> {
    Ok(match v2::decode(bytes).map_err(|e| e.to_string())? {
        v2::Datagram::Udp {
            session_id,
            payload,
        } => json!({
            "type": "udp",
            "session_id": session_id.to_string(),
            "payload_hex": hex::encode(payload),
        }),
        v2::Datagram::Ip { packet } => json!({
            "type": "ip",
            "packet_hex": hex::encode(packet),
        }),
        v2::Datagram::IpWithTrace { packet, identity } => json!({
            "type": "ip_with_trace",
            "packet_hex": hex::encode(packet),
            "tracing_identity": identity.to_string(),
        }),
        v2::Datagram::TracingSpan { spans, identity } => json!({
            "type": "tracing_span",
            "spans_hex": hex::encode(spans),
            "tracing_identity": identity.to_string(),
        }),
    })
}

/// Splits off the 8-byte data-stream preamble the connect kinds start with.
fn after_data_preamble(bytes: &[u8]) -> Result<&[u8], String> {
    match preamble::parse(bytes).map_err(|e| e.to_string())? {
        Some(kind @ preamble::StreamKind::Data { .. }) => Ok(&bytes[kind.preamble_len()..]),
        Some(preamble::StreamKind::Rpc) => Err("RPC-stream preamble, not a data stream".into()),
        None => Err(format!(
            "{} bytes: shorter than the 8-byte data-stream preamble",
            bytes.len()
        )),
    }
}

/// Metadata as `[{"key","val"}]`, failing on the first entry that is not UTF-8.
fn metadata_json<'a>(
    entries: impl Iterator<Item = Result<connect::Metadata<'a>, rpc::frame::DecodeError>>,
) -> Result<Value, String> {
    entries
        .map(|m| {
            m.map(|m| json!({ "key": m.key, "val": m.val }))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Body bytes after the message, when the capture has any.
fn with_body(mut v: Value, body: &[u8]) -> Value {
    if let (false, Some(obj)) = (body.is_empty(), v.as_object_mut()) {
        obj.insert("body_hex".into(), hex::encode(body).into());
    }
    v
}

fn connect_request_json(bytes: &[u8]) -> Result<Value, String> {
    let msg = after_data_preamble(bytes)?;
    let (req, used) = connect::decode_connect_request(msg, &FrameLimits::CONNECT_REQUEST)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "ConnectRequest incomplete: {} bytes after the preamble",
                msg.len()
            )
        })?;
    let kind = match req.connection_type() {
        Ok(t) => t.as_str().to_owned(),
        Err(e) => format!("unknown({})", e.0),
    };
    let v = json!({
        "dest": req.dest().map_err(|e| e.to_string())?,
        "type": kind,
        "type_value": req.raw_type(),
        "metadata": metadata_json(req.metadata())?,
    });
    Ok(with_body(v, &msg[used..]))
}

fn connect_response_json(bytes: &[u8]) -> Result<Value, String> {
    let msg = after_data_preamble(bytes)?;
    let (resp, used) = connect::decode_connect_response(msg, &FrameLimits::CONNECT_REQUEST)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "ConnectResponse incomplete: {} bytes after the preamble",
                msg.len()
            )
        })?;
    let v = json!({
        "error": resp.error().map_err(|e| e.to_string())?,
        "metadata": metadata_json(resp.metadata())?,
    });
    Ok(with_body(v, &msg[used..]))
}

fn icmp_json(bytes: &[u8]) -> Result<Value, String> {
    let p = icmp::parse(bytes).map_err(|e| e.to_string())?;
    let mut v = json!({
        "version": match p.version() { icmp::IpVersion::V4 => 4, icmp::IpVersion::V6 => 6 },
        "src": p.src().to_string(),
        "dst": p.dst().to_string(),
        "ttl": p.ttl(),
        "protocol": p.protocol(),
        "icmp_type": p.icmp_type(),
        "code": p.code(),
        "checksum": p.checksum(),
    });
    let (message, extra) = match p.message() {
        icmp::IcmpMessage::EchoRequest { id, seq, data } => (
            "echo_request",
            json!({ "echo_id": id, "seq": seq, "data_hex": hex::encode(data) }),
        ),
        icmp::IcmpMessage::EchoReply { id, seq, data } => (
            "echo_reply",
            json!({ "echo_id": id, "seq": seq, "data_hex": hex::encode(data) }),
        ),
        icmp::IcmpMessage::TimeExceeded { original, .. } => (
            "time_exceeded",
            json!({ "quoted_hex": hex::encode(original) }),
        ),
        icmp::IcmpMessage::DestinationUnreachable { original, .. } => (
            "destination_unreachable",
            json!({ "quoted_hex": hex::encode(original) }),
        ),
        icmp::IcmpMessage::Other { body, .. } => {
            ("other", json!({ "body_hex": hex::encode(body) }))
        }
    };
    let obj = v.as_object_mut().expect("built as an object");
    obj.insert("message".into(), message.into());
    if let Value::Object(extra) = extra {
        obj.extend(extra);
    }
    Ok(v)
}
