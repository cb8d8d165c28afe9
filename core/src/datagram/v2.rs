//! Datagram v2 (legacy): the type byte is the **last** byte of the datagram.
//!
//! | last byte | layout | direction |
//! |---|---|---|
//! | `0x00` UDP | `payload ‖ session id (16) ‖ 0x00` | both |
//! | `0x01` IP | `IP packet ‖ 0x01` | both |
//! | `0x02` IP with trace | `IP packet ‖ tracing identity (25) ‖ 0x02` | edge → connector |
//! | `0x03` tracing span | `OTLP spans ‖ tracing identity (25) ‖ 0x03` | connector → edge |
//!
//! Suffix framing suits in-place encoding: an origin read lands at the front of a buffer and the
//! session id and type are appended behind it ([`frame_udp_in_place`]).

use core::fmt;

use thiserror::Error;
use uuid::Uuid;

/// Session id length (a raw UUID).
pub const SESSION_ID_LEN: usize = 16;
/// Tracing identity length: trace id (16) + span id (8) + flags (1).
pub const TRACING_IDENTITY_LEN: usize = 25;
/// Largest UDP payload the connector sends to the edge (non-Windows value).
pub const MAX_UDP_PAYLOAD_LEN: usize = 1280;
/// Largest datagram of any v2 type the connector sends (`MaxDatagramFrameSize`).
pub const MAX_DATAGRAM_LEN: usize = 1350;
/// Suffix a UDP datagram adds behind its payload.
pub const UDP_SUFFIX_LEN: usize = SESSION_ID_LEN + 1;

/// The type byte at the end of every v2 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DatagramType {
    /// UDP session payload.
    Udp = 0x00,
    /// Raw IP packet (ICMP).
    Ip = 0x01,
    /// IP packet with a tracing identity.
    IpWithTrace = 0x02,
    /// Exported tracing spans.
    TracingSpan = 0x03,
}

/// A borrowed 25-byte tracing identity (Jaeger `uber-trace-id` in binary form).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TracingIdentity<'a>(pub &'a [u8; TRACING_IDENTITY_LEN]);

impl TracingIdentity<'_> {
    /// 128-bit trace id (big-endian halves on the wire).
    pub fn trace_id(&self) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(b)
    }

    /// 64-bit span id.
    pub fn span_id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[16..24]);
        u64::from_be_bytes(b)
    }

    /// Trace flags.
    pub fn flags(&self) -> u8 {
        self.0[24]
    }
}

impl fmt::Display for TracingIdentity<'_> {
    /// cloudflared's string form: `%016x%016x:%x:0:%x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:032x}:{:x}:0:{:x}",
            self.trace_id(),
            self.span_id(),
            self.flags()
        )
    }
}

impl fmt::Debug for TracingIdentity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TracingIdentity({self})")
    }
}

/// Any v2 datagram, borrowed from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// UDP payload of a session.
    Udp {
        /// Session registered over RPC.
        session_id: Uuid,
        /// The UDP payload (may be empty).
        payload: &'a [u8],
    },
    /// Raw IP packet.
    Ip {
        /// The packet.
        packet: &'a [u8],
    },
    /// Raw IP packet the edge traces.
    IpWithTrace {
        /// The packet.
        packet: &'a [u8],
        /// Who traces it.
        identity: TracingIdentity<'a>,
    },
    /// Spans exported for a traced packet.
    TracingSpan {
        /// OTLP `ExportTraceServiceRequest` protobuf.
        spans: &'a [u8],
        /// The trace they belong to.
        identity: TracingIdentity<'a>,
    },
}

/// The peer sent bytes that are not a valid v2 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Nothing to read a type from.
    #[error("datagram is empty")]
    Empty,
    /// A type byte v2 does not define.
    #[error("unexpected datagram type {0}")]
    UnknownType(u8),
    /// UDP datagram too short for its session id.
    #[error("UDP datagram of {0} bytes is too short for a 16-byte session id and type")]
    UdpTooShort(usize),
    /// Traced datagram too short for its identity.
    #[error("traced datagram of {0} bytes is too short for a 25-byte tracing identity and type")]
    TraceTooShort(usize),
    /// IP datagram without a packet.
    #[error("IP datagram carries no packet")]
    IpMissing,
}

/// The caller asked for something that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Output buffer too small.
    #[error("output buffer holds {have} bytes, the datagram needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// UDP payload over 1280 bytes (cloudflared: "exceeds transport MTU 1280").
    #[error("origin UDP payload has {0} bytes, which exceeds transport MTU 1280")]
    PayloadTooLarge(usize),
    /// Datagram over 1350 bytes.
    #[error("datagram of {0} bytes exceeds the 1350-byte v2 frame limit")]
    DatagramTooLarge(usize),
}

