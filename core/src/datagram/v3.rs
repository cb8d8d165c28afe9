//! Datagram v3: the first byte of every QUIC DATAGRAM says what follows.
//!
//! | type | name | direction |
//! |---|---|---|
//! | `0x00` | UDP session registration (optionally with a bundled first payload) | edge → connector |
//! | `0x01` | UDP session payload | both |
//! | `0x02` | ICMP: one whole IPv4/IPv6 packet | both |
//! | `0x03` | registration response | connector → edge |
//!
//! Decoding borrows the input; encoding writes into caller buffers, and the payload header can
//! be written in place in front of bytes already read from an origin socket, so the hot paths
//! neither copy nor allocate. Where cloudflared panics on short input (registration datagrams
//! are sliced without a length check) this module returns [`DecodeError`].

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::str::FromStr;

use thiserror::Error;

/// Largest UDP payload (or ICMP packet) a v3 datagram carries.
pub const MAX_PAYLOAD_LEN: usize = 1280;
/// Bytes of a payload datagram in front of the UDP payload: type + request id.
pub const PAYLOAD_HEADER_LEN: usize = 1 + RequestId::LEN;
/// Largest payload datagram: header + [`MAX_PAYLOAD_LEN`].
pub const MAX_PAYLOAD_DATAGRAM_LEN: usize = PAYLOAD_HEADER_LEN + MAX_PAYLOAD_LEN;
/// Registration header length with an IPv4 destination.
pub const REGISTRATION_V4_LEN: usize = 1 + 1 + 2 + 2 + RequestId::LEN + 4;
/// Registration header length with an IPv6 destination.
pub const REGISTRATION_V6_LEN: usize = REGISTRATION_V4_LEN + 12;
/// Fixed part of a registration response: type, code, request id, message length.
pub const RESPONSE_HEADER_LEN: usize = 1 + 1 + RequestId::LEN + 2;
/// Longest error message a registration response may carry.
pub const MAX_RESPONSE_MSG_LEN: usize = MAX_PAYLOAD_LEN - RESPONSE_HEADER_LEN;
/// Largest ICMP datagram: type byte + [`MAX_PAYLOAD_LEN`] bytes of IP packet.
pub const MAX_ICMP_DATAGRAM_LEN: usize = 1 + MAX_PAYLOAD_LEN;

const FLAG_IPV6: u8 = 0x01;
const FLAG_TRACED: u8 = 0x02;
const FLAG_BUNDLED: u8 = 0x04;

/// The type byte at the front of every v3 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DatagramType {
    /// UDP session registration.
    Registration = 0x00,
    /// UDP session payload.
    Payload = 0x01,
    /// ICMP packet.
    Icmp = 0x02,
    /// Registration response.
    RegistrationResponse = 0x03,
}

impl DatagramType {
    /// Maps a type byte to a type, `None` for bytes v3 does not define.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => Self::Registration,
            0x01 => Self::Payload,
            0x02 => Self::Icmp,
            0x03 => Self::RegistrationResponse,
            _ => return None,
        })
    }
}

/// A 128-bit flow identifier chosen by the edge; shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RequestId(pub u128);

impl RequestId {
    /// Wire length in bytes.
    pub const LEN: usize = 16;

    /// From the 16 big-endian wire bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(b))
    }

    /// The 16 big-endian wire bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A request id string was not exactly 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("request id must be 32 hex digits, got {0:?}")]
pub struct RequestIdParseError(pub String);

impl FromStr for RequestId {
    type Err = RequestIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // from_str_radix alone would accept a sign and fewer digits.
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RequestIdParseError(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| RequestIdParseError(s.to_owned()))
    }
}

/// Response code of a registration response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// Session registered (also sent for duplicates and migrations).
    Ok,
    /// Destination unreachable (defined; cloudflared never sends it).
    DestinationUnreachable,
    /// The origin socket could not be opened.
    UnableToBindSocket,
    /// The flow limit refused the session.
    TooManyActiveFlows,
    /// An error described by the message (defined; cloudflared never sends it).
    ErrorWithMsg,
    /// A code this version does not know; accepted as cloudflared does.
    Unknown(u8),
}

