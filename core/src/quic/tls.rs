//! TLS for tunnel connections: TLS 1.3 only, ALPN `argotunnel`, post-quantum key exchange.
//!
//! cloudflared offers `X25519MLKEM768` first with a classical fallback (P-256), or, in strict
//! mode (`--post-quantum`), post-quantum groups only. We offer `X25519MLKEM768`, then X25519 and
//! P-256 in prefer mode, and `X25519MLKEM768` alone in strict mode. Certificates are verified
//! against the roots the caller gives; reading system roots or a CA file is the driver's job.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use thiserror::Error;

use super::ALPN;

/// Which key-exchange groups to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostQuantum {
    /// Post-quantum first, classical groups as fallback (cloudflared's default).
    #[default]
    Prefer,
    /// Post-quantum only; a peer without it fails the handshake.
    Strict,
}

/// TLS configuration could not be built from what the caller gave.
#[derive(Debug, Error)]
pub enum TlsError {
    /// rustls refused the configuration (bad key, unsupported suite...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration (no TLS 1.3 suite usable for QUIC).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// A PEM input held something that is not a certificate or key.
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Parser's complaint.
        source: rustls::pki_types::pem::Error,
    },
    /// A CA file held no certificate (cloudflared silently falls back to system roots here).
    #[error("no certificate found in {0}")]
    NoCertificates(&'static str),
}

pub(crate) fn provider(pq: PostQuantum) -> Arc<CryptoProvider> {
    use aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
    let kx_groups = match pq {
        PostQuantum::Prefer => vec![X25519MLKEM768, X25519, SECP256R1],
        PostQuantum::Strict => vec![X25519MLKEM768],
    };
    Arc::new(CryptoProvider {
        kx_groups,
        cipher_suites: cipher_suites(aes_gcm_in_hardware()),
        ..aws_lc_rs::default_provider()
    })
}

/// TLS 1.3 suites in Go's order, so our hello offers what cloudflared's does: AES-128-GCM
/// first where the CPU has AES-GCM instructions, ChaCha20-Poly1305 first where it has not (a
/// small ARM box). rustls' own order puts AES-256 first, 40% more AES rounds per byte on the
/// tunnel's bulk path for no security the tunnel asks for. The edge follows the hello's order.
fn cipher_suites(aes_gcm_in_hardware: bool) -> Vec<rustls::SupportedCipherSuite> {
    use aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes_gcm_in_hardware {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// Go's `hasAESGCMHardwareSupport`: AES and carry-less multiply instructions.
pub(crate) fn aes_gcm_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Client (connector) TLS for QUIC, verifying the edge against `roots`.
pub fn client_config(roots: RootCertStore, pq: PostQuantum) -> Result<QuicClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = no_resumption();
    QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))
}

/// The connector never resumes a TLS session, on QUIC or HTTP/2: cloudflared sets no
/// `ClientSessionCache`, so its ClientHello never carries a PSK, and ours match it. A resumed
/// hello would also carry the ticket's age read from the wall clock, which the machines must
/// not depend on (the simulator's traces did).
pub(crate) fn no_resumption() -> rustls::client::Resumption {
    rustls::client::Resumption::disabled()
}

/// Server (edge) TLS for QUIC with the given certificate chain and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pq: PostQuantum,
) -> Result<QuicServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))
}

/// Every certificate in a PEM bundle; an empty bundle is an error, never a silent fallback.
pub fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates(what));
    }
    Ok(certs)
}

/// A root store holding exactly the certificates of a PEM bundle (cloudflared's `--cacert`).
pub fn roots_from_pem(pem: &[u8], what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, what)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Cloudflare's Origin CA roots (ECC, RSA, Origin Pull), which cloudflared trusts for the edge
/// besides the system store: the edge's certificate chains to the ECC one, which no public
/// store holds (PROTOCOL.md A§1, `tlsconfig/cloudflare_ca.go`). Public trust anchors, as
/// Cloudflare publishes them.
pub const CLOUDFLARE_ROOTS_PEM: &[u8] = include_bytes!("cloudflare-roots.pem");

/// cloudflared's default roots for the edge: `system` (the platform store) plus
/// [`CLOUDFLARE_ROOTS_PEM`]. Certificates the store refuses are skipped, and counted in the
/// returned number, as cloudflared's pool skips what it cannot parse.
pub fn edge_default_roots(
    system: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<(RootCertStore, usize), TlsError> {
    let mut roots = roots_from_pem(CLOUDFLARE_ROOTS_PEM, "embedded Cloudflare roots")?;
    let (_, skipped) = roots.add_parsable_certificates(system);
    Ok((roots, skipped))
}

/// The first private key in a PEM file.
pub fn key_from_pem(pem: &[u8], what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| TlsError::Pem { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_cloudflare_roots_are_the_three_origin_cas() {
        let (roots, skipped) = edge_default_roots(Vec::new()).expect("embedded roots");
        assert_eq!((roots.len(), skipped), (3, 0));
        let has = |name: &str| {
            roots
                .roots
                .iter()
                .any(|r| r.subject.windows(name.len()).any(|w| w == name.as_bytes()))
        };
        assert!(has("CloudFlare Origin SSL ECC Certificate Authority"));
        assert!(has("CloudFlare Origin SSL Certificate Authority"));
        assert!(has("origin-pull.cloudflare.net"));
    }

    #[test]
    fn system_certificates_that_do_not_parse_are_skipped() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let (roots, skipped) = edge_default_roots([junk]).expect("roots");
        assert_eq!((roots.len(), skipped), (3, 1));
    }
}
