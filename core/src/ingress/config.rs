//! The shapes of cloudflared's `config.yml` and of the remote configuration the edge pushes.

use std::net::{Ipv4Addr, Ipv6Addr};

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
    /// `noHappyEyeballs`.
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
    /// `http2Origin`: offer HTTP/2 to TLS origins.
    pub http2_origin: Option<bool>,
    /// `bastionMode`.
    pub bastion_mode: Option<bool>,
    /// `proxyType`: `socks` runs a SOCKS5 server over a TCP service's WebSocket.
    pub proxy_type: Option<String>,
    /// `proxyAddress`: only sent in the local configuration (cloudflared 2026.8.2 opens no
    /// listener for it).
    pub proxy_address: Option<String>,
    /// `proxyPort`: as `proxyAddress`.
    pub proxy_port: Option<u64>,
    /// `ipRules` (of a `socks-proxy` rule).
    pub ip_rules: Option<Vec<IpRuleConfig>>,
    /// `access`: Cloudflare Access JWT checks.
    pub access: Option<super::access::AccessConfig>,
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

/// The legacy `--url`-mode flags as config.yml keys (cloudflared reads any flag from the file);
/// they shape only the origin of `url`, `hello-world` or `unix-socket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct OriginFlagKeys {
    /// `no-tls-verify`.
    pub no_tls_verify: Option<bool>,
    /// `http-host-header`.
    pub http_host_header: Option<String>,
    /// `origin-ca-pool`.
    pub origin_ca_pool: Option<String>,
    /// `origin-server-name`.
    pub origin_server_name: Option<String>,
    /// `no-chunked-encoding`.
    pub no_chunked_encoding: Option<bool>,
    /// `bastion`.
    pub bastion: Option<bool>,
    /// `socks5`.
    pub socks5: Option<bool>,
    /// `http2-origin`.
    pub http2_origin: Option<bool>,
    /// `proxy-address`.
    pub proxy_address: Option<String>,
    /// `proxy-port`.
    pub proxy_port: Option<u64>,
    /// `proxy-no-happy-eyeballs`.
    pub proxy_no_happy_eyeballs: Option<bool>,
    /// `proxy-connect-timeout`.
    pub proxy_connect_timeout: Option<Dur>,
    /// `proxy-tls-timeout`.
    pub proxy_tls_timeout: Option<Dur>,
    /// `proxy-tcp-keepalive`.
    pub proxy_tcp_keepalive: Option<Dur>,
    /// `proxy-keepalive-connections`.
    pub proxy_keepalive_connections: Option<u32>,
    /// `proxy-keepalive-timeout`.
    pub proxy_keepalive_timeout: Option<Dur>,
}

/// One `ipRules` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct IpRuleConfig {
    /// `prefix`: a CIDR.
    pub prefix: Option<String>,
    /// `ports`.
    pub ports: Vec<i64>,
    /// `allow`.
    pub allow: bool,
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

/// cloudflared's `config.yml`: ingress plus every top-level key naming a `tunnel`/`tunnel run`
/// flag burrow acts on. cloudflared (urfave/cli altsrc) reads any flag from the file under its
/// own name, so these keys are the flag names with the flag's type: strings, lists as YAML
/// sequences, durations as `"30s"`. Other keys are not errors (cloudflared ignores what it does
/// not know, and burrow does not act on every cloudflared flag); they land in
/// [`ConfigFile::ignored_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// `tunnel`: UUID (or name).
    pub tunnel: Option<String>,
    /// `token`.
    pub token: Option<String>,
    /// `credentials-file`.
    pub credentials_file: Option<String>,
    /// `url`.
    pub url: Option<String>,
    /// `edge`: a list of `host:port`.
    pub edge: Option<Vec<String>>,
    /// `cacert`.
    pub cacert: Option<String>,
    /// `ha-connections`.
    pub ha_connections: Option<u8>,
    /// `grace-period`.
    pub grace_period: Option<Dur>,
    /// `edge-ip-version`: 4, 6 or auto.
    pub edge_ip_version: Option<String>,
    /// `edge-bind-address`.
    pub edge_bind_address: Option<std::net::IpAddr>,
    /// `region`.
    pub region: Option<String>,
    /// `metrics`.
    pub metrics: Option<String>,
    /// `loglevel`.
    pub loglevel: Option<String>,
    /// `protocol`.
    pub protocol: Option<String>,
    /// `features`: a list.
    pub features: Option<Vec<String>>,
    /// `tag`: a list of `KEY=VALUE`.
    pub tag: Option<Vec<String>>,
    /// `max-active-flows`.
    pub max_active_flows: Option<u64>,
    /// `icmpv4-src`.
    pub icmpv4_src: Option<Ipv4Addr>,
    /// `icmpv6-src`.
    pub icmpv6_src: Option<Ipv6Addr>,
    /// `post-quantum`.
    pub post_quantum: Option<bool>,
    /// `token-file`.
    pub token_file: Option<String>,
    /// `credentials-contents`.
    pub credentials_contents: Option<String>,
    /// `hello-world`.
    pub hello_world: Option<bool>,
    /// `unix-socket`.
    pub unix_socket: Option<String>,
    /// `logfile`.
    pub logfile: Option<String>,
    /// `pidfile`.
    pub pidfile: Option<String>,
    /// `log-directory`.
    pub log_directory: Option<String>,
    /// `retries`.
    pub retries: Option<u32>,
    /// `quic-disable-pmtu-discovery`.
    pub quic_disable_pmtu_discovery: Option<bool>,
    /// `quic-connection-level-flow-control-limit`.
    pub quic_connection_level_flow_control_limit: Option<u64>,
    /// `quic-stream-level-flow-control-limit`.
    pub quic_stream_level_flow_control_limit: Option<u64>,
    /// `write-stream-timeout`.
    pub write_stream_timeout: Option<Dur>,
    /// `rpc-timeout`.
    pub rpc_timeout: Option<Dur>,
    /// `max-edge-addr-retries`.
    pub max_edge_addr_retries: Option<i64>,
    /// `management-hostname`.
    pub management_hostname: Option<String>,
    /// `management-diagnostics`.
    pub management_diagnostics: Option<bool>,
    /// `label`.
    pub label: Option<String>,
    /// `service-op-ip`.
    pub service_op_ip: Option<String>,
    /// The single origin's flag keys (`no-tls-verify`, ...).
    #[serde(flatten)]
    pub origin_flags: OriginFlagKeys,
    /// `ingress`.
    pub ingress: Vec<RawRule>,
    /// Global `originRequest`.
    #[serde(rename = "originRequest")]
    pub origin_request: OriginRequestConfig,
    /// `warp-routing`.
    pub warp_routing: WarpRoutingConfig,
    /// Top-level keys of the file that are none of the above, in file order.
    #[serde(skip)]
    pub ignored_keys: Vec<String>,
    /// Scalar values of the keys cloudflared reports in `__configuration_flags`
    /// ([`super::local_config::CONFIGURATION_FLAGS`]), as written.
    #[serde(skip)]
    pub flag_values: std::collections::BTreeMap<String, String>,
}

