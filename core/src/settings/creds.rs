//! Tunnel credentials as cloudflared stores them (PROTOCOL.md C§4.1-4.2): the base64 token
//! `{a, t, s, e}` and the credentials file `{AccountTag, TunnelSecret, TunnelID, Endpoint}`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// What a connector authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Account tag.
    pub account_tag: String,
    /// Tunnel secret bytes.
    pub secret: Vec<u8>,
    /// Tunnel UUID.
    pub tunnel_id: Uuid,
    /// `Endpoint` / token `e` (e.g. `fed`), empty when unset.
    pub endpoint: String,
}

/// Credentials that cannot be used.
#[derive(Debug, Error)]
pub enum CredsError {
    /// cloudflared's words for a bad token.
    #[error("Provided Tunnel token is not valid.")]
    BadToken,
    /// The credentials file does not parse.
    #[error("invalid credentials file {path}: {reason}")]
    BadFile {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct Token {
    a: String,
    s: String,
    t: Uuid,
    #[serde(default)]
    e: String,
}

/// The credentials file's JSON. cloudflared writes Go field names; reading is
/// case-insensitive there, so the common lower-case spellings are accepted too.
#[derive(Serialize, Deserialize)]
struct File {
    #[serde(rename = "AccountTag", alias = "accountTag", alias = "accounttag")]
    account_tag: String,
    #[serde(
        rename = "TunnelSecret",
        alias = "tunnelSecret",
        alias = "tunnelsecret"
    )]
    tunnel_secret: String,
    #[serde(
        rename = "TunnelID",
        alias = "tunnelID",
        alias = "tunnelId",
        alias = "tunnelid"
    )]
    tunnel_id: Uuid,
    #[serde(rename = "Endpoint", alias = "endpoint", default)]
    endpoint: String,
}

impl Credentials {
    /// Parses a `--token` value (base64 std with padding, of JSON).
    pub fn from_token(token: &str) -> Result<Self, CredsError> {
        let json = STANDARD
            .decode(token.trim())
            .map_err(|_| CredsError::BadToken)?;
        let t: Token = serde_json::from_slice(&json).map_err(|_| CredsError::BadToken)?;
        let secret = STANDARD.decode(&t.s).map_err(|_| CredsError::BadToken)?;
        Ok(Self {
            account_tag: t.a,
            secret,
            tunnel_id: t.t,
            endpoint: t.e,
        })
    }

    /// The token for these credentials.
    pub fn to_token(&self) -> String {
        let mut v = serde_json::json!({
            "a": self.account_tag,
            "s": STANDARD.encode(&self.secret),
            "t": self.tunnel_id.to_string(),
        });
        if !self.endpoint.is_empty() {
            v["e"] = self.endpoint.clone().into();
        }
        STANDARD.encode(v.to_string())
    }

    /// Parses a credentials file's contents.
    pub fn from_file_json(path: &str, bytes: &[u8]) -> Result<Self, CredsError> {
        let bad = |reason: String| CredsError::BadFile {
            path: path.into(),
            reason,
        };
        let f: File = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let secret = STANDARD
            .decode(&f.tunnel_secret)
            .map_err(|e| bad(format!("TunnelSecret: {e}")))?;
        Ok(Self {
            account_tag: f.account_tag,
            secret,
            tunnel_id: f.tunnel_id,
            endpoint: f.endpoint,
        })
    }

    /// The credentials file's JSON, as cloudflared writes it.
    pub fn to_file_json(&self) -> String {
        let f = File {
            account_tag: self.account_tag.clone(),
            tunnel_secret: STANDARD.encode(&self.secret),
            tunnel_id: self.tunnel_id,
            endpoint: self.endpoint.clone(),
        };
        serde_json::to_string(&f).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_cloudflared_shape() {
        let c = Credentials {
            account_tag: "acc".into(),
            secret: vec![1; 32],
            tunnel_id: Uuid::from_u128(5),
            endpoint: String::new(),
        };
        let t = c.to_token();
        assert_eq!(Credentials::from_token(&t).expect("valid"), c);
        let json = String::from_utf8(STANDARD.decode(&t).expect("b64")).expect("utf8");
        assert!(json.contains("\"a\":\"acc\""));
        assert!(Credentials::from_token("not-base64!").is_err());
        assert_eq!(
            Credentials::from_token(&STANDARD.encode("{}"))
                .expect_err("bad")
                .to_string(),
            "Provided Tunnel token is not valid."
        );
    }

    #[test]
    fn credentials_file_round_trip() {
        let c = Credentials {
            account_tag: "acc".into(),
            secret: vec![9; 32],
            tunnel_id: Uuid::from_u128(77),
            endpoint: String::new(),
        };
        let json = c.to_file_json();
        assert!(json.starts_with("{\"AccountTag\":\"acc\",\"TunnelSecret\":"));
        assert_eq!(
            Credentials::from_file_json("x", json.as_bytes()).expect("ok"),
            c
        );
        assert!(Credentials::from_file_json("x", b"{\"AccountTag\":1}").is_err());
    }
}
