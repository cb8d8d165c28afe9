//! cloudflared's serialized response headers (PROTOCOL.md C§1.7).
//!
//! Over HTTP/2 the connector does not send the origin's headers as HTTP/2 headers: they travel
//! in one header, `cf-cloudflared-response-headers`, as `b64(name):b64(value)` pairs joined by
//! `;`, base64 being the standard alphabet without padding (`connection/header.go`,
//! `SerializeHeaders`). Names are in Go's canonical form (`Content-Type`), one pair per value.
//! Request headers are not serialized: they arrive as ordinary HTTP/2 headers.

use base64::alphabet::STANDARD;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

/// Go's `base64.RawStdEncoding`: no padding written or accepted, non-zero trailing bits accepted
/// (Go's decoder is not `Strict`).
const RAW_STD: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The serialized blob could not be decoded (cloudflared: "Unable to deserialize headers").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderDecodeError {
    /// A `;`-separated pair did not have exactly one `:`.
    #[error("serialized header pair {index} is not name:value")]
    NotAPair {
        /// Zero-based index of the pair.
        index: usize,
    },
    /// A name or value was not valid unpadded standard base64.
    #[error("serialized header pair {index} is not valid base64")]
    Base64 {
        /// Zero-based index of the pair.
        index: usize,
    },
    /// The decoded name or value cannot be an HTTP header.
    #[error("serialized header pair {index} is not a valid HTTP header")]
    InvalidHeader {
        /// Zero-based index of the pair.
        index: usize,
    },
}

/// Whether an origin response header is internal to the tunnel and must not reach the eyeball:
/// `lower` is the lower-cased name (`IsControlResponseHeader`).
pub fn is_control_response_header(lower: &[u8]) -> bool {
    [&b":"[..], b"cf-int-", b"cf-cloudflared-", b"cf-proxy-"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
}

/// Headers a WebSocket client needs, always forwarded (`IsWebsocketClientHeader`).
pub fn is_websocket_client_header(lower: &[u8]) -> bool {
    matches!(lower, b"sec-websocket-accept" | b"connection" | b"upgrade")
}

/// Appends `name` in Go's canonical MIME form (`textproto.CanonicalMIMEHeaderKey`): first letter
/// and each letter after `-` upper case, the rest lower case; a name holding a byte that is not a
/// token character is kept as it is, as Go keeps it.
pub fn push_canonical(name: &[u8], out: &mut Vec<u8>) {
    if !name.iter().all(|&b| is_token_byte(b)) {
        out.extend_from_slice(name);
        return;
    }
    let mut upper = true;
    for &b in name {
        out.push(if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        });
        upper = b == b'-';
    }
}

/// RFC 7230 `tchar`, as Go's `validHeaderFieldByte`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Encodes origin response headers into `out` (cleared first) as cloudflared's
/// `cf-cloudflared-response-headers` value: control headers dropped (WebSocket client headers
/// kept), names canonicalized, one pair per value, in the order given. `scratch` is reused for
/// the canonical name.
pub fn encode_user_headers<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut String,
    scratch: &mut Vec<u8>,
) {
    out.clear();
    for (name, value) in headers {
        scratch.clear();
        scratch.extend(name.iter().map(u8::to_ascii_lowercase));
        if is_control_response_header(scratch) && !is_websocket_client_header(scratch) {
            continue;
        }
        scratch.clear();
        push_canonical(name, scratch);
        if !out.is_empty() {
            out.push(';');
        }
        RAW_STD.encode_string(&scratch[..], out);
        out.push(':');
        RAW_STD.encode_string(value, out);
    }
}

/// [`encode_user_headers`] over a `HeaderMap`.
pub fn encode_header_map(headers: &HeaderMap, out: &mut String, scratch: &mut Vec<u8>) {
    encode_user_headers(
        headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        out,
        scratch,
    );
}

/// Decoded `(name, value)` pairs, in order.
pub type HeaderPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The pairs of a serialized blob, decoded, as cloudflared's `DeserializeHeaders`: empty pairs
/// skipped, any other pair must be exactly `name:value`. The output is no larger than the input,
/// which the HTTP/2 header-list limit bounds.
pub fn decode(serialized: &[u8]) -> Result<HeaderPairs, HeaderDecodeError> {
    let mut pairs = Vec::new();
    for (index, pair) in serialized.split(|&b| b == b';').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let mut parts = pair.split(|&b| b == b':');
        let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(HeaderDecodeError::NotAPair { index });
        };
        let name = RAW_STD
            .decode(name)
            .map_err(|_| HeaderDecodeError::Base64 { index })?;
        let value = RAW_STD
            .decode(value)
            .map_err(|_| HeaderDecodeError::Base64 { index })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// [`decode`] into `map` (appending, so repeated names keep every value in order); a pair that
