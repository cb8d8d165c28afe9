//! `tunnel run`'s settings, shared by both drivers: cloudflared's flags (clap), config.yml,
//! credentials and token, merged into one [`RunConfig`]. Everything the machine is asked for
//! (files, `$HOME`) goes through [`Host`], so tests run on maps; the drivers' is burrow-os's.
//! Only the drivers use this module (feature `cli`); the machines never do. It does no I/O of
//! its own: reading and writing files, logging and the system certificate store are burrow-os's.

mod args;
mod creds;
mod flag_table;
mod ignored;
mod log;
mod refused;
pub mod service;
mod switch;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

use crate::ingress::{ConfigFile, Ingress, OriginRequestConfig, Service};
use crate::stream::tag::Tag;
use crate::tunnel::protocol::{ProtocolFlag, UnknownProtocol};
use crate::tunnel::supervisor::IpVersion;

pub use args::{cloudflared_argv, CommonArgs, OriginFlags, RunArgs, TunnelArgs, TunnelCommand};
pub use creds::{Credentials, CredsError};
pub use ignored::IgnoredArgs;
pub use log::LogFormat;
pub use refused::{RefusedArgs, RefusedFlag};
pub use switch::Switch;

/// What settings read from the machine they run on.
pub trait Host {
    /// The contents of the file at `path`.
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>>;
    /// True if `path` names a regular file.
    fn is_file(&self, path: &str) -> bool;
    /// `$HOME` (empty when unset).
    fn home(&self) -> String;
    /// Environment variable `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// `tunnel run`'s settings: each from its flag or environment variable, else config.yml's key
/// of the same name, else cloudflared's default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `--edge`: static edge addresses (empty: DNS SRV).
    pub edge: Vec<String>,
    /// `--cacert`.
    pub cacert: Option<String>,
    /// `--ha-connections`.
    pub ha_connections: u8,
    /// `--grace-period`, at most `MAX_GRACE`.
    pub grace_period: Duration,
    /// `--edge-ip-version`.
    pub ip_version: IpVersion,
    /// `--edge-bind-address`.
    pub edge_bind_address: Option<std::net::IpAddr>,
    /// `--region`.
    pub region: Option<String>,
    /// `--metrics`.
    pub metrics: String,
    /// `--loglevel`.
    pub loglevel: String,
    /// `--features`.
    pub features: Vec<String>,
    /// `--tag`.
    pub tags: Vec<Tag>,
    /// `--max-active-flows`.
    pub max_active_flows: Option<u64>,
    /// `--dns-resolver-addrs` (none: the system's resolver).
    pub dns_resolvers: Option<Vec<std::net::SocketAddr>>,
    /// `--icmpv4-src`.
    pub icmpv4_src: Option<std::net::Ipv4Addr>,
    /// `--icmpv6-src`.
    pub icmpv6_src: Option<std::net::Ipv6Addr>,
    /// `--post-quantum`.
    pub post_quantum: bool,
    /// `--protocol`.
    pub protocol: ProtocolFlag,
    /// `--token`.
    pub token: Option<String>,
    /// `--token-file`.
    pub token_file: Option<String>,
    /// `--credentials-contents`.
    pub credentials_contents: Option<String>,
    /// `--credentials-file`.
    pub credentials_file: Option<String>,
    /// `--url`.
    pub url: Option<String>,
    /// `--hello-world` (given at all, even `=false`, or `true` in the file).
    pub hello_world: bool,
    /// `--unix-socket`.
    pub unix_socket: Option<String>,
    /// The single origin's options (`--no-tls-verify`, `--http-host-header`, ...).
    pub origin: OriginRequestConfig,
    /// `--logfile`, else `cloudflared.log` in `--log-directory`.
    pub logfile: Option<String>,
    /// `--pidfile`.
    pub pidfile: Option<String>,
    /// `--retries`.
    pub retries: u32,
    /// QUIC receive windows and path MTU discovery (`--quic-*`).
    pub quic: QuicTuning,
    /// `--write-stream-timeout` (none: 0, no limit).
    pub write_stream_timeout: Option<Duration>,
    /// `--rpc-timeout`.
    pub rpc_timeout: Duration,
    /// `--max-edge-addr-retries`.
    pub max_edge_addr_retries: u32,
    /// `--management-hostname`, `--management-diagnostics`, `--label`, `--service-op-ip`.
    pub management: ManagementFlags,
    /// `--output`.
    pub log_format: LogFormat,
    /// The tunnel argument, else the file's `tunnel`.
    pub tunnel: Option<String>,
    /// cloudflared's `__configuration_flags`: those of its `configFlags` that were set (flag,
    /// environment or file), printed as Go prints the flag's value.
    pub configuration_flags: BTreeMap<String, String>,
}