impl ResponseCode {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Ok => 0x00,
            Self::DestinationUnreachable => 0x01,
            Self::UnableToBindSocket => 0x02,
            Self::TooManyActiveFlows => 0x03,
            Self::ErrorWithMsg => 0xff,
            Self::Unknown(b) => b,
        }
    }

    /// From the wire byte; never fails.
    pub fn from_u8(b: u8) -> Self {
        match b {
            0x00 => Self::Ok,
            0x01 => Self::DestinationUnreachable,
            0x02 => Self::UnableToBindSocket,
            0x03 => Self::TooManyActiveFlows,
            0xff => Self::ErrorWithMsg,
            b => Self::Unknown(b),
        }
    }
}

/// `0x00`: the edge asks the connector to open a UDP flow to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration<'a> {
    /// Flow id.
    pub request_id: RequestId,
    /// Origin address. An IPv4-mapped IPv6 address is sent as IPv6, as cloudflared does.
    pub dest: SocketAddr,
    /// The edge traces this flow.
    pub traced: bool,
    /// Idle timeout hint in seconds; 0 means the default (210 s).
    pub idle_hint_secs: u16,
    /// First payload, bundled with the registration (empty if none).
    pub payload: &'a [u8],
}

/// `0x01`: UDP payload of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// Flow id.
    pub request_id: RequestId,
    /// The UDP payload (may be empty).
    pub payload: &'a [u8],
}

/// `0x03`: the connector's answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationResponse<'a> {
    /// Flow id the answer is for.
    pub request_id: RequestId,
    /// Outcome.
    pub code: ResponseCode,
    /// Error text; empty for every response cloudflared sends.
    pub error_msg: &'a str,
}

/// `0x02`: one IPv4 or IPv6 packet carrying ICMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp<'a> {
    /// The whole IP packet.
    pub packet: &'a [u8],
}

/// Any v3 datagram, borrowed from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// `0x00`.
    Registration(Registration<'a>),
    /// `0x01`.
    Payload(Payload<'a>),
    /// `0x02`.
    Icmp(Icmp<'a>),
    /// `0x03`.
    RegistrationResponse(RegistrationResponse<'a>),
}

/// The peer sent bytes that are not a valid v3 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Nothing to read a type from.
    #[error("datagram should have at least 1 byte")]
    Empty,
    /// A type byte v3 does not define.
    #[error("unknown datagram type {0:#04x}")]
    UnknownType(u8),
    /// Registration shorter than its header (cloudflared panics here).
    #[error("registration datagram is {len} bytes, shorter than the {need}-byte header for its address family")]
    RegistrationTooShort {
        /// Bytes received.
        len: usize,
        /// Header bytes the flags call for.
        need: usize,
    },
    /// Payload datagram outside 17..=1297 bytes.
    #[error("payload datagram of {0} bytes is an invalid size (valid: 17..=1297)")]
    PayloadInvalidSize(usize),
    /// ICMP datagram with no packet.
    #[error("ICMP datagram carries no packet")]
    IcmpMissing,
    /// ICMP packet over 1280 bytes.
    #[error("ICMP datagram carries a {0}-byte packet, over the 1280-byte limit")]
    IcmpTooLarge(usize),
    /// Response shorter than its 20-byte header.
    #[error("registration response of {0} bytes is shorter than its 20-byte header")]
    ResponseTooShort(usize),
    /// Declared message length over 1260.
    #[error("registration response message length {0} exceeds the maximum of 1260")]
    ResponseMsgTooLong(u16),
    /// Declared message length over what arrived.
    #[error(
        "registration response declares a {declared}-byte message but carries {available} bytes"
    )]
    ResponseMsgTruncated {
        /// Length field.
        declared: u16,
        /// Bytes after the header.
        available: usize,
    },
    /// Bytes after the declared message (cloudflared would fold them into the message).
    #[error("registration response has {0} bytes after its declared message")]
    ResponseTrailingBytes(usize),
    /// Message is not UTF-8.
    #[error("registration response message is not valid UTF-8")]
    ResponseMsgNotUtf8,
}

/// The caller asked for something that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Output buffer too small.
    #[error("output buffer holds {have} bytes, the datagram needs {need}")]
    BufferTooSmall {
        /// Bytes the datagram needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// UDP payload over 1280 bytes.
    #[error("payload of {0} bytes exceeds the 1280-byte v3 limit")]
    PayloadTooLarge(usize),
    /// Empty ICMP packet.
    #[error("ICMP packet is empty")]
    IcmpMissing,
    /// ICMP packet over 1280 bytes.
    #[error("ICMP packet of {0} bytes exceeds the 1280-byte v3 limit")]
    IcmpTooLarge(usize),
    /// Error message over 1260 bytes.
    #[error("error message of {0} bytes exceeds the 1260-byte limit")]
    MessageTooLong(usize),
}

