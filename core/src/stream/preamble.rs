//! Stream preambles: the first bytes of every edge-opened stream say what it carries.
//!
//! A data stream starts with a 6-byte signature and a 2-byte version, then a `ConnectRequest`
//! (edge → connector) or `ConnectResponse` (connector → edge). An RPC stream starts with a
//! different 6-byte signature and no version; Cap'n Proto RPC messages follow at once. The
//! control stream (the connector's first stream) has no preamble at all.

use thiserror::Error;

/// Signature that opens a data stream, in both directions.
pub const DATA_STREAM_SIGNATURE: [u8; 6] = [0x0A, 0x36, 0xCD, 0x12, 0xA1, 0x3E];
/// Signature that opens an RPC stream (only the opener writes it).
pub const RPC_STREAM_SIGNATURE: [u8; 6] = [0x52, 0xBB, 0x82, 0x5C, 0xDB, 0x65];
/// The data-stream protocol version cloudflared writes: ASCII `"01"`.
pub const DATA_STREAM_VERSION: [u8; 2] = *b"01";
/// Length of a data-stream preamble (signature + version).
pub const DATA_PREAMBLE_LEN: usize = 8;
/// Length of an RPC-stream preamble (signature only).
pub const RPC_PREAMBLE_LEN: usize = 6;
/// The full data-stream preamble as cloudflared writes it.
pub const DATA_PREAMBLE: [u8; DATA_PREAMBLE_LEN] = [0x0A, 0x36, 0xCD, 0x12, 0xA1, 0x3E, b'0', b'1'];

/// What a stream's preamble announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Data stream; `version` is carried as received (cloudflared ignores its value).
    Data {
        /// The two version bytes, normally `"01"`.
        version: [u8; 2],
    },
    /// RPC stream.
    Rpc,
}

impl StreamKind {
    /// Bytes the preamble of this kind occupies.
    pub fn preamble_len(self) -> usize {
        match self {
            StreamKind::Data { .. } => DATA_PREAMBLE_LEN,
            StreamKind::Rpc => RPC_PREAMBLE_LEN,
        }
    }
}

/// The peer opened a stream with bytes that are not a known preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown stream signature {0:02x?}")]
pub struct UnknownSignature(pub [u8; 6]);

/// Reads a preamble from the start of `buf`.
///
/// Returns `Ok(None)` while fewer bytes than the preamble needs have arrived (so a sans-IO
/// caller can buffer and retry), `Ok(Some(kind))` once it is complete; the preamble occupies
/// `kind.preamble_len()` bytes. Unlike cloudflared, the version is read whole before use, so a
/// short read cannot desynchronise what follows.
pub fn parse(buf: &[u8]) -> Result<Option<StreamKind>, UnknownSignature> {
    let Some(sig) = buf.first_chunk::<6>() else {
        // Reject early if what has arrived already cannot be either signature.
        let prefix_ok =
            DATA_STREAM_SIGNATURE.starts_with(buf) || RPC_STREAM_SIGNATURE.starts_with(buf);
        if prefix_ok {
            return Ok(None);
        }
        let mut sig = [0u8; 6];
        sig[..buf.len()].copy_from_slice(buf);
        return Err(UnknownSignature(sig));
    };
    if *sig == RPC_STREAM_SIGNATURE {
        return Ok(Some(StreamKind::Rpc));
    }
    if *sig != DATA_STREAM_SIGNATURE {
        return Err(UnknownSignature(*sig));
    }
    Ok(buf.get(6..8).map(|v| StreamKind::Data {
        version: [v[0], v[1]],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_preamble_needs_all_eight_bytes() {
        for n in 0..DATA_PREAMBLE_LEN {
            assert_eq!(parse(&DATA_PREAMBLE[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert_eq!(
            parse(&DATA_PREAMBLE),
            Ok(Some(StreamKind::Data {
                version: DATA_STREAM_VERSION
            }))
        );
    }

    #[test]
    fn rpc_preamble_is_six_bytes_and_ignores_what_follows() {
        assert_eq!(parse(&RPC_STREAM_SIGNATURE), Ok(Some(StreamKind::Rpc)));
        let mut buf = RPC_STREAM_SIGNATURE.to_vec();
        buf.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&buf), Ok(Some(StreamKind::Rpc)));
        assert_eq!(StreamKind::Rpc.preamble_len(), 6);
    }

    #[test]
    fn wrong_bytes_fail_as_soon_as_they_arrive() {
        assert_eq!(
            parse(&[0x0A, 0x00]),
            Err(UnknownSignature([0x0A, 0, 0, 0, 0, 0]))
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(UnknownSignature(*b"GET / ")));
    }

    #[test]
    fn other_versions_are_carried_not_rejected() {
        let mut buf = DATA_STREAM_SIGNATURE.to_vec();
        buf.extend_from_slice(b"02");
        assert_eq!(parse(&buf), Ok(Some(StreamKind::Data { version: *b"02" })));
    }
}
