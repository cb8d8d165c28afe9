//! The server side of a WebSocket (RFC 6455) as cloudflared's TCP-over-WebSocket origins
//! speak it (`ssh://`, `rdp://`, `smb://`, `tcp://` rules; websocket/connection.go): the
//! eyeball's masked frames are unwrapped into a byte stream for the origin, origin bytes go
//! back as unmasked binary frames, pings are answered. Frames are decoded as they stream in,
//! so a frame of any length needs no more than its 14-byte header buffered.

use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455's GUID for `Sec-WebSocket-Accept`.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most bytes a server frame header takes.
pub const MAX_HEADER: usize = 10;

/// Longest control-frame payload (RFC 6455 5.5).
const MAX_CONTROL: usize = 125;

/// `Sec-WebSocket-Accept` for a request's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends a server (unmasked) frame with `opcode` and `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Text data frame.
pub const OP_TEXT: u8 = 1;
/// Binary data frame.
pub const OP_BINARY: u8 = 2;
/// Close frame.
pub const OP_CLOSE: u8 = 8;
/// Ping frame.
pub const OP_PING: u8 = 9;
/// Pong frame (answers to pings).
pub const OP_PONG: u8 = 10;

/// The eyeball broke the WebSocket protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A client frame without a mask.
    #[error("websocket: client frame not masked")]
    Unmasked,
    /// A control frame too long or fragmented.
    #[error("websocket: bad control frame")]
    BadControl,
    /// Reserved opcode or bits.
    #[error("websocket: reserved opcode or bits {0:#x}")]
    Reserved(u8),
}

/// What a decoded control frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The eyeball closed the WebSocket.
    Close,
    /// A data message ended (its last frame had FIN); `text` if it began as a text frame.
    MessageEnd {
        /// Whether the message is text (else binary).
        text: bool,
        /// The length `out` had when it ended: the message is the bytes since the previous
        /// end (several may end in one [`Decoder::feed`]).
        end: usize,
    },
}

/// Streaming decoder of client frames.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoder {
    head: Vec<u8>,
    left: u64,
    mask: [u8; 4],
    pos: usize,
    opcode: u8,
    /// The opcode the current data message began with (continuations keep it).
    message_op: u8,
    fin: bool,
    control: Vec<u8>,
    closed: bool,
}

impl Decoder {
    /// Decodes `data`: data-frame payload is appended to `out`, control frames returned in
    /// order. Bytes after a close frame are ignored.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<Vec<Control>, WsError> {
        let mut controls = Vec::new();
        while !data.is_empty() && !self.closed {
            if self.left == 0 {
                // Header: 2 bytes, then extended length, then the 4-byte mask.
                let need = self.header_len();
                let take = (need - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.head.len() < self.header_len() {
                    continue;
                }
                self.start_frame()?;
                if self.left == 0 {
                    self.end_frame(&mut controls, out.len());
                }
                continue;
            }
            let n = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let is_control = self.opcode >= 8;
            for &b in &data[..n] {
                let b = b ^ self.mask[self.pos & 3];
                self.pos += 1;
                if is_control {
                    self.control.push(b);
                } else {
                    out.push(b);
                }
            }
            data = &data[n..];
            self.left -= n as u64;
            if self.left == 0 {
                self.end_frame(&mut controls, out.len());
            }
        }
        Ok(controls)
    }

