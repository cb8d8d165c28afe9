//! TLS trust for HTTPS origins, shared by both drivers: cloudflared trusts the system store
//! (webpki's roots stand in where a box has none), and each rule's `caPool` adds to it.
//! Configurations are built once per distinct option set, not per request.

use std::collections::HashMap;
use std::sync::Arc;

use burrow_core::ingress::no_tls_verify::NoVerify;
use burrow_core::ingress::OriginRequest;
use burrow_core::quic::tls::certs_from_pem;
use tracing::debug;

/// The roots HTTPS origins and Access key sets are checked against: webpki's roots and the
/// system store.
pub fn web_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let system = rustls_native_certs::load_native_certs();
    let (added, skipped) = roots.add_parsable_certificates(system.certs);
    debug!(added, skipped, "origin roots: webpki and the system store");
    roots
}

/// What sets one origin client configuration apart from another.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    no_tls_verify: bool,
    ca_pool: Option<String>,
    /// `h2` offered before `http/1.1` (`http2Origin`).
    http2: bool,
}

/// Origin client configurations, built at first use and kept by option set.
pub struct OriginTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Built at the first verified HTTPS origin: a box serving only plain HTTP never reads
    /// the system store.
    roots: Option<Arc<rustls::RootCertStore>>,
    configs: HashMap<Key, Arc<rustls::ClientConfig>>,
}

impl OriginTls {
    /// No configuration built yet; `roots` when the caller already holds [`web_roots`].
    pub fn new(roots: Option<Arc<rustls::RootCertStore>>) -> Self {
        Self {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            roots,
            configs: HashMap::new(),
        }
    }

    /// The configuration for an origin with options `o`, offering `h2` first when `http2`.
    /// A `caPool` file is read once, when its first request comes.
    pub fn config(
        &mut self,
        o: &OriginRequest,
        http2: bool,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = Key {
            no_tls_verify: o.no_tls_verify,
            ca_pool: o.ca_pool.clone(),
            http2,
        };
        if let Some(c) = self.configs.get(&key) {
            return Ok(c.clone());
        }
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if o.no_tls_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(self.provider.clone())))
                .with_no_client_auth()
        } else {
            let base = self
                .roots
                .get_or_insert_with(|| Arc::new(web_roots()))
                .clone();
            let roots = match &o.ca_pool {
                None => Arc::unwrap_or_clone(base),
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| format!("caPool {path}: {e}"))?;
                    let mut roots = Arc::unwrap_or_clone(base);
                    for c in certs_from_pem(&pem, "caPool").map_err(|e| e.to_string())? {
                        roots.add(c).map_err(|e| e.to_string())?;
                    }
                    roots
                }
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        if http2 {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let config = Arc::new(config);
        self.configs.insert(key, config.clone());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_config_per_option_set() {
        let mut tls = OriginTls::new(Some(Arc::new(rustls::RootCertStore::empty())));
        let plain = OriginRequest::default();
        let a = tls.config(&plain, false).unwrap();
        let b = tls.config(&plain, false).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same options reuse one configuration"
        );
        let h2 = tls.config(&plain, true).unwrap();
        assert_eq!(
            h2.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(a.alpn_protocols.is_empty());
        let insecure = OriginRequest {
            no_tls_verify: true,
            ..OriginRequest::default()
        };
        assert!(!Arc::ptr_eq(&a, &tls.config(&insecure, false).unwrap()));
    }

    #[test]
    fn missing_ca_pool_is_a_clear_error() {
        let mut tls = OriginTls::new(Some(Arc::new(rustls::RootCertStore::empty())));
        let o = OriginRequest {
            ca_pool: Some("/nonexistent/ca.pem".into()),
            ..OriginRequest::default()
        };
        let e = tls.config(&o, false).unwrap_err();
        assert!(e.starts_with("caPool /nonexistent/ca.pem"), "{e}");
    }
}