impl Settings {
    /// Merges flags (clap has already put environment variables in them) over the file's keys
    /// over the defaults, then checks the values cloudflared checks.
    pub fn merge(
        common: &CommonArgs,
        run: &RunArgs,
        file: &ConfigFile,
    ) -> Result<Self, SetupError> {
        // A list flag given at all replaces the file's list, as altsrc does.
        fn list(flag: &[String], key: &Option<Vec<String>>) -> Vec<String> {
            if flag.is_empty() {
                key.clone().unwrap_or_default()
            } else {
                flag.to_vec()
            }
        }
        let protocol = run.protocol.as_ref().or(file.protocol.as_ref());
        let protocol: ProtocolFlag = protocol
            .map_or("auto", String::as_str)
            .parse()
            .map_err(|e: UnknownProtocol| SetupError::Config(e.to_string()))?;
        let grace_period = common
            .grace_period
            .or(file.grace_period.map(|d| d.0))
            .unwrap_or(Duration::from_secs(30));
        if grace_period > MAX_GRACE {
            return Err(SetupError::Config(format!(
                "grace-period {} is too long. Maximum allowed is 3m0s",
                humantime::format_duration(grace_period)
            )));
        }
        let ip_version = match common
            .edge_ip_version
            .as_ref()
            .or(file.edge_ip_version.as_ref())
            .map_or("auto", String::as_str)
        {
            "4" => IpVersion::V4,
            "6" => IpVersion::V6,
            "auto" => IpVersion::Auto,
            other => {
                return Err(SetupError::Config(format!(
                    "invalid edge-ip-version {other}: use 4, 6 or auto"
                )))
            }
        };
        // cloudflared's adjustIPVersionByBindAddress: the bind address decides the family.
        let edge_bind_address = common.edge_bind_address.or(file.edge_bind_address);
        let ip_version = match (edge_bind_address, ip_version) {
            (None, v) => v,
            (Some(ip), IpVersion::V6) if ip.is_ipv4() => {
                return Err(SetupError::Config(
                    "IPv4 bind address is specified, but edge-ip-version is IPv6".into(),
                ))
            }
            (Some(ip), IpVersion::V4) if ip.is_ipv6() => {
                return Err(SetupError::Config(
                    "IPv6 bind address is specified, but edge-ip-version is IPv4".into(),
                ))
            }
            (Some(ip), _) if ip.is_ipv4() => IpVersion::V4,
            (Some(_), _) => IpVersion::V6,
        };
        let or = |flag: &Option<String>, key: &Option<String>| flag.clone().or_else(|| key.clone());
        Ok(Self {
            edge: list(&common.edge, &file.edge),
            cacert: or(&common.cacert, &file.cacert),
            ha_connections: common.ha_connections.or(file.ha_connections).unwrap_or(4),
            grace_period,
            ip_version,
            edge_bind_address,
            region: or(&common.region, &file.region),
            metrics: or(&common.metrics, &file.metrics).unwrap_or_else(|| "localhost:0".into()),
            loglevel: or(&common.loglevel, &file.loglevel).unwrap_or_else(|| "info".into()),
            features: list(&run.features, &file.features),
            tags: list(&common.tag, &file.tag)
                .iter()
                .map(|t| Tag::parse(t))
                .collect::<Result<_, _>>()
                .map_err(|e| SetupError::Config(e.to_string()))?,
            max_active_flows: run.max_active_flows.or(file.max_active_flows),
            // A plain flag in cloudflared, not read from the file.
            dns_resolvers: if run.dns_resolver_addrs.is_empty() {
                None
            } else {
                Some(
                    crate::virtual_dns::parse_static(&run.dns_resolver_addrs).map_err(|e| {
                        SetupError::Config(format!("invalid dns-resolver-addrs provided: {e}"))
                    })?,
                )
            },
            icmpv4_src: run.icmpv4_src.or(file.icmpv4_src),
            icmpv6_src: run.icmpv6_src.or(file.icmpv6_src),
            post_quantum: switch::by_value(run.post_quantum, file.post_quantum),
            protocol,
            token: or(&run.token, &file.token),
            token_file: or(&run.token_file, &file.token_file),
            credentials_contents: or(&run.credentials_contents, &file.credentials_contents),
            credentials_file: or(&run.credentials_file, &file.credentials_file),
            url: or(&run.url, &file.url),
            hello_world: switch::by_presence(run.hello_world, file.hello_world),
            unix_socket: or(&run.unix_socket, &file.unix_socket),
            origin: run.origin.merge(&file.origin_flags),
            pidfile: or(&common.pidfile, &file.pidfile),
            logfile: or(&common.logfile, &file.logfile).or_else(|| {
                or(&common.log_directory, &file.log_directory)
                    .map(|d| format!("{}/cloudflared.log", d.trim_end_matches('/')))
            }),
            retries: common.retries.or(file.retries).unwrap_or(5),
            quic: QuicTuning::merge(common, file),
            write_stream_timeout: common
                .write_stream_timeout
                .or(file.write_stream_timeout.map(|d| d.0))
                .filter(|d| !d.is_zero()),
            rpc_timeout: match common.rpc_timeout.or(file.rpc_timeout.map(|d| d.0)) {
                // Every call would time out at once (cloudflared's context expires as made).
                Some(d) if d.is_zero() => {
                    return Err(SetupError::Config(
                        "--rpc-timeout must be longer than 0".into(),
                    ))
                }
                d => d.unwrap_or(Duration::from_secs(5)),
            },
            // cloudflared's `uint8(c.Int(...))`: the count wraps as Go's conversion does.
            max_edge_addr_retries: common
                .max_edge_addr_retries
                .or(file.max_edge_addr_retries)
                .map_or(8, |n| u32::from(n as u8)),
            management: ManagementFlags {
                hostname: or(&common.management_hostname, &file.management_hostname)
                    .unwrap_or_else(|| crate::management::DEFAULT_HOSTNAME.to_owned()),
                diagnostics: common
                    .management_diagnostics
                    .map(Switch::value)
                    .or(file.management_diagnostics)
                    .unwrap_or(true),
                label: or(&common.label, &file.label).filter(|l| !l.is_empty()),
                service_op_ip: or(&common.service_op_ip, &file.service_op_ip)
                    .unwrap_or_else(|| DEFAULT_SERVICE_OP_IP.to_owned()),
            },
            log_format: common
                .output
                .as_deref()
                .map_or(LogFormat::Text, LogFormat::parse),
            tunnel: or(&run.tunnel, &file.tunnel),
            configuration_flags: configuration_flags(common, run, file),
        })
    }
}

