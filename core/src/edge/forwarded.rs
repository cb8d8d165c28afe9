//! What the edge tells the origin about an eyeball's request: its headers as `HttpHeader:`
//! metadata, minus those that describe this hop only, minus every `Cf-*` header the eyeball
//! sent (that namespace is the edge's: an origin trusts `Cf-Connecting-Ip` to be the real
//! peer), plus `Cf-Connecting-Ip` set from the TCP peer and one `X-Forwarded-For` chain ending
//! in it.

use std::net::IpAddr;

use crate::stream::connect::key;
use crate::stream::http1::header_key;

/// Request headers that describe this hop only (lower case).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// The eyeball's own `Cf-*` headers that reach the connector, as Cloudflare's edge passes
/// them: the Access token (this edge runs no Access of its own, and a connector with
/// `originRequest.access` checks its signature, so a forged one gains nothing) and the
/// bastion destination `cloudflared access --destination` sends.
pub const EYEBALL_CF_HEADERS: &[&str] = &["cf-access-jwt-assertion", "cf-access-jump-destination"];

/// `ConnectRequest` metadata for an eyeball's HTTP request from `peer`. `headers` are
/// (name, value) with names in lower case, as `http` keeps them.
pub fn request_metadata<'a>(
    method: &str,
    host: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    peer: IpAddr,
) -> Vec<(String, String)> {
    let mut metadata = vec![
        (key::HTTP_METHOD.to_owned(), method.to_owned()),
        (key::HTTP_HOST.to_owned(), host.to_owned()),
    ];
    let mut chain = String::new();
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name)
            || name == "host"
            || (name.starts_with("cf-") && !EYEBALL_CF_HEADERS.contains(&name))
        {
            continue;
        }
        if name == "x-forwarded-for" {
            for hop in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                chain.push_str(hop);
                chain.push_str(", ");
            }
            continue;
        }
        metadata.push((header_key(name), value.to_owned()));
    }
    let peer = peer.to_string();
    chain.push_str(&peer);
    metadata.push((format!("{}Cf-Connecting-Ip", key::HTTP_HEADER_PREFIX), peer));
    metadata.push((format!("{}X-Forwarded-For", key::HTTP_HEADER_PREFIX), chain));
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(m: &[(String, String)], name: &str) -> Vec<String> {
        m.iter()
            .filter(|(k, _)| k == &format!("HttpHeader:{name}"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn the_edge_owns_client_identity() {
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let m = request_metadata(
            "GET",
            "app.test",
            [
                ("cf-connecting-ip", "6.6.6.6"),
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("x-forwarded-for", "3.3.3.3"),
                ("cf-ray", "forged"),
                ("cf-ipcountry", "XX"),
                ("connection", "keep-alive"),
                ("host", "app.test"),
                ("accept", "*/*"),
            ],
            peer,
        );
        assert_eq!(headers_of(&m, "Cf-Connecting-Ip"), ["192.0.2.7"]);
        assert_eq!(
            headers_of(&m, "X-Forwarded-For"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7"]
        );
        assert!(headers_of(&m, "Cf-Ray").is_empty());
        assert!(headers_of(&m, "Cf-Ipcountry").is_empty());
        assert!(headers_of(&m, "Connection").is_empty());
        assert!(headers_of(&m, "Host").is_empty());
        assert_eq!(headers_of(&m, "Accept"), ["*/*"]);
        assert_eq!(m[0], ("HttpMethod".into(), "GET".into()));
        assert_eq!(m[1], ("HttpHost".into(), "app.test".into()));
    }

    #[test]
    fn without_a_chain_the_peer_starts_one() {
        let m = request_metadata("GET", "h", [], "::1".parse().expect("ip"));
        assert_eq!(headers_of(&m, "X-Forwarded-For"), ["::1"]);
    }
}
