//! cloudflared `tunnel` flags burrow cannot honour. clap takes them (hidden) so that they stop
//! `tunnel run` with the reason, rather than with clap's bare "unexpected argument".

use clap::Args;

/// A cloudflared flag burrow does not support, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} is a cloudflared flag burrow does not support: {why}")]
pub struct RefusedFlag {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// Why burrow refuses it.
    pub why: &'static str,
}

const PROVISIONING: &str = "burrow creates no tunnels, DNS records or load balancers through \
Cloudflare's API; run an existing tunnel with its credentials file or token";
const QUIC_TUNING: &str = "burrow's QUIC flow-control windows, stream writes and path MTU \
discovery (with black-hole detection) are fixed";
const MANAGEMENT: &str = "burrow serves no management service (cloudflared tail)";
const ORIGIN_OPTION: &str = "not yet as a flag; set the same option under originRequest in \
config.yml (connectTimeout, tlsTimeout, tcpKeepAlive, keepAliveConnections, keepAliveTimeout)";

/// The refused flags, as clap reads them (every one takes a value in cloudflared but
/// `stdin-control` and `quic-disable-pmtu-discovery`).
#[derive(Debug, Args, Clone, Default)]
pub struct RefusedArgs {
    #[arg(long, global = true, hide = true)]
    hostname: Option<String>,
    #[arg(long, global = true, hide = true)]
    id: Option<String>,
    #[arg(long, global = true, hide = true)]
    lb_pool: Option<String>,
    #[arg(long, global = true, hide = true)]
    name: Option<String>,
    #[arg(long, global = true, hide = true)]
    api_key: Option<String>,
    #[arg(long, global = true, hide = true)]
    api_email: Option<String>,
    #[arg(long, global = true, hide = true)]
    api_ca_key: Option<String>,
    #[arg(long, global = true, hide = true)]
    api_url: Option<String>,
    #[arg(long, global = true, hide = true)]
    quick_service: Option<String>,
    #[arg(long, global = true, hide = true)]
    stdin_control: bool,
    #[arg(long, global = true, hide = true)]
    write_stream_timeout: Option<String>,
    #[arg(long, global = true, hide = true)]
    quic_disable_pmtu_discovery: bool,
    #[arg(long, global = true, hide = true)]
    quic_connection_level_flow_control_limit: Option<String>,
    #[arg(long, global = true, hide = true)]
    quic_stream_level_flow_control_limit: Option<String>,
    #[arg(long, global = true, hide = true)]
    management_hostname: Option<String>,
    #[arg(long, global = true, hide = true)]
    service_op_ip: Option<String>,
    #[arg(long, global = true, hide = true)]
    dns_resolver_addrs: Option<String>,
    #[arg(long, global = true, hide = true)]
    proxy_connect_timeout: Option<String>,
    #[arg(long, global = true, hide = true)]
    proxy_tls_timeout: Option<String>,
    #[arg(long, global = true, hide = true)]
    proxy_tcp_keepalive: Option<String>,
    #[arg(long, global = true, hide = true)]
    proxy_keepalive_connections: Option<String>,
    #[arg(long, global = true, hide = true)]
    proxy_keepalive_timeout: Option<String>,
}

impl RefusedArgs {
    /// The first refused flag given (on the command line), if any.
    pub fn given(&self) -> Option<RefusedFlag> {
        let flags = [
            (self.hostname.is_some(), "hostname", PROVISIONING),
            (self.id.is_some(), "id", PROVISIONING),
            (self.lb_pool.is_some(), "lb-pool", PROVISIONING),
            (self.name.is_some(), "name", PROVISIONING),
            (self.api_key.is_some(), "api-key", PROVISIONING),
            (self.api_email.is_some(), "api-email", PROVISIONING),
            (self.api_ca_key.is_some(), "api-ca-key", PROVISIONING),
            (self.api_url.is_some(), "api-url", PROVISIONING),
            (
                self.quick_service.is_some(),
                "quick-service",
                "quick tunnels (trycloudflare.com) are created through Cloudflare's API",
            ),
            (
                self.stdin_control,
                "stdin-control",
                "it is cloudflared's test hook (reconnect commands read from stdin)",
            ),
            (
                self.write_stream_timeout.is_some(),
                "write-stream-timeout",
                QUIC_TUNING,
            ),
            (
                self.quic_disable_pmtu_discovery,
                "quic-disable-pmtu-discovery",
                QUIC_TUNING,
            ),
            (
                self.quic_connection_level_flow_control_limit.is_some(),
                "quic-connection-level-flow-control-limit",
                QUIC_TUNING,
            ),
            (
                self.quic_stream_level_flow_control_limit.is_some(),
                "quic-stream-level-flow-control-limit",
                QUIC_TUNING,
            ),
            (
                self.management_hostname.is_some(),
                "management-hostname",
                MANAGEMENT,
            ),
            (self.service_op_ip.is_some(), "service-op-ip", MANAGEMENT),
            (
                self.dns_resolver_addrs.is_some(),
                "dns-resolver-addrs",
                "burrow has no resolver of its own for private-network DNS to override",
            ),
            (
                self.proxy_connect_timeout.is_some(),
                "proxy-connect-timeout",
                ORIGIN_OPTION,
            ),
            (
                self.proxy_tls_timeout.is_some(),
                "proxy-tls-timeout",
                ORIGIN_OPTION,
            ),
            (
                self.proxy_tcp_keepalive.is_some(),
                "proxy-tcp-keepalive",
                ORIGIN_OPTION,
            ),
            (
                self.proxy_keepalive_connections.is_some(),
                "proxy-keepalive-connections",
                ORIGIN_OPTION,
            ),
            (
                self.proxy_keepalive_timeout.is_some(),
                "proxy-keepalive-timeout",
                ORIGIN_OPTION,
            ),
        ];
        flags
            .into_iter()
            .find(|(given, _, _)| *given)
            .map(|(_, flag, why)| RefusedFlag { flag, why })
    }
}