/// cloudflared's hidden QUIC flags: `--quic-disable-pmtu-discovery` and the receive-window
/// ceilings `--quic-connection-level-flow-control-limit` and
/// `--quic-stream-level-flow-control-limit`. quic-go grows its windows up to these; quinn's
/// are that wide from the start (the connection's also grows per held stream,
/// [`crate::receive_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicTuning {
    /// Path MTU discovery on (cloudflared's default).
    pub mtu_discovery: bool,
    /// Connection receive window, bytes (none: cloudflared's 30 MiB).
    pub connection_window: Option<u64>,
    /// Stream receive window, bytes (none: cloudflared's 6 MiB).
    pub stream_window: Option<u64>,
}

impl Default for QuicTuning {
    /// cloudflared's defaults.
    fn default() -> Self {
        Self {
            mtu_discovery: true,
            connection_window: None,
            stream_window: None,
        }
    }
}

impl QuicTuning {
    /// quic-go's own ceilings, which it takes for 0.
    const QUIC_GO_CONNECTION_WINDOW: u64 = 15 << 20;
    const QUIC_GO_STREAM_WINDOW: u64 = 6 << 20;

    fn merge(common: &CommonArgs, file: &ConfigFile) -> Self {
        let zero_is = |v: u64, default: u64| if v == 0 { default } else { v };
        Self {
            mtu_discovery: !switch::by_value(
                common.quic_disable_pmtu_discovery,
                file.quic_disable_pmtu_discovery,
            ),
            connection_window: common
                .quic_connection_level_flow_control_limit
                .or(file.quic_connection_level_flow_control_limit)
                .map(|v| zero_is(v, Self::QUIC_GO_CONNECTION_WINDOW)),
            stream_window: common
                .quic_stream_level_flow_control_limit
                .or(file.quic_stream_level_flow_control_limit)
                .map(|v| zero_is(v, Self::QUIC_GO_STREAM_WINDOW)),
        }
    }