/// is not a valid HTTP header is an error.
pub fn decode_into_map(serialized: &[u8], map: &mut HeaderMap) -> Result<(), HeaderDecodeError> {
    for (index, (name, value)) in decode(serialized)?.into_iter().enumerate() {
        let invalid = || HeaderDecodeError::InvalidHeader { index };
        let name = HeaderName::from_bytes(&name).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(&value).map_err(|_| invalid())?;
        map.append(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_pairs(pairs: &[(&str, &str)]) -> String {
        let mut out = String::new();
        encode_user_headers(
            pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &mut out,
            &mut Vec::new(),
        );
        out
    }

    #[test]
    fn content_type_matches_protocol_example() {
        // PROTOCOL.md C§1.7: `Content-Type: text/plain` ⇒ `Q29udGVudC1UeXBl:dGV4dC9wbGFpbg`.
        assert_eq!(
            encode_pairs(&[("content-type", "text/plain")]),
            "Q29udGVudC1UeXBl:dGV4dC9wbGFpbg"
        );
    }

    #[test]
    fn control_headers_are_dropped_and_websocket_headers_kept() {
        let blob = encode_pairs(&[
            (":status", "200"),
            ("cf-int-x", "1"),
            ("CF-Cloudflared-Foo", "1"),
            ("cf-proxy-y", "1"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let pairs = decode(blob.as_bytes()).unwrap();
        let text: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            text,
            [("Upgrade", "websocket"), ("X-A", "1"), ("X-A", "2")]
                .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn no_user_headers_is_an_empty_blob() {
        assert_eq!(encode_pairs(&[]), "");
        assert_eq!(decode(b"").unwrap(), Vec::new());
    }

    #[test]
    fn canonical_form_is_gos() {
        let canon = |n: &str| {
            let mut v = Vec::new();
            push_canonical(n.as_bytes(), &mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(canon("x-forwarded-FOR"), "X-Forwarded-For");
        assert_eq!(canon("etag"), "Etag");
        assert_eq!(canon("www-authenticate"), "Www-Authenticate");
        // A byte outside the token set leaves the name untouched, as Go does.
        assert_eq!(canon("bad name"), "bad name");
    }

    #[test]
    fn decoder_follows_gos_rules() {
        // Empty pairs are skipped; padding and extra colons are refused.
        assert_eq!(
            decode(b";;eA:eQ;").unwrap(),
            vec![(b"x".to_vec(), b"y".to_vec())]
        );
        assert_eq!(
            decode(b"eA==:eQ"),
            Err(HeaderDecodeError::Base64 { index: 0 })
        );
        assert_eq!(
            decode(b"eA:eQ:eQ"),
            Err(HeaderDecodeError::NotAPair { index: 0 })
        );
        assert_eq!(decode(b"eA"), Err(HeaderDecodeError::NotAPair { index: 0 }));
        // Go's non-strict decoder accepts non-zero trailing bits (`eR` decodes to `y`).
        assert_eq!(
            decode(b"eA:eR").unwrap(),
            vec![(b"x".to_vec(), b"y".to_vec())]
        );
        let mut map = HeaderMap::new();
        assert_eq!(
            decode_into_map(b"IA:eQ", &mut map),
            Err(HeaderDecodeError::InvalidHeader { index: 0 })
        );
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec(
            ("[A-Z][a-z0-9]{0,6}(-[A-Z][a-z0-9]{0,6}){0,2}", proptest::collection::vec(any::<u8>(), 0..40)),
            0..12,
        )) {
            let mut out = String::new();
            encode_user_headers(
                pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())),
                &mut out,
                &mut Vec::new(),
            );
            let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .filter(|(n, _)| {
                    let lower = n.to_ascii_lowercase();
                    !is_control_response_header(lower.as_bytes())
                })
                .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
                .collect();
            prop_assert_eq!(decode(out.as_bytes()).unwrap(), expected);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = decode_into_map(&bytes, &mut HeaderMap::new());
        }
    }
}
