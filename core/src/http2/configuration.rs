//! Configuration pushes over HTTP/2 (PROTOCOL.md C§1.12): a stream marked
//! `update-configuration` whose body is `{"version": int32, "config": <JSON>}`, answered with an
//! implicit 200 and `{"lastAppliedVersion": N, "err": …}`. Versions are applied by
//! [`crate::rpc_stream::ConfigVersions`], as for the QUIC RPC path.

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::rpc_stream::ConfigUpdateResult;

/// Largest push body we collect. cloudflared streams it into a JSON decoder without a bound;
/// remote configurations (ingress rules, origin settings) are kilobytes.
pub const MAX_BODY: usize = 4 << 20;

/// A configuration push, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationPush {
    /// The offered version (absent: 0, as Go's zero value).
    pub version: i32,
    /// The configuration JSON, as sent (absent: `null`).
    pub config: String,
}

/// The body is not a configuration push (cloudflared answers 502, meta `cloudflared`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PushError {
    /// More than [`MAX_BODY`] bytes.
    #[error("configuration body larger than {MAX_BODY} bytes")]
    TooLarge,
    /// Not the expected JSON.
    #[error("configuration body is not valid: {0}")]
    Json(String),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    version: i32,
    #[serde(borrow, default)]
    config: Option<&'a RawValue>,
}

/// A push body being collected, bounded by [`MAX_BODY`].
#[derive(Debug, Default)]
pub struct PushBody(Vec<u8>);

impl PushBody {
    /// Appends body bytes.
    pub fn extend(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        if self.0.len() + bytes.len() > MAX_BODY {
            return Err(PushError::TooLarge);
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    /// Decodes the whole body as Go's `json.Decoder.Decode` reads it: the first JSON value,
    /// whatever follows it ignored.
    pub fn decode(&self) -> Result<ConfigurationPush, PushError> {
        let mut values = serde_json::Deserializer::from_slice(&self.0).into_iter::<Wire<'_>>();
        let wire = match values.next() {
            Some(Ok(wire)) => wire,
            Some(Err(e)) => return Err(PushError::Json(e.to_string())),
            None => return Err(PushError::Json("empty body".into())),
        };
        Ok(ConfigurationPush {
            version: wire.version,
            config: wire
                .config
                .map_or_else(|| "null".into(), |c| c.get().to_string()),
        })
    }
}

/// The response body: `{"lastAppliedVersion":N,"err":null}`, or with a Go `error` value,
/// which marshals as `{}` (its message is lost, as with cloudflared).
pub fn encode_result(result: &ConfigUpdateResult) -> Vec<u8> {
    let err = if result.error.is_some() { "{}" } else { "null" };
    format!(
        r#"{{"lastAppliedVersion":{},"err":{err}}}"#,
        result.latest_applied_version
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8]) -> Result<ConfigurationPush, PushError> {
        let mut b = PushBody::default();
        b.extend(body)?;
        b.decode()
    }

    #[test]
    fn decodes_as_gos_decoder() {
        let push = decode(br#"{"version": 3, "config": {"ingress": [ {"service": "http_status:404"} ]}} trailing"#).unwrap();
        assert_eq!(push.version, 3);
        assert_eq!(
            push.config,
            r#"{"ingress": [ {"service": "http_status:404"} ]}"#
        );
        assert_eq!(
            decode(b"{}").unwrap(),
            ConfigurationPush {
                version: 0,
                config: "null".into()
            }
        );
        assert!(matches!(
            decode(br#"{"version": 2147483648}"#),
            Err(PushError::Json(_))
        ));
        assert!(matches!(decode(b""), Err(PushError::Json(_))));
        assert!(matches!(decode(b"[1"), Err(PushError::Json(_))));
    }

    #[test]
    fn body_is_bounded() {
        let mut b = PushBody::default();
        b.extend(&vec![b' '; MAX_BODY]).unwrap();
        assert_eq!(b.extend(b"x"), Err(PushError::TooLarge));
    }

    #[test]
    fn result_json_is_cloudflareds() {
        let ok = ConfigUpdateResult {
            latest_applied_version: 7,
            error: None,
        };
        assert_eq!(
            encode_result(&ok),
            br#"{"lastAppliedVersion":7,"err":null}"#
        );
        let bad = ConfigUpdateResult {
            latest_applied_version: -1,
            error: Some("bad".into()),
        };
        assert_eq!(
            encode_result(&bad),
            br#"{"lastAppliedVersion":-1,"err":{}}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn round_trip(version in proptest::prelude::any::<i32>(), keys in proptest::collection::vec("[a-z]{1,8}", 0..5)) {
            let config = serde_json::to_string(&keys).unwrap();
            let body = format!(r#"{{"version":{version},"config":{config}}}"#);
            let push = decode(body.as_bytes()).unwrap();
            proptest::prop_assert_eq!(push, ConfigurationPush { version, config });
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