    /// Sets these on `quic` (windows past 4 GiB are 4 GiB: quinn's are `u32` here, and no
    /// connector holds that much).
    pub fn apply(&self, quic: &mut crate::quic::transport::QuicSettings) {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        quic.mtu_discovery = self.mtu_discovery;
        if let Some(v) = self.connection_window {
            quic.connection_receive_window = clamp(v);
        }
        if let Some(v) = self.stream_window {
            quic.stream_receive_window = clamp(v);
        }
    }
}

/// cloudflared's `parseConfigFlags`: each of `configFlags` set on the command line, in the
/// environment or in config.yml (`max-active-flows` is no config-file key in cloudflared),
/// as the flag's Go value prints.
fn configuration_flags(
    common: &CommonArgs,
    run: &RunArgs,
    file: &ConfigFile,
) -> BTreeMap<String, String> {
    use crate::ingress::local_config::{go_duration, CONFIGURATION_FLAGS};
    let mut out = BTreeMap::new();
    for name in CONFIGURATION_FLAGS {
        let given = match *name {
            "retries" => common.retries.map(|n| n.to_string()),
            "protocol" => run.protocol.clone(),
            "loglevel" => common.loglevel.clone(),
            "metrics" => common.metrics.clone(),
            "edge-ip-version" => common.edge_ip_version.clone(),
            "edge-bind-address" => common.edge_bind_address.map(|a| a.to_string()),
            "max-active-flows" => run.max_active_flows.map(|n| n.to_string()),
            other => match common.ignored.configuration_flag(other) {
                // A switch's variable set but empty: not set, and the file is not read.
                Some(None) => continue,
                given => given.flatten(),
            },
        };
        // altsrc sets a switch from the file only when it is `true`.
        let from_file = || {
            (*name != "max-active-flows")
                .then(|| file.flag_values.get(*name).cloned())
                .flatten()
                .filter(|v| !(v == "false" && ignored::is_switch(name)))
        };
        let Some(mut value) = given.or_else(from_file) else {
            continue;
        };
        if matches!(*name, "autoupdate-freq" | "metrics-update-freq") {
            if let Some(d) = crate::ingress::parse_duration(&value) {
                value = go_duration(d);
            }
        }
        out.insert((*name).to_owned(), value);
    }
    out
}

