//! TLS trust for both sides: the edge's roots (`--cacert`, else the system store and
//! Cloudflare's origin CAs) and each origin's client configuration (webpki roots plus
//! `caPool`, or no verification), built once per distinct option set and shared by its flows.

use std::collections::HashMap;
use std::sync::Arc;

use burrow_core::ingress::OriginRequest;
use burrow_core::quic::tls::{self, TlsError};
use tracing::{debug, warn};

/// Root certificates for the edge: `--cacert` alone, else cloudflared's default.
pub fn edge_roots(cacert: Option<&[u8]>) -> Result<rustls::RootCertStore, TlsError> {
    if let Some(pem) = cacert {
        return tls::roots_from_pem(pem, "--cacert");
    }
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        warn!(error = %e, "cannot read part of the system certificate store");
    }
    let (roots, skipped) = tls::edge_default_roots(system.certs)?;
    debug!(
        roots = roots.len(),
        skipped, "edge roots: system store and Cloudflare's origin CAs"
    );
    Ok(roots)
}

/// Origin client configurations by (`noTLSVerify`, `caPool`).
pub struct OriginTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    configs: HashMap<(bool, Option<String>), Arc<rustls::ClientConfig>>,
}

impl OriginTls {
    /// No configuration built yet (the webpki roots are built at the first HTTPS origin).
    pub fn new() -> Self {
        Self {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            configs: HashMap::new(),
        }
    }

    /// The configuration for an origin with options `o`.
    pub fn config(&mut self, o: &OriginRequest) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = (o.no_tls_verify, o.ca_pool.clone());
        if let Some(c) = self.configs.get(&key) {
            return Ok(c.clone());
        }
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if o.no_tls_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    burrow_core::ingress::no_tls_verify::NoVerify(self.provider.clone()),
                ))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(path) = &o.ca_pool {
                // Read once per distinct caPool, at its first request.
                let pem = std::fs::read(path).map_err(|e| format!("caPool {path}: {e}"))?;
                for c in tls::certs_from_pem(&pem, "caPool").map_err(|e| e.to_string())? {
                    roots.add(c).map_err(|e| e.to_string())?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let config = Arc::new(config);
        self.configs.insert(key, config.clone());
        Ok(config)
    }
}
