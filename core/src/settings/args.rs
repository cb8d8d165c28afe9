//! The command line of `tunnel run`, as cloudflared spells it (clap; environment variables are
//! read by clap).

use std::time::Duration;

use clap::{Args, Subcommand};

use super::switch::{by_presence, by_value, Switch};
use crate::ingress::{Dur, OriginFlagKeys, OriginRequestConfig};

/// `burrow tunnel ...`.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Flags of `tunnel`, before or after the subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: TunnelCommand,
}

/// Flags cloudflared defines on `tunnel`. Every one but `--config` may also be a top-level key
/// of config.yml under the same name; a flag given here or through its environment variable
/// wins over the file, which wins over the default (see [`super::Settings::merge`]). So fields are
/// `Option`s without clap defaults: the defaults are applied after the merge.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// Configuration file (cloudflared's config.yml).
    #[arg(long, global = true)]
    pub config: Option<String>,
    /// Edge address host:port (repeatable); replaces DNS SRV discovery.
    #[arg(long, global = true, env = "TUNNEL_EDGE", value_delimiter = ',')]
    pub edge: Vec<String>,
    /// CA certificate (PEM) the edge is verified against, and nothing else.
    #[arg(long, global = true, env = "TUNNEL_CACERT")]
    pub cacert: Option<String>,
    /// HA connections to the edge [default: 4].
    #[arg(long, global = true)]
    pub ha_connections: Option<u8>,
    /// How long a graceful shutdown may take (at most 3m) [default: 30s].
    #[arg(long, global = true, env = "TUNNEL_GRACE_PERIOD", value_parser = parse_duration)]
    pub grace_period: Option<Duration>,
    /// Edge IP version: 4, 6 or auto [default: auto].
    #[arg(long, global = true, env = "TUNNEL_EDGE_IP_VERSION")]
    pub edge_ip_version: Option<String>,
    /// Local IP address the connections to the edge are made from (picks the IP version).
    #[arg(long, global = true, env = "TUNNEL_EDGE_BIND_ADDRESS")]
    pub edge_bind_address: Option<std::net::IpAddr>,
    /// Edge region (regional SRV service).
    #[arg(long, global = true, env = "TUNNEL_REGION")]
    pub region: Option<String>,
    /// Metrics and readiness server address [default: localhost:0].
    #[arg(long, global = true, env = "TUNNEL_METRICS")]
    pub metrics: Option<String>,
    /// Log level: debug, info, warn, error, fatal [default: info].
    #[arg(long, global = true, env = "TUNNEL_LOGLEVEL")]
    pub loglevel: Option<String>,
    /// Write the process id to this file once the first connection is registered.
    #[arg(long, global = true, env = "TUNNEL_PIDFILE")]
    pub pidfile: Option<String>,
    /// Also write logs to this file (appended).
    #[arg(long, global = true, env = "TUNNEL_LOGFILE")]
    pub logfile: Option<String>,
    /// Also write logs to `cloudflared.log` in this directory (when no --logfile).
    #[arg(long, global = true, env = "TUNNEL_LOGDIRECTORY")]
    pub log_directory: Option<String>,
    /// Log format on stderr: `default` (text lines) or `json` (cloudflared's JSON lines).
    /// Also read from `TUNNEL_LOG_OUTPUT` when this variable is unset.
    #[arg(long, global = true, env = "TUNNEL_MANAGEMENT_OUTPUT")]
    pub output: Option<String>,
    /// Maximum retries for connection errors: the backoff's exponent cap (at most 2^N s
    /// between tries) and, with `--protocol auto`, when a connection falls back to HTTP/2
    /// [default: 5].
    #[arg(long, global = true, env = "TUNNEL_RETRIES")]
    pub retries: Option<u32>,
    /// QUIC without path MTU discovery: packets stay at the 1,280-byte path's size.
    #[arg(long, global = true, hide = true, env = "TUNNEL_DISABLE_QUIC_PMTU", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "quic_disable_pmtu_discovery")]
    pub quic_disable_pmtu_discovery: Option<Switch>,
    /// Bytes the edge may send on a QUIC connection ahead of the connector's reads (0:
    /// quic-go's 15 MiB) [default: 30 MiB].
    #[arg(
        long,
        global = true,
        hide = true,
        env = "TUNNEL_QUIC_CONN_LEVEL_FLOW_CONTROL_LIMIT"
    )]
    pub quic_connection_level_flow_control_limit: Option<u64>,
    /// The same per QUIC stream (0: quic-go's 6 MiB) [default: 6 MiB].
    #[arg(
        long,
        global = true,
        hide = true,
        env = "TUNNEL_QUIC_STREAM_LEVEL_FLOW_CONTROL_LIMIT"
    )]
    pub quic_stream_level_flow_control_limit: Option<u64>,
    /// How long a write to the edge or to a private-network TCP origin may wait (0: no
    /// limit) [default: 0].
    #[arg(long, global = true, hide = true, env = "TUNNEL_STREAM_WRITE_TIMEOUT", value_parser = parse_go_duration)]
    pub write_stream_timeout: Option<Duration>,
    /// How long an RPC call to the edge may take (registration, configuration, session
    /// unregistration) [default: 5s].
    #[arg(long, global = true, hide = true, value_parser = parse_go_duration)]
    pub rpc_timeout: Option<Duration>,
    /// The host whose requests the connector serves itself: the management service
    /// (`cloudflared tail`) [default: management.argotunnel.com].
    #[arg(long, global = true, hide = true, env = "TUNNEL_MANAGEMENT_HOSTNAME")]
    pub management_hostname: Option<String>,
    /// Whether the management service also serves `/metrics` [default: true].
    #[arg(long, global = true, env = "TUNNEL_MANAGEMENT_DIAGNOSTICS", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "management_diagnostics")]
    pub management_diagnostics: Option<Switch>,
    /// The connector's name in the management service's `/host_details` (else the machine's
    /// host name).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// The address whose route gives the connector's own address in `/host_details`
    /// [default: 198.41.200.113:80].
    #[arg(long, global = true, hide = true, env = "TUNNEL_SERVICE_OP_IP")]
    pub service_op_ip: Option<String>,
    /// Dial failures in a row on one connection before the next protocol is tried
    /// [default: 8].
    #[arg(long, global = true, hide = true, allow_negative_numbers = true)]
    pub max_edge_addr_retries: Option<i64>,
    /// Tag `KEY=VALUE` sent to origins as `Cf-Warp-Tag-KEY` (repeatable).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "TUNNEL_TAG",
        value_delimiter = ','
    )]
    pub tag: Vec<String>,
    /// cloudflared flags that change nothing burrow does.
    #[command(flatten)]
    pub ignored: super::ignored::IgnoredArgs,
    /// cloudflared flags burrow cannot honour: `tunnel run` stops, naming why.
    #[command(flatten)]
    pub refused: super::refused::RefusedArgs,
}