/// What stops `tunnel run` before it connects.
#[derive(Debug, Error)]
pub enum SetupError {
    /// Credentials.
    #[error(transparent)]
    Creds(#[from] CredsError),
    /// Configuration.
    #[error("{0}")]
    Config(String),
    /// A cloudflared flag burrow cannot honour.
    #[error(transparent)]
    Refused(#[from] RefusedFlag),
}

/// cloudflared's longest grace period.
const MAX_GRACE: Duration = Duration::from_secs(180);

/// config.yml as read: its text (for the local configuration pushed to the edge) and shape.
#[derive(Debug, Default)]
pub struct LoadedConfig {
    /// Where it was read from.
    pub path: Option<String>,
    /// Its text.
    pub text: Option<String>,
    /// Its parsed keys.
    pub file: ConfigFile,
}

/// How `tunnel run` starts in either driver: the flags cloudflared reads from a second
/// environment variable completed from it (see [`CommonArgs::read_later_env`]), config.yml
/// read (it may set the log level, so before logging starts), settings merged and checked.
/// The driver then sets up logging and calls [`note_ignored`]. An error here goes to stderr
/// only.
pub fn start(
    args: &mut TunnelArgs,
    host: &dyn Host,
) -> Result<(LoadedConfig, Settings), SetupError> {
    args.common.read_later_env(host);
    let TunnelCommand::Run(run) = &args.command;
    if let Some(refused) = args.common.refused.given() {
        return Err(refused.into());
    }
    let loaded = load_config(&args.common, host)?;
    let settings = Settings::merge(&args.common, run, &loaded.file)?;
    Ok((loaded, settings))
}

/// Names the flags and configuration keys burrow does not act on, once at debug level (once
/// logging is set up).
pub fn note_ignored(args: &TunnelArgs, loaded: &LoadedConfig) {
    let ignored = args.common.ignored.given();
    if !ignored.is_empty() {
        tracing::debug!(flags = ?ignored, "flags burrow does not act on, ignored");
    }
    if !loaded.file.ignored_keys.is_empty() {
        tracing::debug!(
            config = loaded.path.as_deref().unwrap_or(""),
            keys = ?loaded.file.ignored_keys,
            "configuration keys burrow does not act on, ignored"
        );
    }
}

/// Reads `--config`, else the first of cloudflared's default locations, else nothing.
pub fn load_config(common: &CommonArgs, host: &dyn Host) -> Result<LoadedConfig, SetupError> {
    let Some(path) = common.config.clone().or_else(|| {
        cloudflared_dirs(host)
            .iter()
            .flat_map(|d| [format!("{d}/config.yml"), format!("{d}/config.yaml")])
            .find(|p| host.is_file(p))
    }) else {
        return Ok(LoadedConfig::default());
    };
    let text = read_text(host, &path)
        .map_err(|e| SetupError::Config(format!("cannot read config {path}: {e}")))?;
    let file =
        ConfigFile::from_yaml(&text).map_err(|e| SetupError::Config(format!("{path}: {e}")))?;
    Ok(LoadedConfig {
        path: Some(path),
        text: Some(text),
        file,
    })
}

fn read_text(host: &dyn Host, path: &str) -> std::io::Result<String> {
    String::from_utf8(host.read(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// cloudflared's default directories for config.yml and credentials files.
fn cloudflared_dirs(host: &dyn Host) -> [String; 5] {
    let home = host.home();
    [
        format!("{home}/.cloudflared"),
        format!("{home}/.cloudflare-warp"),
        format!("{home}/cloudflare-warp"),
        "/etc/cloudflared".into(),
        "/usr/local/etc/cloudflared".into(),
    ]
}

/// `path` with a leading `~/` replaced by `$HOME/`.
pub fn expand_home(path: &str, host: &dyn Host) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", host.home()),
        None => path.to_owned(),
    }
}

/// Parses `--url` as cloudflared does: schemes http, https, rdp, ssh, smb, tcp (default http),
/// path dropped.
pub fn url_service(url: &str) -> Result<Service, String> {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("http", url));
    if !["http", "https", "rdp", "ssh", "smb", "tcp"].contains(&scheme) {
        return Err(format!(
            "Error validating origin URL: Currently Cloudflare Tunnel does not support {scheme} protocol."
        ));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    Service::parse(&format!("{scheme}://{authority}"))
        .map_err(|e| format!("Error validating origin URL: {e}"))
}

/// The one origin the command line names, in cloudflared's order: `--hello-world`,
/// `--bastion`, `--url`, `--unix-socket` (`ingress.parseSingleOriginService`).
pub fn single_origin(settings: &Settings) -> Result<Option<Service>, SetupError> {
    if settings.hello_world {
        return Ok(Some(Service::HelloWorld));
    }
    // `--bastion=false` too, as cloudflared's `c.IsSet`.
    if settings.origin.bastion_mode.is_some() {
        return Ok(Some(Service::Bastion));
    }
    if let Some(url) = &settings.url {
        return url_service(url).map(Some).map_err(SetupError::Config);
    }
    Ok(settings.unix_socket.as_ref().map(|path| Service::Unix {
        path: path.clone(),
        tls: false,
    }))
}

/// Loads credentials: token > token file > credentials contents > credentials file >
/// `<uuid>.json` in cloudflared's directories.
pub fn credentials(settings: &Settings, host: &dyn Host) -> Result<Credentials, SetupError> {
    if let Some(t) = &settings.token {
        return Ok(Credentials::from_token(t)?);
    }
    if let Some(path) = &settings.token_file {
        let t = read_text(host, path)
            .map_err(|e| SetupError::Config(format!("Failed to read token file: {e}")))?;
        return Ok(Credentials::from_token(t.trim())?);
    }
    // cloudflared: the tunnel named on the command line or in the file wins over the
    // credentials' TunnelID.
    let id = settings
        .tunnel
        .as_deref()
        .and_then(|i| Uuid::parse_str(i).ok());
    if let Some(json) = &settings.credentials_contents {
        let mut creds = Credentials::from_file_json("TUNNEL_CRED_CONTENTS", json.as_bytes())?;
        if let Some(id) = id {
            creds.tunnel_id = id;
        }
        return Ok(creds);
    }
    let path = settings
        .credentials_file
        .clone()
        .or_else(|| {
            let id = settings.tunnel.as_ref()?;
            cloudflared_dirs(host)
                .iter()
                .map(|d| format!("{d}/{id}.json"))
                .find(|p| host.is_file(p))
        })
        .ok_or_else(|| {
            SetupError::Config(
                "no credentials: pass --token, or --credentials-file with the tunnel id".into(),
            )
        })?;
    let path = expand_home(&path, host);
    let bytes = host.read(&path).map_err(|source| CredsError::Io {
        path: path.clone(),
        source,
    })?;
    let mut creds = Credentials::from_file_json(&path, &bytes)?;
    if let Some(id) = id {
        creds.tunnel_id = id;
    }
    Ok(creds)
}

/// Where the edge is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edges {
    /// `--edge host:port`, repeatable.
    Static(Vec<String>),
    /// DNS SRV discovery (`--region` picks the regional service).
    Srv {
        /// `--region`, else the credentials' endpoint.
        region: Option<String>,
    },
}

/// Everything a driver needs to run a tunnel's connector, resolved from the settings, the
/// configuration file and the credentials.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Credentials.
    pub creds: Credentials,
    /// Ingress rules.
    pub ingress: Ingress,
    /// Local configuration JSON pushed on connection 0.
    pub local_config: Option<Vec<u8>>,
    /// Edge addresses.
    pub edges: Edges,
    /// `--edge-ip-version`.
    pub ip_version: IpVersion,
    /// `--edge-bind-address`.
    pub edge_bind_address: Option<std::net::IpAddr>,
    /// `--cacert` PEM contents: the only roots trusted for the edge.
    pub cacert: Option<Vec<u8>>,
    /// `--ha-connections` (at least 1).
    pub ha_connections: u8,
    /// `--grace-period`.
    pub grace_period: Duration,
    /// `--features`.
    pub features: Vec<String>,
    /// `--tag`s, sent to origins with the connector id.
    pub tags: Vec<Tag>,
    /// `--max-active-flows`.
    pub max_active_flows: Option<u64>,
    /// The configuration file's `warp-routing.maxActiveFlows`.
    pub local_max_active_flows: Option<u64>,
    /// `--dns-resolver-addrs`.
    pub dns_resolvers: Option<Vec<std::net::SocketAddr>>,
    /// The configuration file's `warp-routing.connectTimeout`.
    pub local_tcp_connect_timeout: Option<std::time::Duration>,
    /// `--icmpv4-src`.
    pub icmpv4_src: Option<std::net::Ipv4Addr>,
    /// `--icmpv6-src`.
    pub icmpv6_src: Option<std::net::Ipv6Addr>,
    /// `--post-quantum`.
    pub post_quantum: bool,
    /// `--quic-*`.
    pub quic: QuicTuning,
    /// `--write-stream-timeout`.
    pub write_stream_timeout: Option<Duration>,
    /// `--rpc-timeout`.
    pub rpc_timeout: Duration,
    /// `--max-edge-addr-retries`.
    pub max_edge_addr_retries: u32,
    /// The management service's flags.
    pub management: ManagementFlags,
    /// `--protocol`.
    pub protocol: ProtocolFlag,
    /// `--token` (or `TUNNEL_TOKEN`) was given: `auto` starts on QUIC whatever the
    /// percentage record says, as cloudflared does for token tunnels.
    pub token: bool,
    /// `--retries`.
    pub retries: u32,
}

/// The management service's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementFlags {
    /// `--management-hostname`.
    pub hostname: String,
    /// `--management-diagnostics`.
    pub diagnostics: bool,
    /// `--label`.
    pub label: Option<String>,
    /// `--service-op-ip`: the connector's own address in `/host_details` is the one it routes
    /// to this address from.
    pub service_op_ip: String,
}

