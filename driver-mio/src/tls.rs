//! TLS trust for origins: each origin's client configuration (webpki roots plus `caPool`, or
//! no verification), built once per distinct option set and shared by its flows. (The
//! edge's roots are `burrow_os::settings::edge_roots`, shared with burrow-tokio.)

use std::collections::HashMap;
use std::sync::Arc;

use burrow_core::ingress::OriginRequest;
use burrow_core::quic::tls;

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