impl CommonArgs {
    /// Completes the flags cloudflared also reads from a second environment variable (clap
    /// reads one): urfave/cli takes the first of a flag's variables that is set, so the second
    /// counts only when neither the flag nor the first is given.
    pub fn read_later_env(&mut self, host: &dyn super::Host) {
        if self.output.is_none() {
            self.output = host.var("TUNNEL_LOG_OUTPUT");
        }
        self.ignored.read_later_env(host);
    }
}

/// cloudflared's app-level flags are its `tunnel` flags, so they may come before `tunnel`:
/// `burrow --no-autoupdate tunnel run` is read as `burrow tunnel --no-autoupdate run`; so
/// is `burrow --config FILE service install`. cloudflared's `tunnel` also takes some of `run`'s
/// flags (`--credentials-file`, `--protocol`, `--post-quantum`, `--url` and the origin flags):
/// given between `tunnel` and `run` they move after `run`, with their value. Go's `flag` takes
/// `-name` as `--name`, so under `tunnel` and `service` a single-dash long name gets its
/// second dash (`-no-autoupdate=true`, `-url x`), up to `--`.
pub fn cloudflared_argv(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let leading_flag = args
        .get(1)
        .is_some_and(|a| a.to_string_lossy().starts_with('-'));
    if let Some(at) = args.iter().position(|a| a == "tunnel" || a == "service") {
        if leading_flag && at > 1 {
            args[1..=at].rotate_right(1);
        }
    }
    if args.get(1).is_some_and(|a| a == "tunnel" || a == "service") {
        double_dash(&mut args[2..]);
    }
    // Only `burrow tunnel ... run`: `burrow edge ... tunnel create` is left alone.
    let tunnel = args.get(1).is_some_and(|a| a == "tunnel").then_some(1);
    let run = args.iter().position(|a| a == "run");
    if let (Some(tunnel), Some(run)) = (tunnel, run) {
        if tunnel < run {
            let mut kept = Vec::new();
            let mut moved = Vec::new();
            let mut i = tunnel + 1;
            while i < run {
                let arg = args[i].to_string_lossy().into_owned();
                let name = arg.split('=').next().unwrap_or_default();
                let takes_value = RUN_FLAGS_WITH_VALUE.contains(&name) && !arg.contains('=');
                if RUN_FLAGS_WITH_VALUE.contains(&name) || RUN_SWITCHES.contains(&name) {
                    moved.push(args[i].clone());
                    if takes_value && i + 1 < run {
                        i += 1;
                        moved.push(args[i].clone());
                    }
                } else {
                    kept.push(args[i].clone());
                }
                i += 1;
            }
            if !moved.is_empty() {
                let rest = args.split_off(run + 1);
                args.truncate(tunnel + 1);
                args.extend(kept);
                args.push("run".into());
                args.extend(moved);
                args.extend(rest);
            }
        }
    }
    args
}