/// Decodes one v3 datagram, borrowing from `buf`.
pub fn decode(buf: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let (&ty, _) = buf.split_first().ok_or(DecodeError::Empty)?;
    match DatagramType::from_u8(ty) {
        Some(DatagramType::Registration) => Registration::decode(buf).map(Datagram::Registration),
        Some(DatagramType::Payload) => Payload::decode(buf).map(Datagram::Payload),
        Some(DatagramType::Icmp) => Icmp::decode(buf).map(Datagram::Icmp),
        Some(DatagramType::RegistrationResponse) => {
            RegistrationResponse::decode(buf).map(Datagram::RegistrationResponse)
        }
        None => Err(DecodeError::UnknownType(ty)),
    }
}

impl Datagram<'_> {
    /// The datagram's type.
    pub fn datagram_type(&self) -> DatagramType {
        match self {
            Self::Registration(_) => DatagramType::Registration,
            Self::Payload(_) => DatagramType::Payload,
            Self::Icmp(_) => DatagramType::Icmp,
            Self::RegistrationResponse(_) => DatagramType::RegistrationResponse,
        }
    }

    /// Bytes [`Datagram::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Registration(d) => d.encoded_len(),
            Self::Payload(d) => d.encoded_len(),
            Self::Icmp(d) => d.encoded_len(),
            Self::RegistrationResponse(d) => d.encoded_len(),
        }
    }

    /// Encodes into `out`, returning the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::Registration(d) => d.encode(out),
            Self::Payload(d) => d.encode(out),
            Self::Icmp(d) => d.encode(out),
            Self::RegistrationResponse(d) => d.encode(out),
        }
    }
}

/// Checks `out` can hold `need` bytes and returns exactly that prefix.
fn out_prefix(out: &mut [u8], need: usize) -> Result<&mut [u8], EncodeError> {
    let have = out.len();
    out.get_mut(..need)
        .ok_or(EncodeError::BufferTooSmall { need, have })
}

/// Reads the request id at `off`; callers have checked the length.
fn request_id_at(buf: &[u8], off: usize) -> RequestId {
    let mut id = [0u8; RequestId::LEN];
    id.copy_from_slice(&buf[off..off + RequestId::LEN]);
    RequestId::from_bytes(id)
}

fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

impl<'a> Registration<'a> {
    fn header_len(&self) -> usize {
        match self.dest {
            SocketAddr::V4(_) => REGISTRATION_V4_LEN,
            SocketAddr::V6(_) => REGISTRATION_V6_LEN,
        }
    }

    /// Bytes [`Registration::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Encodes into `out`, returning the length written. Payloads over 1280 bytes are refused.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        // cloudflared's check allows 1280 + header (a bug); the payload limit is what matters.
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(EncodeError::PayloadTooLarge(self.payload.len()));
        }
        let header_len = self.header_len();
        let out = out_prefix(out, header_len + self.payload.len())?;
        let mut flags = 0;
        if self.traced {
            flags |= FLAG_TRACED;
        }
        if !self.payload.is_empty() {
            flags |= FLAG_BUNDLED;
        }
        out[0] = DatagramType::Registration as u8;
        out[2..4].copy_from_slice(&self.dest.port().to_be_bytes());
        out[4..6].copy_from_slice(&self.idle_hint_secs.to_be_bytes());
        out[6..22].copy_from_slice(&self.request_id.to_bytes());
        match self.dest.ip() {
            IpAddr::V4(ip) => out[22..26].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => {
                flags |= FLAG_IPV6;
                out[22..38].copy_from_slice(&ip.octets());
            }
        }
        out[1] = flags;
        out[header_len..].copy_from_slice(self.payload);
        Ok(out.len())
    }

    /// Decodes a registration datagram (type byte included).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        expect_type(buf, DatagramType::Registration)?;
        let flags = *buf.get(1).ok_or(DecodeError::RegistrationTooShort {
            len: buf.len(),
            need: REGISTRATION_V4_LEN,
        })?;
        let need = if flags & FLAG_IPV6 != 0 {
            REGISTRATION_V6_LEN
        } else {
            REGISTRATION_V4_LEN
        };
        if buf.len() < need {
            return Err(DecodeError::RegistrationTooShort {
                len: buf.len(),
                need,
            });
        }
        let ip = if flags & FLAG_IPV6 != 0 {
            let mut o = [0u8; 16];
            o.copy_from_slice(&buf[22..38]);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(buf[22], buf[23], buf[24], buf[25]))
        };
        // Like cloudflared, bytes after the header count only when the bundled flag says so.
        let payload = if flags & FLAG_BUNDLED != 0 {
            &buf[need..]
        } else {
            &[]
        };
        Ok(Self {
            request_id: request_id_at(buf, 6),
            dest: SocketAddr::new(ip, u16_at(buf, 2)),
            traced: flags & FLAG_TRACED != 0,
            idle_hint_secs: u16_at(buf, 4),
            payload,
        })
    }
}

