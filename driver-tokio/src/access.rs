//! Fetches Cloudflare Access signing keys (the I/O half of `originRequest.access`): the
//! connector says which team's certs URL to GET and when (`Io::FetchAccessKeys`); each
//! result goes back to it.

use std::sync::Arc;

use burrow_core::ingress::access::{FETCH_TIMEOUT, MAX_KEY_SET};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::info;

use crate::origin::Io;

/// Debug builds only: fetch every team's keys from this loopback `http://` base instead
/// (`Host` still names the team), so tests can serve their own key sets. Release builds do not
/// read it, so it cannot turn off Access checks in production.
const TEST_CERTS_BASE: &str = "BURROW_TEST_ACCESS_CERTS_BASE";

/// GET `url` within [`FETCH_TIMEOUT`]: the body of a 200, or why not.
pub async fn fetch(url: &str, roots: Arc<rustls::RootCertStore>) -> Result<Bytes, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, get(url, roots)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_owned()),
    }
}

/// GET `url` (https, or the debug-build test base); the body of a 200.
async fn get(url: &str, roots: Arc<rustls::RootCertStore>) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {url}"))?
        .to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let test_base = cfg!(debug_assertions)
        .then(|| std::env::var(TEST_CERTS_BASE).ok())
        .flatten();
    let io: Box<dyn Io> = match test_base {
        Some(base) => {
            let base: http::Uri = base
                .parse()
                .map_err(|e| format!("{TEST_CERTS_BASE}: {e}"))?;
            let addr: std::net::SocketAddr = base
                .authority()
                .map(|a| a.as_str())
                .unwrap_or("")
                .parse()
                .map_err(|e| format!("{TEST_CERTS_BASE} must be http://IP:PORT: {e}"))?;
            if base.scheme_str() != Some("http") || !addr.ip().is_loopback() {
                return Err(format!("{TEST_CERTS_BASE} must be a loopback http:// base"));
            }
            info!(%url, %addr, "debug build: fetching Access keys from the test base");
            Box::new(TcpStream::connect(addr).await.map_err(|e| e.to_string())?)
        }
        None => {
            if uri.scheme_str() != Some("https") {
                return Err(format!("{url} is not https"));
            }
            let target = format!("{host}:{}", uri.port_u16().unwrap_or(443));
            let tcp = crate::dial::dial(&target, FETCH_TIMEOUT, true)
                .await
                .map_err(|e| format!("dial {host}: {e}"))?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            Box::new(tls)
        }
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(
            http::header::USER_AGENT,
            concat!("burrow/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("oidc: get keys failed: {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_KEY_SET)
        .collect()
        .await
        .map_err(|e| format!("reading the key set: {e}"))?;
    Ok(body.to_bytes())
}
