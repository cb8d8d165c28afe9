//! What the in-process QUIC tests share.

use std::sync::Arc;

use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use quinn_proto::{ClientConfig, ServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// An edge server config with a fresh self-signed certificate for [`SERVER_NAME`], and a
/// connector client config trusting exactly that certificate; burrow's QUIC settings on both.
pub fn tls_pair() -> (ServerConfig, ClientConfig) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let settings = QuicSettings::default();
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer).unwrap(),
    ));
    server.transport_config(settings.transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).unwrap(),
    ));
    client.transport_config(settings.transport_config(true));
    (server, client)
}
