//! TLS of the HTTP/2 transport (PROTOCOL.md C§1.2): SNI `h2.cftunnel.com`, no ALPN, the same
//! roots and post-quantum key-exchange preferences as QUIC ([`crate::quic::tls`]). We offer TLS
//! 1.3 only, as on QUIC; Cloudflare's edge and Go's TLS both speak it.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::quic::tls::{provider, PostQuantum, TlsError};

/// SNI (and verified name) of HTTP/2 tunnel connections; no flag overrides it.
pub const SERVER_NAME: &str = "h2.cftunnel.com";

/// Connector (TLS client) configuration verifying the edge against `roots`.
pub fn client_config(roots: RootCertStore, pq: PostQuantum) -> Result<Arc<ClientConfig>, TlsError> {
    let tls = ClientConfig::builder_with_provider(provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// Edge (TLS server) configuration with this certificate chain and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pq: PostQuantum,
) -> Result<Arc<ServerConfig>, TlsError> {
    let tls = ServerConfig::builder_with_provider(provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(tls))
}

/// A client TLS session toward `server_name` ([`SERVER_NAME`] against Cloudflare).
pub fn client_session(
    config: Arc<ClientConfig>,
    server_name: &str,
) -> Result<ClientConnection, TlsError> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
        TlsError::Rustls(rustls::Error::General(format!(
            "invalid server name {server_name:?}"
        )))
    })?;
    Ok(ClientConnection::new(config, name)?)
}

/// A server TLS session.
pub fn server_session(config: Arc<ServerConfig>) -> Result<ServerConnection, TlsError> {
    Ok(ServerConnection::new(config)?)
}