impl Default for ManagementFlags {
    /// cloudflared's defaults.
    fn default() -> Self {
        Self {
            hostname: crate::management::DEFAULT_HOSTNAME.to_owned(),
            diagnostics: true,
            label: None,
            service_op_ip: DEFAULT_SERVICE_OP_IP.to_owned(),
        }
    }
}

/// cloudflared's default `--service-op-ip`.
const DEFAULT_SERVICE_OP_IP: &str = "198.41.200.113:80";

impl ManagementFlags {
    /// The service's configuration, for the connector `connector_id` on the machine
    /// `host_name`.
    pub fn config(
        &self,
        connector_id: Uuid,
        host_name: String,
    ) -> crate::management::ManagementConfig {
        crate::management::ManagementConfig {
            hostname: self.hostname.clone(),
            diagnostics: self.diagnostics,
            connector_id,
            label: self.label.clone(),
            host_name,
        }
    }
}

/// What [`run_config`] noticed that the driver should log (it has no logger of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `--url` was given but the file has ingress rules, which win.
    UrlIgnored,
    /// No ingress rules and no origin: every request gets 503.
    NoIngress,
}

impl Notice {
    /// cloudflared's words for it.
    pub fn message(self) -> &'static str {
        match self {
            Self::UrlIgnored => "--url is ignored: the configuration file has ingress rules",
            Self::NoIngress => "No ingress rules were defined in provided config (if any) nor from the cli, cloudflared will return 503 for all incoming HTTP requests",
        }
    }
}

