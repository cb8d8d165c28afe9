//! The management service's `access_token`: a JWT Cloudflare's API issues for one tunnel and
//! one actor. cloudflared (`management/token.go`) checks its form and claims but not its
//! signature (the edge has authenticated the caller before the request reaches the tunnel);
//! burrow does the same.

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use thiserror::Error;

/// The claims a management token must carry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The tunnel the token is for.
    #[serde(rename = "tun")]
    pub tunnel: Tunnel,
    /// Who asked for it; one streaming session per actor.
    pub actor: Actor,
}

/// The `tun` claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Tunnel {
    /// Tunnel ID.
    #[serde(default)]
    pub id: String,
    /// Account tag.
    #[serde(default)]
    pub account_tag: String,
}

/// The `actor` claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Actor {
    /// The actor's ID.
    #[serde(default)]
    pub id: String,
    /// Whether the actor is Cloudflare support.
    #[serde(default)]
    pub support: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a compact JWS, or its parts are not base64url JSON.
    #[error("malformed jwt: {0}")]
    Malformed(String),
    /// Signed with another algorithm than ES256.
    #[error("malformed jwt: unexpected signature algorithm {0:?}")]
    Algorithm(Algorithm),
    /// A required claim is empty.
    #[error("invalid management token format provided")]
    Claims,
}

/// Reads `token`'s claims as cloudflared's `ParseToken`: an ES256 compact JWS whose `tun.id`,
/// `tun.account_tag` and `actor.id` are set.
pub fn parse(token: &str) -> Result<Claims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(TokenError::Algorithm(header.alg));
    }
    // The signature must at least be base64url, as go-jose's parser insists.
    let signature = token.rsplit('.').next().unwrap_or("");
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| TokenError::Malformed(format!("signature: {e}")))?;
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    if claims.tunnel.id.is_empty()
        || claims.tunnel.account_tag.is_empty()
        || claims.actor.id.is_empty()
    {
        return Err(TokenError::Claims);
    }
    Ok(claims)
}

/// An ES256-headed token with these claims and a dummy signature, for tests that play
/// Cloudflare's API (the service checks the signature's encoding, not the signature).
pub fn forge(tunnel_id: &str, account_tag: &str, actor: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let header = b64(r#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "tun": {"id": tunnel_id, "account_tag": account_tag},
        "actor": {"id": actor, "support": false},
    });
    let body = b64(&claims.to_string());
    format!("{header}.{body}.{}", b64("not-checked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_and_checked() {
        let c = parse(&forge("t1", "acct", "me")).unwrap();
        assert_eq!(c.tunnel.id, "t1");
        assert_eq!(c.actor.id, "me");
        assert_eq!(parse(&forge("t1", "", "me")), Err(TokenError::Claims));
        assert_eq!(parse(&forge("t1", "a", "")), Err(TokenError::Claims));
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let hs = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"tun":{"id":"t","account_tag":"a"},"actor":{"id":"x"}}"#),
            b64("s")
        );
        assert_eq!(parse(&hs), Err(TokenError::Algorithm(Algorithm::HS256)));
        for bad in ["", "a.b", "a.b.c", "...", "x.y.z.w"] {
            assert!(matches!(parse(bad), Err(TokenError::Malformed(_))), "{bad}");
        }
        let t = forge("t", "a", "x");
        assert!(parse(&format!("{t}!")).is_err());
    }
}
