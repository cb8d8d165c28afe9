//! TLS of the HTTP/2 transport (PROTOCOL.md C§1.2): SNI `h2.cftunnel.com`, no ALPN, the same
//! roots and post-quantum key-exchange preferences as QUIC ([`crate::quic::tls`]). We offer TLS
//! 1.3 only, as on QUIC; Cloudflare's edge and Go's TLS both speak it.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::quic::tls::{no_resumption, provider, PostQuantum, TlsError};

/// SNI (and verified name) of HTTP/2 tunnel connections; no flag overrides it.
pub const SERVER_NAME: &str = "h2.cftunnel.com";

/// Connector (TLS client) configuration verifying the edge against `roots`.
pub fn client_config(roots: RootCertStore, pq: PostQuantum) -> Result<Arc<ClientConfig>, TlsError> {
    let mut tls = ClientConfig::builder_with_provider(provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = no_resumption();
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::HandshakeKind;

    /// Runs one handshake to completion over in-memory byte queues.
    fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> ClientConnection {
        let mut c = client_session(client.clone(), SERVER_NAME).expect("client");
        let mut s = server_session(server.clone()).expect("server");
        for _ in 0..20 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).expect("client writes");
            s.read_tls(&mut wire.as_slice()).expect("server reads");
            s.process_new_packets().expect("server accepts");
            let mut wire = Vec::new();
            s.write_tls(&mut wire).expect("server writes");
            c.read_tls(&mut wire.as_slice()).expect("client reads");
            c.process_new_packets().expect("client accepts");
            if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() {
                break;
            }
        }
        assert!(!c.is_handshaking(), "the handshake completes");
        c
    }

    #[test]
    fn the_connector_never_resumes_a_session_as_cloudflared_never_does() {
        let (server, client, _, _) = crate::http2::tests::tls_configs();
        assert_eq!(
            handshake(&client, &server).handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // The edge has sent its tickets by now; a resuming client would use one here.
        assert_eq!(
            handshake(&client, &server).handshake_kind(),
            Some(HandshakeKind::Full)
        );
    }

    #[test]
    fn the_edge_takes_the_suite_the_connector_offers_first_as_go_orders_them() {
        use rustls::CipherSuite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        let (server, client, _, _) = crate::http2::tests::tls_configs();
        let offered: Vec<_> = client
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let go_order = if crate::quic::tls::aes_gcm_in_hardware() {
            [
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ]
        } else {
            [
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
            ]
        };
        assert_eq!(offered, go_order);
        let c = handshake(&client, &server);
        assert_eq!(
            c.negotiated_cipher_suite().map(|s| s.suite()),
            Some(go_order[0])
        );
    }
}