/// Resolves settings and the loaded file into a [`RunConfig`], with notices to log.
pub fn run_config(
    settings: &Settings,
    loaded: &LoadedConfig,
    host: &dyn Host,
) -> Result<(RunConfig, Vec<Notice>), SetupError> {
    let file = &loaded.file;
    let mut notices = Vec::new();
    let creds = credentials(settings, host)?;
    let ingress = match file
        .ingress()
        .map_err(|e| SetupError::Config(e.to_string()))?
    {
        Some(i) => {
            if settings.url.is_some() {
                notices.push(Notice::UrlIgnored);
            }
            i
        }
        None => match single_origin(settings)? {
            Some(service) => Ingress::single_with(service, &settings.origin)
                .map_err(|e| SetupError::Config(e.to_string()))?,
            None => {
                if settings.token.is_none() && settings.token_file.is_none() {
                    notices.push(Notice::NoIngress);
                }
                Ingress::default_origin()
            }
        },
    };
    let local_config = Some(local_config(settings, loaded)?);
    if settings.region.is_some() && !creds.endpoint.is_empty() {
        return Err(SetupError::Config(
            "region provided with a token that has an endpoint".into(),
        ));
    }
    let region = settings
        .region
        .clone()
        .or_else(|| Some(creds.endpoint.clone()).filter(|e| !e.is_empty()));
    let edges = if settings.edge.is_empty() {
        Edges::Srv { region }
    } else {
        Edges::Static(settings.edge.clone())
    };
    let cacert = match &settings.cacert {
        Some(p) => Some(
            host.read(p)
                .map_err(|e| SetupError::Config(format!("cacert {p}: {e}")))?,
        ),
        None => None,
    };
    let config = RunConfig {
        creds,
        ingress,
        local_config,
        edges,
        ip_version: settings.ip_version,
        edge_bind_address: settings.edge_bind_address,
        cacert,
        ha_connections: settings.ha_connections.max(1),
        grace_period: settings.grace_period,
        features: settings.features.clone(),
        tags: settings.tags.clone(),
        max_active_flows: settings.max_active_flows,
        local_max_active_flows: file.warp_routing.max_active_flows,
        dns_resolvers: settings.dns_resolvers.clone(),
        local_tcp_connect_timeout: file.warp_routing.connect_timeout.map(|d| d.0),
        icmpv4_src: settings.icmpv4_src,
        icmpv6_src: settings.icmpv6_src,
        post_quantum: settings.post_quantum,
        quic: settings.quic,
        write_stream_timeout: settings.write_stream_timeout,
        rpc_timeout: settings.rpc_timeout,
        max_edge_addr_retries: settings.max_edge_addr_retries,
        management: settings.management.clone(),
        protocol: settings.protocol,
        token: settings.token.is_some(),
        retries: settings.retries,
    };
    Ok((config, notices))
}

/// The configuration connection 0 sends a locally managed tunnel's edge, as cloudflared
/// builds it: the file's rules, else the command line's one origin, else the 503 rule.
pub fn local_config(settings: &Settings, loaded: &LoadedConfig) -> Result<Vec<u8>, SetupError> {
    use crate::ingress::local_config::{
        normalise_service, url_service_string, LocalConfig, RawOrigin,
    };
    let config_err = |e: crate::ingress::IngressError| SetupError::Config(e.to_string());
    let from_file = match &loaded.text {
        Some(t) => LocalConfig::from_file(t).map_err(config_err)?,
        None => None,
    };
    let local = match from_file {
        Some(l) => l,
        None => {
            let service = if settings.hello_world {
                Some("hello_world".to_owned())
            } else if settings.origin.bastion_mode.is_some() {
                Some("bastion".to_owned())
            } else if let Some(url) = &settings.url {
                Some(normalise_service(&url_service_string(url)))
            } else {
                settings.unix_socket.as_ref().map(|p| format!("unix:{p}"))
            };
            let local = match service {
                Some(s) => LocalConfig::single(s, &RawOrigin::from_flags(&settings.origin)),
                None => LocalConfig::no_rules(),
            };
            match &loaded.text {
                Some(t) => local.with_file_warp_routing(t).map_err(config_err)?,
                None => local,
            }
        }
    };
    Ok(local
        .with_flags(settings.configuration_flags.clone())
        .to_json())
}