/// `-name[=value]` made `--name[=value]` where `name` is a long name (or alias) of a flag of
/// `tunnel`, `run` or `service`, up to `--`; one-letter names stay short flags (`-p quic`).
fn double_dash(args: &mut [std::ffi::OsString]) {
    use clap::{Args, Command};
    let tunnel = TunnelArgs::augment_args(Command::new("tunnel"));
    let service = super::service::ServiceArgs::augment_args(Command::new("service"));
    let commands = [&tunnel, &service]
        .into_iter()
        .flat_map(|c| std::iter::once(c).chain(c.get_subcommands()));
    let longs: Vec<&str> = commands
        .flat_map(Command::get_arguments)
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
        })
        .collect();
    for arg in args.iter_mut().take_while(|a| *a != "--") {
        let Some(name) = arg.to_str().and_then(|a| a.strip_prefix('-')) else {
            continue;
        };
        let long = name.split('=').next().unwrap_or_default();
        if long.len() > 1 && !long.starts_with('-') && longs.contains(&long) {
            *arg = format!("--{name}").into();
        }
    }
}

/// `run` flags with a value that cloudflared's `tunnel` takes too.
const RUN_FLAGS_WITH_VALUE: &[&str] = &[
    "--credentials-file",
    "--cred-file",
    "--protocol",
    "-p",
    "--url",
    "--unix-socket",
    "--http-host-header",
    "--origin-ca-pool",
    "--origin-server-name",
    "--proxy-address",
    "--proxy-port",
    "--proxy-connect-timeout",
    "--proxy-tls-timeout",
    "--proxy-tcp-keepalive",
    "--proxy-keepalive-connections",
    "--proxy-keepalive-timeout",
];

/// `run` switches that cloudflared's `tunnel` takes too.
const RUN_SWITCHES: &[&str] = &[
    "--post-quantum",
    "--pq",
    "--hello-world",
    "--no-tls-verify",
    "--no-chunked-encoding",
    "--bastion",
    "--socks5",
    "--http2-origin",
    "--proxy-no-happy-eyeballs",
];