    fn header_len(&self) -> usize {
        let Some(&b1) = self.head.get(1) else {
            return 2;
        };
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    fn start_frame(&mut self) -> Result<(), WsError> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Reserved(b0));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        self.opcode = b0 & 0x0f;
        if matches!(self.opcode, 3..=7 | 11..=15) {
            return Err(WsError::Reserved(b0));
        }
        self.fin = b0 & 0x80 != 0;
        if matches!(self.opcode, OP_TEXT | OP_BINARY) {
            self.message_op = self.opcode;
        }
        let (len, mask_at) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if self.opcode >= 8 && (b0 & 0x80 == 0 || len > MAX_CONTROL as u64) {
            return Err(WsError::BadControl);
        }
        self.mask.copy_from_slice(&self.head[mask_at..mask_at + 4]);
        self.pos = 0;
        self.left = len;
        self.control.clear();
        Ok(())
    }

    fn end_frame(&mut self, controls: &mut Vec<Control>, end: usize) {
        match self.opcode {
            OP_PING => controls.push(Control::Ping(std::mem::take(&mut self.control))),
            OP_CLOSE => {
                self.closed = true;
                controls.push(Control::Close);
            }
            OP_PONG => {}
            _ if self.fin => controls.push(Control::MessageEnd {
                text: self.message_op == OP_TEXT,
                end,
            }),
            _ => {}
        }
        self.head.clear();
        self.control.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client (masked) frame, for tests that play the client.
    pub(crate) fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_of_every_length_decode_byte_by_byte_and_pings_are_returned() {
        let mut wire = Vec::new();
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        wire.extend(client_frame(OP_BINARY, b"hi", [1, 2, 3, 4]));
        wire.extend(client_frame(OP_PING, b"p", [9, 9, 9, 9]));
        wire.extend(client_frame(OP_BINARY, &big[..300], [5, 6, 7, 8]));
        wire.extend(client_frame(OP_BINARY, &big, [0xaa, 0xbb, 0xcc, 0xdd]));
        wire.extend(client_frame(OP_BINARY, b"", [0, 0, 0, 0]));
        wire.extend(client_frame(OP_CLOSE, b"", [1, 1, 1, 1]));
        wire.extend(client_frame(OP_BINARY, b"after close", [1, 1, 1, 1]));
        let want: Vec<u8> = [&b"hi"[..], &big[..300], &big].concat();
        for step in [1, 7, wire.len()] {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let mut controls = Vec::new();
            for chunk in wire.chunks(step) {
                controls.extend(d.feed(chunk, &mut out).unwrap());
            }
            assert_eq!(out, want, "step {step}");
            let end = |end| Control::MessageEnd { text: false, end };
            let want_controls = [
                end(2),
                Control::Ping(b"p".to_vec()),
                end(302),
                end(70_302),
                end(70_302),
                Control::Close,
            ];
            assert_eq!(controls, want_controls);
        }
    }

    #[test]
    fn a_fragmented_text_message_ends_once_with_its_first_opcode() {
        let mut first = client_frame(OP_TEXT, b"{\"type\":", [1, 2, 3, 4]);
        first[0] &= 0x7f; // no FIN
        let mut wire = first;
        wire.extend(client_frame(OP_PING, b"", [0; 4]));
        wire.extend(client_frame(0, b"\"x\"}", [5, 6, 7, 8]));
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let controls = d.feed(&wire, &mut out).unwrap();
        assert_eq!(out, b"{\"type\":\"x\"}");
        assert_eq!(
            controls,
            [
                Control::Ping(Vec::new()),
                Control::MessageEnd {
                    text: true,
                    end: 12
                }
            ]
        );
    }

    #[test]
    fn protocol_errors_are_refused() {
        let mut d = Decoder::default();
        assert_eq!(
            d.feed(&[0x82, 0x02, b'h', b'i'], &mut Vec::new()),
            Err(WsError::Unmasked)
        );
        let mut d = Decoder::default();
        assert_eq!(
            d.feed(&[0x89, 0x80 | 126, 0, 200, 1, 2, 3, 4], &mut Vec::new())
                .err(),
            Some(WsError::BadControl)
        );
        let mut d = Decoder::default();
        assert!(
            d.feed(&[0xc2, 0x80, 1, 2, 3, 4], &mut Vec::new()).is_err(),
            "RSV1 without an extension"
        );
    }

    #[test]
    fn server_frames_have_rfc_lengths() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_frame(&mut out, OP_BINARY, &vec![7; n]);
            let header = out.len() - n;
            assert!(header <= MAX_HEADER);
            assert_eq!(out[0], 0x82);
            assert_eq!(
                header,
                match n {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                }
            );
        }
    }
}