impl RunConfig {
    /// Whether `--protocol auto` starts on the remote percentage selector's choice, so the
    /// driver must first look up the TXT record [`PERCENTAGE_RECORD`] (only for Cloudflare's
    /// edge, found by SRV: the record says nothing of an edge given with `--edge`; and not
    /// for a `--token` tunnel, which starts on QUIC).
    ///
    /// [`PERCENTAGE_RECORD`]: crate::tunnel::protocol::PERCENTAGE_RECORD
    pub fn wants_percentage_record(&self) -> bool {
        crate::tunnel::protocol::auto_follows_percentage_record(
            self.protocol,
            matches!(self.edges, Edges::Srv { .. }),
            self.token,
        )
    }

    /// The connector's configuration: registration with `connector_id`, the edge's TLS trusting
    /// `roots` (QUIC and HTTP/2), the protocol (`auto` starting where `percentage`, the TXT
    /// record the driver looked up when [`Self::wants_percentage_record`], says), the datagram
    /// version (`--features`, else the feature record the connector has looked up before
    /// connection 0), the ingress (with the management hostname's rule ahead of it, and
    /// `management_logs` advertised, when the driver serves the service: `management`), limits,
    /// and `icmp` (which the driver finds by probing sockets).
    pub fn supervisor_config(
        &self,
        roots: rustls::RootCertStore,
        connector_id: Uuid,
        icmp: crate::icmp::RouterConfig,
        percentage: Option<&str>,
        management: bool,
    ) -> Result<crate::tunnel::supervisor::SupervisorConfig, crate::quic::tls::TlsError> {
        use crate::quic::tls::{self, PostQuantum};
        use crate::tunnel::connector::ConnectorConfig;
        use crate::tunnel::data::DataLimits;
        let pq = if self.post_quantum {
            PostQuantum::Strict
        } else {
            PostQuantum::Prefer
        };
        let http2_tls = crate::http2::tls::client_config(roots.clone(), pq)?;
        let client =
            quinn_proto::ClientConfig::new(std::sync::Arc::new(tls::client_config(roots, pq)?));
        // `--features` may choose the datagram version; else the feature record does, read
        // before the first connection (v2 until then, and if it cannot be read).
        let cli_version = crate::control::features::cli_datagram_version(&self.features);
        let registration = crate::control::Registration::new(
            self.creds.account_tag.clone(),
            self.creds.secret.clone(),
            self.creds.tunnel_id,
            connector_id,
            crate::control::features::features(
                self.post_quantum,
                management,
                &self.features,
                cli_version.unwrap_or(crate::session::DatagramVersion::V2),
            ),
        );
        let data = DataLimits {
            ingress: Some(std::sync::Arc::new(if management {
                self.ingress
                    .clone()
                    .with_management(&self.management.hostname)
            } else {
                self.ingress.clone()
            })),
            max_idle: self.ingress.defaults.keep_alive_connections as usize,
            idle_timeout: self.ingress.defaults.keep_alive_timeout,
            tags: self.tags.clone(),
            tcp_connect_timeout: self
                .local_tcp_connect_timeout
                .unwrap_or(crate::tunnel::dial::TCP_DIAL_TIMEOUT),
            write_timeout: self.write_stream_timeout,
            ..DataLimits::default()
        };
        let connector = ConnectorConfig {
            local_config: self.local_config.clone(),
            grace_period: self.grace_period,
            rpc_timeout: self.rpc_timeout,
            data,
            ..ConnectorConfig::new(registration, client)
        };
        let mut config = crate::tunnel::supervisor::SupervisorConfig::new(connector);
        config.ha_connections = self.ha_connections;
        config.retries = self.retries;
        config.max_edge_addr_retries = self.max_edge_addr_retries;
        config.max_active_flows = self.max_active_flows;
        config.local_max_active_flows = self.local_max_active_flows;
        config.dns_resolvers = self.dns_resolvers.clone();
        config.icmp = icmp;
        config.protocol = self.protocol;
        config.auto_initial = if self.wants_percentage_record() {
            crate::tunnel::protocol::remote_selection(percentage, &self.creds.account_tag)
        } else {
            crate::tunnel::protocol::Protocol::Quic
        };
        // ... and reads the record again every hour.
        config.remote_selector = self
            .wants_percentage_record()
            .then(|| self.creds.account_tag.clone());
        config.features_selector = cli_version
            .is_none()
            .then(|| self.creds.account_tag.clone());
        config.http2_tls = Some(http2_tls);
        self.quic.apply(&mut config.quic);
        Ok(config)
    }
}