/// cloudflared's `originRequest` flags for the origin of `--url`, `--hello-world` or
/// `--unix-socket`; ingress rules from a file take their options from the file instead.
#[derive(Debug, Args, Clone, Default)]
pub struct OriginFlags {
    /// Skip verifying the origin's TLS certificate.
    #[arg(long, env = "NO_TLS_VERIFY", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_tls_verify")]
    pub no_tls_verify: Option<Switch>,
    /// `Host` sent to the origin (the original goes in X-Forwarded-Host).
    #[arg(long, env = "TUNNEL_HTTP_HOST_HEADER")]
    pub http_host_header: Option<String>,
    /// Extra CA file for the origin's certificate.
    #[arg(long, env = "TUNNEL_ORIGIN_CA_POOL")]
    pub origin_ca_pool: Option<String>,
    /// Name expected on the origin's certificate.
    #[arg(long, env = "TUNNEL_ORIGIN_SERVER_NAME")]
    pub origin_server_name: Option<String>,
    /// Never send request bodies chunked.
    #[arg(long, env = "TUNNEL_NO_CHUNKED_ENCODING", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_chunked_encoding")]
    pub no_chunked_encoding: Option<Switch>,
    /// Run as a jump host: the one origin is the bastion (each request names its destination).
    /// Given at all, even `=false`, as cloudflared reads it.
    #[arg(long, env = "TUNNEL_BASTION", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "bastion")]
    pub bastion: Option<Switch>,
    /// A SOCKS5 exchange inside the WebSocket of a TCP origin (`proxyType: socks`). Given at
    /// all, even `=false`, as cloudflared reads it.
    #[arg(long, env = "TUNNEL_SOCKS", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "socks5")]
    pub socks5: Option<Switch>,
    /// Offer HTTP/2 to a TLS origin (`http2Origin`).
    #[arg(long, env = "TUNNEL_ORIGIN_ENABLE_HTTP2", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "http2_origin")]
    pub http2_origin: Option<Switch>,
    /// `proxyAddress` of the one rule (only reported to the edge; no listener is opened).
    #[arg(long, env = "TUNNEL_PROXY_ADDRESS")]
    pub proxy_address: Option<String>,
    /// `proxyPort` of the one rule (as `--proxy-address`).
    #[arg(long, env = "TUNNEL_PROXY_PORT")]
    pub proxy_port: Option<u64>,
    /// `noHappyEyeballs` of the one rule: a name's addresses in turn, the two families not
    /// raced (no variable, as in cloudflared).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "proxy_no_happy_eyeballs")]
    pub proxy_no_happy_eyeballs: Option<Switch>,
    /// `connectTimeout` of the one rule (no variable, as in cloudflared) [default: 30s].
    #[arg(long, value_parser = parse_go_duration)]
    pub proxy_connect_timeout: Option<Duration>,
    /// `tlsTimeout` of the one rule [default: 10s].
    #[arg(long, value_parser = parse_go_duration)]
    pub proxy_tls_timeout: Option<Duration>,
    /// `tcpKeepAlive` of the one rule [default: 30s].
    #[arg(long, value_parser = parse_go_duration)]
    pub proxy_tcp_keepalive: Option<Duration>,
    /// `keepAliveConnections` of the one rule [default: 100].
    #[arg(long)]
    pub proxy_keepalive_connections: Option<u32>,
    /// `keepAliveTimeout` of the one rule [default: 1m30s].
    #[arg(long, value_parser = parse_go_duration)]
    pub proxy_keepalive_timeout: Option<Duration>,
}

impl OriginFlags {
    /// These flags as an `originRequest` block, over `file` (the config file's keys of the
    /// same names).
    pub(super) fn merge(&self, file: &OriginFlagKeys) -> OriginRequestConfig {
        let or = |flag: &Option<String>, key: &Option<String>| flag.clone().or_else(|| key.clone());
        OriginRequestConfig {
            no_tls_verify: Some(by_value(self.no_tls_verify, file.no_tls_verify)),
            http_host_header: or(&self.http_host_header, &file.http_host_header),
            ca_pool: or(&self.origin_ca_pool, &file.origin_ca_pool),
            origin_server_name: or(&self.origin_server_name, &file.origin_server_name),
            disable_chunked_encoding: Some(by_value(
                self.no_chunked_encoding,
                file.no_chunked_encoding,
            )),
            // cloudflared sets these only when the flag is set (`c.IsSet`), so absent stays
            // None; `bastion_mode` set at all also makes the one origin the bastion.
            bastion_mode: by_presence(self.bastion, file.bastion)
                .then(|| by_value(self.bastion, file.bastion)),
            proxy_type: by_presence(self.socks5, file.socks5).then(|| "socks".to_owned()),
            http2_origin: by_presence(self.http2_origin, file.http2_origin)
                .then(|| by_value(self.http2_origin, file.http2_origin)),
            proxy_address: or(&self.proxy_address, &file.proxy_address),
            proxy_port: self.proxy_port.or(file.proxy_port),
            // cloudflared reads it only when set (`c.IsSet`).
            no_happy_eyeballs: by_presence(
                self.proxy_no_happy_eyeballs,
                file.proxy_no_happy_eyeballs,
            )
            .then(|| by_value(self.proxy_no_happy_eyeballs, file.proxy_no_happy_eyeballs)),
            connect_timeout: dur(self.proxy_connect_timeout, file.proxy_connect_timeout),
            tls_timeout: dur(self.proxy_tls_timeout, file.proxy_tls_timeout),
            tcp_keep_alive: dur(self.proxy_tcp_keepalive, file.proxy_tcp_keepalive),
            keep_alive_connections: self
                .proxy_keepalive_connections
                .or(file.proxy_keepalive_connections),
            keep_alive_timeout: dur(self.proxy_keepalive_timeout, file.proxy_keepalive_timeout),
            ..OriginRequestConfig::default()
        }
    }
}