impl<'a> Payload<'a> {
    /// Bytes [`Payload::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        PAYLOAD_HEADER_LEN + self.payload.len()
    }

    /// Encodes header and payload into `out` (a copy; see [`frame_payload_in_place`] for none).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(EncodeError::PayloadTooLarge(self.payload.len()));
        }
        let out = out_prefix(out, self.encoded_len())?;
        let (header, body) = out.split_at_mut(PAYLOAD_HEADER_LEN);
        write_payload_header(header, self.request_id)?;
        body.copy_from_slice(self.payload);
        Ok(out.len())
    }

    /// Decodes a payload datagram (type byte included).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        expect_type(buf, DatagramType::Payload)?;
        if !(PAYLOAD_HEADER_LEN..=MAX_PAYLOAD_DATAGRAM_LEN).contains(&buf.len()) {
            return Err(DecodeError::PayloadInvalidSize(buf.len()));
        }
        Ok(Self {
            request_id: request_id_at(buf, 1),
            payload: &buf[PAYLOAD_HEADER_LEN..],
        })
    }
}

/// Writes the 17-byte payload header at the start of `buf`.
pub fn write_payload_header(buf: &mut [u8], request_id: RequestId) -> Result<(), EncodeError> {
    let header = out_prefix(buf, PAYLOAD_HEADER_LEN)?;
    header[0] = DatagramType::Payload as u8;
    header[1..].copy_from_slice(&request_id.to_bytes());
    Ok(())
}

/// Frames a payload that already sits at `buf[PAYLOAD_HEADER_LEN..][..payload_len]` by writing the
/// header in front of it; returns the datagram length. No copy of the payload is made, so an
/// origin read can land straight in a reusable datagram buffer.
pub fn frame_payload_in_place(
    buf: &mut [u8],
    request_id: RequestId,
    payload_len: usize,
) -> Result<usize, EncodeError> {
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(EncodeError::PayloadTooLarge(payload_len));
    }
    let len = PAYLOAD_HEADER_LEN + payload_len;
    out_prefix(buf, len)?;
    write_payload_header(buf, request_id)?;
    Ok(len)
}

impl<'a> Icmp<'a> {
    /// Bytes [`Icmp::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + self.packet.len()
    }

    /// Encodes into `out`, refusing empty or over-1280-byte packets as cloudflared does.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        check_icmp_len(self.packet.len())?;
        let out = out_prefix(out, self.encoded_len())?;
        out[0] = DatagramType::Icmp as u8;
        out[1..].copy_from_slice(self.packet);
        Ok(out.len())
    }

    /// Decodes an ICMP datagram (type byte included); the packet is borrowed, not copied.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        expect_type(buf, DatagramType::Icmp)?;
        let packet = &buf[1..];
        if packet.is_empty() {
            return Err(DecodeError::IcmpMissing);
        }
        if packet.len() > MAX_PAYLOAD_LEN {
            return Err(DecodeError::IcmpTooLarge(packet.len()));
        }
        Ok(Self { packet })
    }
}

fn check_icmp_len(len: usize) -> Result<(), EncodeError> {
    match len {
        0 => Err(EncodeError::IcmpMissing),
        n if n > MAX_PAYLOAD_LEN => Err(EncodeError::IcmpTooLarge(n)),
        _ => Ok(()),
    }
}

/// Frames an IP packet that already sits at `buf[1..][..packet_len]` as an ICMP datagram.
pub fn frame_icmp_in_place(buf: &mut [u8], packet_len: usize) -> Result<usize, EncodeError> {
    check_icmp_len(packet_len)?;
    let out = out_prefix(buf, 1 + packet_len)?;
    out[0] = DatagramType::Icmp as u8;
    Ok(out.len())
}

