//! The edge's TLS identity, one for QUIC and HTTP/2: given certificate files, or a local CA
//! generated under the state directory and a certificate for cloudflared's SNI names.

use std::path::{Path, PathBuf};

use burrow_core::http2;
use burrow_core::quic::tls;
use burrow_core::quic::SERVER_NAME;
use tracing::info;

use super::tunnels::{create_state_dir, write_private};

/// The edge's TLS identity: given files, or a local CA (kept under `dir`) and a certificate for
/// cloudflared's SNI names signed by it. Returns the chain, the key and the CA path if generated.
pub fn identity(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
        Option<PathBuf>,
    ),
    String,
> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if let (Some(c), Some(k)) = (cert, key) {
        let chain = tls::certs_from_pem(&read(c)?, "--cert").map_err(|e| e.to_string())?;
        let key = tls::key_from_pem(&read(k)?, "--key").map_err(|e| e.to_string())?;
        return Ok((chain, key, None));
    }
    create_state_dir(dir)?;
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("edge-cert.pem");
    let key_path = dir.join("edge-key.pem");
    if !(ca_path.exists() && cert_path.exists() && key_path.exists()) {
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "burrow local edge CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf = rcgen::CertificateParams::new(vec![
            SERVER_NAME.to_owned(),
            http2::tls::SERVER_NAME.to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| e.to_string())?
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem()))
            .map_err(|e| e.to_string())?;
        write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
        // Last: connectors (and tests) take the CA's presence to mean the identity is whole.
        std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| e.to_string())?;
        info!(ca = %ca_path.display(), "generated a local edge CA; connectors trust it with --cacert");
    }
    let chain =
        tls::certs_from_pem(&read(&cert_path)?, "edge-cert.pem").map_err(|e| e.to_string())?;
    let key = tls::key_from_pem(&read(&key_path)?, "edge-key.pem").map_err(|e| e.to_string())?;
    Ok((chain, key, Some(ca_path)))
}