/// Decodes one v2 datagram, borrowing from `buf`.
pub fn decode(buf: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let (&ty, body) = buf.split_last().ok_or(DecodeError::Empty)?;
    match ty {
        0x00 => {
            let (payload, id) = body
                .split_last_chunk::<SESSION_ID_LEN>()
                .ok_or(DecodeError::UdpTooShort(buf.len()))?;
            Ok(Datagram::Udp {
                session_id: Uuid::from_bytes(*id),
                payload,
            })
        }
        0x01 if body.is_empty() => Err(DecodeError::IpMissing),
        0x01 => Ok(Datagram::Ip { packet: body }),
        0x02 | 0x03 => {
            let (data, id) = body
                .split_last_chunk::<TRACING_IDENTITY_LEN>()
                .ok_or(DecodeError::TraceTooShort(buf.len()))?;
            let identity = TracingIdentity(id);
            Ok(if ty == 0x02 {
                Datagram::IpWithTrace {
                    packet: data,
                    identity,
                }
            } else {
                Datagram::TracingSpan {
                    spans: data,
                    identity,
                }
            })
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

impl Datagram<'_> {
    /// The datagram's type.
    pub fn datagram_type(&self) -> DatagramType {
        match self {
            Self::Udp { .. } => DatagramType::Udp,
            Self::Ip { .. } => DatagramType::Ip,
            Self::IpWithTrace { .. } => DatagramType::IpWithTrace,
            Self::TracingSpan { .. } => DatagramType::TracingSpan,
        }
    }

    /// The parts written in order: body, then suffix metadata.
    fn parts(&self) -> (&[u8], &[u8]) {
        match self {
            Self::Udp {
                session_id,
                payload,
            } => (payload, session_id.as_bytes()),
            Self::Ip { packet } => (packet, &[]),
            Self::IpWithTrace { packet, identity } => (packet, identity.0),
            Self::TracingSpan { spans, identity } => (spans, identity.0),
        }
    }

    /// Bytes [`Datagram::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let (body, meta) = self.parts();
        body.len() + meta.len() + 1
    }

    /// Encodes into `out` with cloudflared's size limits, returning the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let (body, meta) = self.parts();
        check_limits(self.datagram_type(), body.len())?;
        let need = self.encoded_len();
        let have = out.len();
        let out = out
            .get_mut(..need)
            .ok_or(EncodeError::BufferTooSmall { need, have })?;
        let (b, rest) = out.split_at_mut(body.len());
        b.copy_from_slice(body);
        rest[..meta.len()].copy_from_slice(meta);
        rest[meta.len()] = self.datagram_type() as u8;
        Ok(need)
    }
}

fn check_limits(ty: DatagramType, body_len: usize) -> Result<(), EncodeError> {
    if ty == DatagramType::Udp {
        if body_len > MAX_UDP_PAYLOAD_LEN {
            return Err(EncodeError::PayloadTooLarge(body_len));
        }
        return Ok(());
    }
    let meta = match ty {
        DatagramType::Ip => 0,
        _ => TRACING_IDENTITY_LEN,
    };
    let total = body_len + meta + 1;
    if total > MAX_DATAGRAM_LEN {
        return Err(EncodeError::DatagramTooLarge(total));
    }
    Ok(())
}

/// Frames a UDP payload sitting at `buf[..payload_len]` by appending session id and type
/// behind it; returns the datagram length. The payload is not copied.
pub fn frame_udp_in_place(
    buf: &mut [u8],
    payload_len: usize,
    session_id: Uuid,
) -> Result<usize, EncodeError> {
    check_limits(DatagramType::Udp, payload_len)?;
    append_suffix(buf, payload_len, session_id.as_bytes(), DatagramType::Udp)
}

/// Frames an IP packet sitting at `buf[..packet_len]` by appending the type byte.
pub fn frame_ip_in_place(buf: &mut [u8], packet_len: usize) -> Result<usize, EncodeError> {
    check_limits(DatagramType::Ip, packet_len)?;
    append_suffix(buf, packet_len, &[], DatagramType::Ip)
}

fn append_suffix(
    buf: &mut [u8],
    body_len: usize,
    meta: &[u8],
    ty: DatagramType,
) -> Result<usize, EncodeError> {
    let need = body_len + meta.len() + 1;
    let have = buf.len();
    let suffix = buf
        .get_mut(body_len..need)
        .ok_or(EncodeError::BufferTooSmall { need, have })?;
    suffix[..meta.len()].copy_from_slice(meta);
    suffix[meta.len()] = ty as u8;
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_string_matches_cloudflared_format() {
        let mut raw = [0u8; TRACING_IDENTITY_LEN];
        raw[15] = 0x01;
        raw[23] = 0xab;
        raw[24] = 1;
        let id = TracingIdentity(&raw);
        assert_eq!(id.to_string(), "00000000000000000000000000000001:ab:0:1");
    }

    #[test]
    fn short_inputs_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[0; 16]), Err(DecodeError::UdpTooShort(16)));
        assert_eq!(decode(&[1]), Err(DecodeError::IpMissing));
        assert_eq!(decode(&[2; 25]), Err(DecodeError::TraceTooShort(25)));
        assert_eq!(decode(&[9]), Err(DecodeError::UnknownType(9)));
    }

    #[test]
    fn in_place_udp_matches_copying_encode() {
        let sid = Uuid::from_u128(0x0b6e4c3e6a4f4f559d1c3b1f2a7c9e10);
        let mut buf = [0u8; 64];
        buf[..5].copy_from_slice(b"hello");
        let n = frame_udp_in_place(&mut buf, 5, sid).unwrap();
        let mut copy = [0u8; 64];
        let d = Datagram::Udp {
            session_id: sid,
            payload: b"hello",
        };
        let m = d.encode(&mut copy).unwrap();
        assert_eq!(&buf[..n], &copy[..m]);
        assert_eq!(decode(&buf[..n]), Ok(d));
    }

    #[test]
    fn limits_are_cloudflareds() {
        let sid = Uuid::nil();
        let big = [0u8; MAX_UDP_PAYLOAD_LEN + 1];
        let mut out = [0u8; 2048];
        assert_eq!(
            Datagram::Udp {
                session_id: sid,
                payload: &big
            }
            .encode(&mut out),
            Err(EncodeError::PayloadTooLarge(1281))
        );
        let ip = [0u8; MAX_DATAGRAM_LEN];
        assert_eq!(
            Datagram::Ip { packet: &ip }.encode(&mut out),
            Err(EncodeError::DatagramTooLarge(1351))
        );
        assert_eq!(
            Datagram::Ip {
                packet: &ip[..1349]
            }
            .encode(&mut out),
            Ok(1350)
        );
    }
}