impl<'a> RegistrationResponse<'a> {
    /// Bytes [`RegistrationResponse::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        RESPONSE_HEADER_LEN + self.error_msg.len()
    }

    /// Encodes into `out`; messages over 1260 bytes are refused.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let msg = self.error_msg.as_bytes();
        if msg.len() > MAX_RESPONSE_MSG_LEN {
            return Err(EncodeError::MessageTooLong(msg.len()));
        }
        let out = out_prefix(out, self.encoded_len())?;
        out[0] = DatagramType::RegistrationResponse as u8;
        out[1] = self.code.to_u8();
        out[2..18].copy_from_slice(&self.request_id.to_bytes());
        // Fits: checked against 1260 above.
        out[18..20].copy_from_slice(&(msg.len() as u16).to_be_bytes());
        out[20..].copy_from_slice(msg);
        Ok(out.len())
    }

    /// Decodes a registration response (type byte included). The message is exactly the
    /// declared length; cloudflared instead takes every byte after the header.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        expect_type(buf, DatagramType::RegistrationResponse)?;
        if buf.len() < RESPONSE_HEADER_LEN {
            return Err(DecodeError::ResponseTooShort(buf.len()));
        }
        let declared = u16_at(buf, 18);
        if usize::from(declared) > MAX_RESPONSE_MSG_LEN {
            return Err(DecodeError::ResponseMsgTooLong(declared));
        }
        let rest = &buf[RESPONSE_HEADER_LEN..];
        let (msg, trailing) =
            rest.split_at_checked(declared.into())
                .ok_or(DecodeError::ResponseMsgTruncated {
                    declared,
                    available: rest.len(),
                })?;
        if !trailing.is_empty() {
            return Err(DecodeError::ResponseTrailingBytes(trailing.len()));
        }
        Ok(Self {
            request_id: request_id_at(buf, 2),
            code: ResponseCode::from_u8(buf[1]),
            error_msg: core::str::from_utf8(msg).map_err(|_| DecodeError::ResponseMsgNotUtf8)?,
        })
    }
}

/// Callers of the per-type decoders may hand any datagram; check it is the one they expect.
fn expect_type(buf: &[u8], want: DatagramType) -> Result<(), DecodeError> {
    match buf.first() {
        None => Err(DecodeError::Empty),
        Some(&b) if b == want as u8 => Ok(()),
        Some(&b) => Err(DecodeError::UnknownType(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_shows_32_lowercase_hex_digits() {
        let id = RequestId(0xAB);
        assert_eq!(id.to_string(), "000000000000000000000000000000ab");
        assert_eq!("000000000000000000000000000000AB".parse(), Ok(id));
        assert!("+00000000000000000000000000000ab"
            .parse::<RequestId>()
            .is_err());
        assert!("ab".parse::<RequestId>().is_err());
    }

    #[test]
    fn short_registrations_are_errors_not_panics() {
        for len in 0..REGISTRATION_V6_LEN {
            let mut buf = vec![0u8; len];
            if let Some(f) = buf.get_mut(1) {
                *f = FLAG_IPV6;
            }
            assert!(decode(&buf).is_err(), "len {len}");
        }
    }

    #[test]
    fn payload_framed_in_place_matches_copying_encode() {
        let id = RequestId(7);
        let mut in_place = [0u8; MAX_PAYLOAD_DATAGRAM_LEN];
        in_place[PAYLOAD_HEADER_LEN..PAYLOAD_HEADER_LEN + 3].copy_from_slice(b"abc");
        let n = frame_payload_in_place(&mut in_place, id, 3).unwrap();
        let mut copied = [0u8; 64];
        let m = Payload {
            request_id: id,
            payload: b"abc",
        }
        .encode(&mut copied)
        .unwrap();
        assert_eq!(&in_place[..n], &copied[..m]);
        assert_eq!(
            frame_payload_in_place(&mut in_place, id, MAX_PAYLOAD_LEN + 1),
            Err(EncodeError::PayloadTooLarge(MAX_PAYLOAD_LEN + 1))
        );
    }

    #[test]
    fn small_buffers_are_caller_errors() {
        let r = RegistrationResponse {
            request_id: RequestId(1),
            code: ResponseCode::Ok,
            error_msg: "",
        };
        assert_eq!(
            r.encode(&mut [0u8; 19]),
            Err(EncodeError::BufferTooSmall { need: 20, have: 19 })
        );
    }

    #[test]
    fn response_with_trailing_bytes_is_rejected() {
        let mut buf = [0u8; 21];
        buf[0] = 0x03;
        assert_eq!(decode(&buf), Err(DecodeError::ResponseTrailingBytes(1)));
    }
}