/// Subcommands of `tunnel`.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Run a tunnel's connector.
    Run(RunArgs),
}

/// Flags of `tunnel run` (also config.yml keys, as [`CommonArgs`]).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Tunnel token (base64 JSON {a,t,s}).
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the tunnel token (used when no --token).
    #[arg(long, env = "TUNNEL_TOKEN_FILE")]
    pub token_file: Option<String>,
    /// Credentials file contents (JSON), instead of --credentials-file.
    #[arg(long, env = "TUNNEL_CRED_CONTENTS", hide_env_values = true)]
    pub credentials_contents: Option<String>,
    /// Credentials file (cloudflared's `<TunnelID>.json`).
    #[arg(long, alias = "cred-file", env = "TUNNEL_CRED_FILE")]
    pub credentials_file: Option<String>,
    /// One origin for every request (instead of ingress rules).
    #[arg(long, env = "TUNNEL_URL")]
    pub url: Option<String>,
    /// The built-in hello-world page for every request (instead of --url). Given at all, even
    /// `=false`, as cloudflared reads it.
    #[arg(long, env = "TUNNEL_HELLO_WORLD", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "hello_world")]
    pub hello_world: Option<Switch>,
    /// HTTP over this unix socket for every request (instead of --url).
    #[arg(long, env = "TUNNEL_UNIX_SOCKET")]
    pub unix_socket: Option<String>,
    /// The single origin's options (cloudflared's legacy `--url`-mode flags).
    #[command(flatten)]
    pub origin: OriginFlags,
    /// Transport protocol: auto, quic or http2 [default: auto].
    #[arg(long, short = 'p', env = "TUNNEL_TRANSPORT_PROTOCOL")]
    pub protocol: Option<String>,
    /// Extra client feature strings.
    #[arg(long, short = 'F', value_delimiter = ',')]
    pub features: Vec<String>,
    /// Most private-network flows at once, TCP and UDP together (0: unlimited); overrides
    /// `warp-routing.maxActiveFlows` of the local and the remote configuration.
    #[arg(long, env = "TUNNEL_MAX_ACTIVE_FLOWS")]
    pub max_active_flows: Option<u64>,
    /// Resolvers (`ip:port`, at most 10) for the virtual DNS service, one per flow, instead of
    /// the system's (repeatable).
    #[arg(long, env = "TUNNEL_DNS_RESOLVER_ADDRS", value_delimiter = ',')]
    pub dns_resolver_addrs: Vec<String>,
    /// Source (and ping-socket bind) address of the ICMP proxy for IPv4; default: the
    /// address of the route out.
    #[arg(long, env = "TUNNEL_ICMPV4_SRC")]
    pub icmpv4_src: Option<std::net::Ipv4Addr>,
    /// Same for IPv6.
    #[arg(long, env = "TUNNEL_ICMPV6_SRC")]
    pub icmpv6_src: Option<std::net::Ipv6Addr>,
    /// Post-quantum key exchange only.
    #[arg(long, alias = "pq", env = "TUNNEL_POST_QUANTUM", num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "post_quantum")]
    pub post_quantum: Option<Switch>,
    /// Tunnel UUID (or the config file's `tunnel`).
    pub tunnel: Option<String>,
}

/// `--grace-period` as a Go duration (`30s`, `1m30s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A Go duration flag that may be `0`, as `time.ParseDuration` reads it.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    crate::ingress::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}"))
}

/// A duration flag over its config-file key.
fn dur(flag: Option<Duration>, key: Option<Dur>) -> Option<Dur> {
    flag.map(Dur).or(key)
}