/// The top-level keys [`ConfigFile`] reads; kept beside the struct and checked by a test.
pub const CONFIG_FILE_KEYS: &[&str] = &[
    "tunnel",
    "token",
    "credentials-file",
    "url",
    "edge",
    "cacert",
    "ha-connections",
    "grace-period",
    "edge-ip-version",
    "edge-bind-address",
    "region",
    "metrics",
    "loglevel",
    "protocol",
    "features",
    "tag",
    "max-active-flows",
    "icmpv4-src",
    "icmpv6-src",
    "post-quantum",
    "token-file",
    "credentials-contents",
    "hello-world",
    "unix-socket",
    "logfile",
    "pidfile",
    "log-directory",
    "retries",
    "no-tls-verify",
    "http-host-header",
    "origin-ca-pool",
    "origin-server-name",
    "no-chunked-encoding",
    "bastion",
    "socks5",
    "http2-origin",
    "proxy-address",
    "proxy-port",
    "proxy-no-happy-eyeballs",
    "proxy-connect-timeout",
    "proxy-tls-timeout",
    "proxy-tcp-keepalive",
    "proxy-keepalive-connections",
    "proxy-keepalive-timeout",
    "quic-disable-pmtu-discovery",
    "quic-connection-level-flow-control-limit",
    "quic-stream-level-flow-control-limit",
    "write-stream-timeout",
    "rpc-timeout",
    "max-edge-addr-retries",
    "management-hostname",
    "management-diagnostics",
    "label",
    "service-op-ip",
    "ingress",
    "originRequest",
    "warp-routing",
];

impl ConfigFile {
    /// Parses `config.yml` text. serde_yaml_ng is a maintained fork of the archived serde_yaml
    /// with the same YAML 1.1 behaviour Go's yaml.v3 accepts for these files. A known key of
    /// the wrong type is an error naming the key (serde_yaml_ng prefixes the path).
    pub fn from_yaml(text: &str) -> Result<Self, IngressError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut file: Self =
            serde_yaml_ng::from_str(text).map_err(|e| IngressError::Syntax(e.to_string()))?;
        // The struct parsed, so the text is a mapping; a second, untyped pass names the rest.
        if let Ok(map) = serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(text) {
            for name in super::local_config::CONFIGURATION_FLAGS {
                let value = match map.get(*name) {
                    Some(serde_yaml_ng::Value::String(s)) => s.clone(),
                    Some(serde_yaml_ng::Value::Bool(b)) => b.to_string(),
                    Some(serde_yaml_ng::Value::Number(n)) => n.to_string(),
                    _ => continue,
                };
                file.flag_values.insert((*name).to_owned(), value);
            }
            file.ignored_keys = map
                .keys()
                .map(|k| match k {
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim_end()
                        .to_owned(),
                })
                .filter(|k| !CONFIG_FILE_KEYS.contains(&k.as_str()))
                .collect();
        }
        Ok(file)
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
