//! The shapes of cloudflared's `config.yml` and of the remote configuration the edge pushes.

use serde::Deserialize;

use super::duration::Dur;
use super::{Ingress, IngressError};

/// `originRequest` as written: every key optional; unknown keys are ignored (cloudflared only
/// warns about them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginRequestConfig {
    /// `connectTimeout`.
    pub connect_timeout: Option<Dur>,
    /// `tlsTimeout`.
    pub tls_timeout: Option<Dur>,
    /// `tcpKeepAlive`.
    pub tcp_keep_alive: Option<Dur>,
    /// `noHappyEyeballs` (parsed; the driver's dialer has no happy eyeballs anyway).
    pub no_happy_eyeballs: Option<bool>,
    /// `keepAliveConnections`.
    pub keep_alive_connections: Option<u32>,
    /// `keepAliveTimeout`.
    pub keep_alive_timeout: Option<Dur>,
    /// `httpHostHeader`.
    pub http_host_header: Option<String>,
    /// `originServerName`.
    pub origin_server_name: Option<String>,
    /// `matchSNItoHost`.
    #[serde(rename = "matchSNItoHost")]
    pub match_sni_to_host: Option<bool>,
    /// `caPool`.
    pub ca_pool: Option<String>,
    /// `noTLSVerify`.
    #[serde(rename = "noTLSVerify")]
    pub no_tls_verify: Option<bool>,
    /// `disableChunkedEncoding`.
    pub disable_chunked_encoding: Option<bool>,
    /// `http2Origin` (parsed; origins are spoken to in HTTP/1.1).
    pub http2_origin: Option<bool>,
}

/// One rule as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RawRule {
    /// `hostname`.
    pub hostname: Option<String>,
    /// `path` (a regex).
    pub path: Option<String>,
    /// `service`.
    pub service: String,
    /// `originRequest`.
    pub origin_request: Option<OriginRequestConfig>,
}

/// `warp-routing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WarpRoutingConfig {
    /// `connectTimeout`.
    pub connect_timeout: Option<Dur>,
    /// `maxActiveFlows`.
    pub max_active_flows: Option<u64>,
    /// `tcpKeepAlive`.
    pub tcp_keep_alive: Option<Dur>,
}

/// cloudflared's `config.yml`: ingress plus the flag names the daemon reads from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    /// `tunnel`: UUID (or name).
    pub tunnel: Option<String>,
    /// `credentials-file`.
    #[serde(rename = "credentials-file")]
    pub credentials_file: Option<String>,
    /// `url`.
    pub url: Option<String>,
    /// `metrics`.
    pub metrics: Option<String>,
    /// `loglevel`.
    pub loglevel: Option<String>,
    /// `protocol`.
    pub protocol: Option<String>,
    /// `grace-period`.
    #[serde(rename = "grace-period")]
    pub grace_period: Option<Dur>,
    /// `ingress`.
    pub ingress: Vec<RawRule>,
    /// Global `originRequest`.
    #[serde(rename = "originRequest")]
    pub origin_request: OriginRequestConfig,
    /// `warp-routing`.
    #[serde(rename = "warp-routing")]
    pub warp_routing: WarpRoutingConfig,
}

impl ConfigFile {
    /// Parses `config.yml` text. serde_yaml_ng is a maintained fork of the archived serde_yaml
    /// with the same YAML 1.1 behaviour Go's yaml.v3 accepts for these files.
    pub fn from_yaml(text: &str) -> Result<Self, IngressError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| IngressError::Syntax(e.to_string()))
    }

    /// The validated ingress, or `None` when the file has no rules.
    pub fn ingress(&self) -> Result<Option<Ingress>, IngressError> {
        if self.ingress.is_empty() {
            return Ok(None);
        }
        Ingress::new(&self.ingress, &self.origin_request).map(Some)
    }
}

/// The remote configuration JSON the edge pushes (`UpdateConfiguration`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RemoteConfig {
    /// `ingress`.
    pub ingress: Vec<RawRule>,
    /// `originRequest`.
    #[serde(rename = "originRequest")]
    pub origin_request: OriginRequestConfig,
    /// `warp-routing`.
    #[serde(rename = "warp-routing")]
    pub warp_routing: WarpRoutingConfig,
}

impl RemoteConfig {
    /// Parses and validates a pushed configuration.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, Ingress), IngressError> {
        let c: Self =
            serde_json::from_slice(bytes).map_err(|e| IngressError::Syntax(e.to_string()))?;
        let ingress = Ingress::new(&c.ingress, &c.origin_request)?;
        Ok((c, ingress))
    }
}
