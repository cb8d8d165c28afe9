//! `burrow tunnel run`: cloudflared's flags, configuration file and credentials, then the
//! connector loop. Flags of `cloudflared tunnel` are accepted before or after `run`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use burrow_core::ingress::{ConfigFile, Ingress, OriginFlagKeys, OriginRequestConfig, Service};
use burrow_core::stream::tag::Tag;
use burrow_core::tunnel::supervisor::IpVersion;
use clap::{Args, Subcommand};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::connector::{self, Edges, Options};
use crate::creds::{Credentials, CredsError};
use crate::metrics::{self, Metrics};

/// `burrow tunnel ...`.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: TunnelCommand,
}

/// Flags cloudflared defines on `tunnel`. Every one but `--config` may also be a top-level key
/// of config.yml under the same name; a flag given here or through its environment variable
/// wins over the file, which wins over the default (see [`Settings::merge`]). So fields are
/// `Option`s without clap defaults: the defaults are applied after the merge.
#[derive(Debug, Args, Clone)]
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
    pub ignored: IgnoredArgs,
}

/// cloudflared `tunnel` flags that are harmless to accept and ignore: burrow never updates
/// itself, has no pre-checks, UI or reconnect tokens, and its heartbeats and metrics are its
/// own. They are named once at debug level (see [`IgnoredArgs::given`]).
#[derive(Debug, Args, Clone, Default)]
pub struct IgnoredArgs {
    #[arg(long, global = true, hide = true, env = "NO_AUTOUPDATE")]
    no_autoupdate: bool,
    #[arg(long, global = true, hide = true)]
    autoupdate_freq: Option<String>,
    #[arg(long, global = true, hide = true)]
    is_autoupdated: bool,
    #[arg(long, global = true, hide = true, env = "TUNNEL_NO_PRECHECKS")]
    no_prechecks: bool,
    #[arg(long, global = true, hide = true, env = "TUNNEL_METRICS_UPDATE_FREQ")]
    metrics_update_freq: Option<String>,
    #[arg(long, global = true, hide = true, env = "TUNNEL_ORIGIN_CERT")]
    origincert: Option<String>,
    #[arg(long, global = true, hide = true)]
    label: Option<String>,
    #[arg(long, global = true, hide = true)]
    heartbeat_interval: Option<String>,
    #[arg(long, global = true, hide = true)]
    heartbeat_count: Option<String>,
    #[arg(long, global = true, hide = true)]
    max_edge_addr_retries: Option<String>,
    #[arg(long, global = true, hide = true)]
    rpc_timeout: Option<String>,
    #[arg(long, global = true, hide = true, env = "TUNNEL_COMPRESSION_LEVEL")]
    compression_quality: Option<String>,
    #[arg(long, global = true, hide = true, env = "DIAL_EDGE_TIMEOUT")]
    dial_edge_timeout: Option<String>,
    #[arg(
        long,
        global = true,
        hide = true,
        alias = "proto-loglevel",
        env = "TUNNEL_TRANSPORT_LOGLEVEL"
    )]
    transport_loglevel: Option<String>,
}

impl IgnoredArgs {
    /// The flags given (on the command line or through their environment variable).
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            (self.no_autoupdate, "no-autoupdate"),
            (self.autoupdate_freq.is_some(), "autoupdate-freq"),
            (self.is_autoupdated, "is-autoupdated"),
            (self.no_prechecks, "no-prechecks"),
            (self.metrics_update_freq.is_some(), "metrics-update-freq"),
            (self.origincert.is_some(), "origincert"),
            (self.label.is_some(), "label"),
            (self.heartbeat_interval.is_some(), "heartbeat-interval"),
            (self.heartbeat_count.is_some(), "heartbeat-count"),
            (
                self.max_edge_addr_retries.is_some(),
                "max-edge-addr-retries",
            ),
            (self.rpc_timeout.is_some(), "rpc-timeout"),
            (self.compression_quality.is_some(), "compression-quality"),
            (self.dial_edge_timeout.is_some(), "dial-edge-timeout"),
            (self.transport_loglevel.is_some(), "transport-loglevel"),
        ];
        flags
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect()
    }
}

/// cloudflared's app-level flags are its `tunnel` flags, so they may come before `tunnel`:
/// `burrow --no-autoupdate tunnel run` is read as `burrow tunnel --no-autoupdate run`.
pub fn cloudflared_argv(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let leading_flag = args
        .get(1)
        .is_some_and(|a| a.to_string_lossy().starts_with('-'));
    if let Some(at) = args.iter().position(|a| a == "tunnel") {
        if leading_flag && at > 1 {
            args[1..=at].rotate_right(1);
        }
    }
    args
}

/// cloudflared's `originRequest` flags for the origin of `--url`, `--hello-world` or
/// `--unix-socket`; ingress rules from a file take their options from the file instead.
#[derive(Debug, Args, Clone, Default)]
pub struct OriginFlags {
    /// Skip verifying the origin's TLS certificate.
    #[arg(long, env = "NO_TLS_VERIFY")]
    pub no_tls_verify: bool,
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
    #[arg(long, env = "TUNNEL_NO_CHUNKED_ENCODING")]
    pub no_chunked_encoding: bool,
}

impl OriginFlags {
    /// These flags as an `originRequest` block, over `file` (the config file's keys of the
    /// same names).
    fn merge(&self, file: &OriginFlagKeys) -> OriginRequestConfig {
        let or = |flag: &Option<String>, key: &Option<String>| flag.clone().or_else(|| key.clone());
        OriginRequestConfig {
            no_tls_verify: Some(self.no_tls_verify || file.no_tls_verify.unwrap_or(false)),
            http_host_header: or(&self.http_host_header, &file.http_host_header),
            ca_pool: or(&self.origin_ca_pool, &file.origin_ca_pool),
            origin_server_name: or(&self.origin_server_name, &file.origin_server_name),
            disable_chunked_encoding: Some(
                self.no_chunked_encoding || file.no_chunked_encoding.unwrap_or(false),
            ),
            ..OriginRequestConfig::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum TunnelCommand {
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
    /// Credentials file (cloudflared's <TunnelID>.json).
    #[arg(long, alias = "cred-file", env = "TUNNEL_CRED_FILE")]
    pub credentials_file: Option<String>,
    /// One origin for every request (instead of ingress rules).
    #[arg(long, env = "TUNNEL_URL")]
    pub url: Option<String>,
    /// The built-in hello-world page for every request (instead of --url).
    #[arg(long, env = "TUNNEL_HELLO_WORLD")]
    pub hello_world: bool,
    /// HTTP over this unix socket for every request (instead of --url).
    #[arg(long, env = "TUNNEL_UNIX_SOCKET")]
    pub unix_socket: Option<String>,
    /// The single origin's options (cloudflared's legacy `--url`-mode flags).
    #[command(flatten)]
    pub origin: OriginFlags,
    /// Transport protocol: quic (http2 is not supported yet) [default: auto].
    #[arg(long, short = 'p', env = "TUNNEL_TRANSPORT_PROTOCOL")]
    pub protocol: Option<String>,
    /// Extra client feature strings.
    #[arg(long, short = 'F', value_delimiter = ',')]
    pub features: Vec<String>,
    /// Most private-network flows at once, TCP and UDP together (0: unlimited); overrides
    /// `warp-routing.maxActiveFlows` of the local and the remote configuration.
    #[arg(long, env = "TUNNEL_MAX_ACTIVE_FLOWS")]
    pub max_active_flows: Option<u64>,
    /// Source (and ping-socket bind) address of the ICMP proxy for IPv4; default: the
    /// address of the route out.
    #[arg(long, env = "TUNNEL_ICMPV4_SRC")]
    pub icmpv4_src: Option<std::net::Ipv4Addr>,
    /// Same for IPv6.
    #[arg(long, env = "TUNNEL_ICMPV6_SRC")]
    pub icmpv6_src: Option<std::net::Ipv6Addr>,
    /// Post-quantum key exchange only. Only "on" counts as given: the file's `post-quantum: true`
    /// is not turned off by `TUNNEL_POST_QUANTUM=false`.
    #[arg(long, alias = "pq", env = "TUNNEL_POST_QUANTUM")]
    pub post_quantum: bool,
    /// Tunnel UUID (or the config file's `tunnel`).
    pub tunnel: Option<String>,
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
    /// `--grace-period`, at most [`MAX_GRACE`].
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
    /// `--icmpv4-src`.
    pub icmpv4_src: Option<std::net::Ipv4Addr>,
    /// `--icmpv6-src`.
    pub icmpv6_src: Option<std::net::Ipv6Addr>,
    /// `--post-quantum`.
    pub post_quantum: bool,
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
    /// `--hello-world`.
    pub hello_world: bool,
    /// `--unix-socket`.
    pub unix_socket: Option<String>,
    /// The single origin's options (`--no-tls-verify`, `--http-host-header`, ...).
    pub origin: OriginRequestConfig,
    /// `--logfile`, else `cloudflared.log` in `--log-directory`.
    pub logfile: Option<String>,
    /// `--pidfile`.
    pub pidfile: Option<String>,
    /// The tunnel argument, else the file's `tunnel`.
    pub tunnel: Option<String>,
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
        match protocol.map_or("auto", String::as_str) {
            "auto" | "quic" => {}
            "http2" | "h2mux" => {
                return Err(SetupError::Config(
                    "the http2 protocol is not supported by burrow yet; use --protocol quic".into(),
                ))
            }
            other => {
                return Err(SetupError::Config(format!(
                    "unknown protocol {other}, Available protocols: quic, http2"
                )))
            }
        }
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
            icmpv4_src: run.icmpv4_src.or(file.icmpv4_src),
            icmpv6_src: run.icmpv6_src.or(file.icmpv6_src),
            post_quantum: run.post_quantum || file.post_quantum.unwrap_or(false),
            token: or(&run.token, &file.token),
            token_file: or(&run.token_file, &file.token_file),
            credentials_contents: or(&run.credentials_contents, &file.credentials_contents),
            credentials_file: or(&run.credentials_file, &file.credentials_file),
            url: or(&run.url, &file.url),
            hello_world: run.hello_world || file.hello_world.unwrap_or(false),
            unix_socket: or(&run.unix_socket, &file.unix_socket),
            origin: run.origin.merge(&file.origin_flags),
            pidfile: or(&common.pidfile, &file.pidfile),
            logfile: or(&common.logfile, &file.logfile).or_else(|| {
                or(&common.log_directory, &file.log_directory)
                    .map(|d| format!("{}/cloudflared.log", d.trim_end_matches('/')))
            }),
            tunnel: or(&run.tunnel, &file.tunnel),
        })
    }
}

/// `--grace-period` as a Go duration (`30s`, `1m30s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
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
}

/// cloudflared's longest grace period.
const MAX_GRACE: Duration = Duration::from_secs(180);

/// Sets up logging at `level` to stderr.
pub fn init_logging(level: &str) {
    let _ = init_logging_to(level, None);
}

/// Sets up logging at `level` to stderr, and to `file` when given (appended; its directory
/// is created, as cloudflared does).
pub fn init_logging_to(level: &str, file: Option<&str>) -> Result<(), SetupError> {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let level = match level {
        "debug" | "trace" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" | "fatal" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    let Some(path) = file else {
        let _ = builder.with_writer(std::io::stderr).try_init();
        return Ok(());
    };
    let open = || {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let f = open()
        .map_err(|e| SetupError::Config(format!("unable to create a new logfile {path}: {e}")))?;
    let _ = builder
        .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
        .try_init();
    Ok(())
}

/// Entry point of `burrow tunnel`.
pub fn main(args: TunnelArgs) -> ExitCode {
    let TunnelCommand::Run(run) = args.command;
    // The file may set the log level, so it is read before logging starts; its errors go to
    // stderr directly.
    let setup = load_config(&args.common).and_then(|loaded| {
        let settings = Settings::merge(&args.common, &run, &loaded.file)?;
        Ok((loaded, settings))
    });
    let (loaded, settings) = match setup {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_logging_to(&settings.loglevel, settings.logfile.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let ignored = args.common.ignored.given();
    if !ignored.is_empty() {
        debug!(flags = ?ignored, "flags burrow does not act on, ignored");
    }
    if !loaded.file.ignored_keys.is_empty() {
        debug!(
            config = loaded.path.as_deref().unwrap_or(""),
            keys = ?loaded.file.ignored_keys,
            "configuration keys burrow does not act on, ignored"
        );
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_tunnel(settings, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

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

/// Reads `--config`, else the first of cloudflared's default locations, else nothing.
pub fn load_config(common: &CommonArgs) -> Result<LoadedConfig, SetupError> {
    let Some(path) = common.config.clone().or_else(default_config) else {
        return Ok(LoadedConfig::default());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SetupError::Config(format!("cannot read config {path}: {e}")))?;
    let file =
        ConfigFile::from_yaml(&text).map_err(|e| SetupError::Config(format!("{path}: {e}")))?;
    Ok(LoadedConfig {
        path: Some(path),
        text: Some(text),
        file,
    })
}

/// cloudflared's default config locations.
fn default_config() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    let dirs = [
        format!("{home}/.cloudflared"),
        format!("{home}/.cloudflare-warp"),
        format!("{home}/cloudflare-warp"),
        "/etc/cloudflared".into(),
        "/usr/local/etc/cloudflared".into(),
    ];
    dirs.iter()
        .flat_map(|d| [format!("{d}/config.yml"), format!("{d}/config.yaml")])
        .find(|p| std::path::Path::new(p).is_file())
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

/// The one origin the command line names, in cloudflared's order: `--hello-world`, `--url`,
/// `--unix-socket` (`ingress.parseSingleOriginService`).
fn single_origin(settings: &Settings) -> Result<Option<Service>, SetupError> {
    if settings.hello_world {
        return Ok(Some(Service::HelloWorld));
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
fn credentials(settings: &Settings) -> Result<Credentials, SetupError> {
    if let Some(t) = &settings.token {
        return Ok(Credentials::from_token(t)?);
    }
    if let Some(path) = &settings.token_file {
        let t = std::fs::read_to_string(path)
            .map_err(|e| SetupError::Config(format!("Failed to read token file: {e}")))?;
        return Ok(Credentials::from_token(t.trim())?);
    }
    let id = settings.tunnel.clone();
    if let Some(json) = &settings.credentials_contents {
        let mut creds = Credentials::from_file_json("TUNNEL_CRED_CONTENTS", json.as_bytes())?;
        // cloudflared: the tunnel named on the command line or in the file wins.
        if let Some(id) = id.and_then(|i| Uuid::parse_str(&i).ok()) {
            creds.tunnel_id = id;
        }
        return Ok(creds);
    }
    let path = settings
        .credentials_file
        .clone()
        .or_else(|| {
            let id = id.as_ref()?;
            let home = std::env::var("HOME").unwrap_or_default();
            [
                format!("{home}/.cloudflared"),
                format!("{home}/.cloudflare-warp"),
                format!("{home}/cloudflare-warp"),
                "/etc/cloudflared".into(),
                "/usr/local/etc/cloudflared".into(),
            ]
            .into_iter()
            .map(|d| format!("{d}/{id}.json"))
            .find(|p| std::path::Path::new(p).is_file())
        })
        .ok_or_else(|| {
            SetupError::Config(
                "no credentials: pass --token, or --credentials-file with the tunnel id".into(),
            )
        })?;
    let path = match path.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", std::env::var("HOME").unwrap_or_default()),
        None => path,
    };
    let mut creds = Credentials::read_file(&path)?;
    // cloudflared: the tunnel named on the command line wins over the file's TunnelID.
    if let Some(id) = id.and_then(|i| Uuid::parse_str(&i).ok()) {
        creds.tunnel_id = id;
    }
    Ok(creds)
}

/// Builds [`Options`] from the merged settings and the configuration file.
pub fn options(
    settings: &Settings,
    loaded: &LoadedConfig,
    metrics: Arc<Metrics>,
) -> Result<Options, SetupError> {
    let file = &loaded.file;
    let creds = credentials(settings)?;
    let ingress = match file
        .ingress()
        .map_err(|e| SetupError::Config(e.to_string()))?
    {
        Some(i) => {
            if settings.url.is_some() {
                warn!("--url is ignored: the configuration file has ingress rules");
            }
            i
        }
        None => match single_origin(settings)? {
            Some(service) => Ingress::single_with(service, &settings.origin)
                .map_err(|e| SetupError::Config(e.to_string()))?,
            None => {
                if settings.token.is_none() && settings.token_file.is_none() {
                    warn!("No ingress rules were defined in provided config (if any) nor from the cli, cloudflared will return 503 for all incoming HTTP requests");
                }
                Ingress::default_origin()
            }
        },
    };
    // The local configuration conn 0 pushes: the file's ingress, originRequest and
    // warp-routing as JSON.
    let local_config = loaded.text.as_ref().and_then(|t| {
        let v: serde_json::Value = serde_yaml_ng::from_str(t).ok()?;
        let mut out = serde_json::Map::new();
        for key in ["ingress", "originRequest", "warp-routing"] {
            if let Some(x) = v.get(key) {
                out.insert(key.into(), x.clone());
            }
        }
        Some(serde_json::Value::Object(out).to_string().into_bytes())
    });
    let region = settings
        .region
        .clone()
        .or_else(|| Some(creds.endpoint.clone()).filter(|e| !e.is_empty()));
    if settings.region.is_some() && !creds.endpoint.is_empty() {
        return Err(SetupError::Config(
            "region provided with a token that has an endpoint".into(),
        ));
    }
    let edges = if settings.edge.is_empty() {
        Edges::Srv { region }
    } else {
        Edges::Static(settings.edge.clone())
    };
    let cacert = match &settings.cacert {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| SetupError::Config(format!("cacert {p}: {e}")))?)
        }
        None => None,
    };
    Ok(Options {
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
        icmp: Some(crate::datagram::IcmpSources {
            v4: settings.icmpv4_src,
            v6: settings.icmpv6_src,
        }),
        post_quantum: settings.post_quantum,
        metrics,
    })
}

/// Writes the process id (no newline) to `path` (`~/` expanded), as cloudflared's
/// writePidFile does; failures are logged, not fatal.
fn write_pidfile(path: &str) {
    let path = match path.strip_prefix("~/") {
        Some(rest) => format!("{}/{rest}", std::env::var("HOME").unwrap_or_default()),
        None => path.to_owned(),
    };
    if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
        error!(pid_path = %path, error = %e, "Unable to write pid");
    }
}

/// Sends one message per SIGTERM/SIGINT.
pub fn signals() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn run_tunnel(settings: Settings, loaded: LoadedConfig) -> Result<(), String> {
    let connector_id = Uuid::new_v4();
    info!(%connector_id, "Generated Connector ID");
    let m = Metrics::new(connector_id);
    let opts = options(&settings, &loaded, m.clone()).map_err(|e| e.to_string())?;
    let listener = metrics::bind(&settings.metrics)
        .await
        .map_err(|e| format!("cannot bind metrics server on {}: {e}", settings.metrics))?;
    if let Some(path) = settings.pidfile.clone() {
        let m = m.clone();
        tokio::spawn(async move {
            m.registered.notified().await;
            write_pidfile(&path);
        });
    }
    tokio::spawn(metrics::serve(listener, m));
    let shutdown = signals();
    connector::run(opts, shutdown)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Tunnel(TunnelArgs),
    }

    /// Settings from a `burrow tunnel ...` command line and config.yml text.
    fn settings(args: &[&str], yaml: &str) -> Result<Settings, SetupError> {
        let Top::Tunnel(t) = Cli::try_parse_from([&["burrow", "tunnel"], args].concat())
            .expect("flags parse")
            .command;
        let TunnelCommand::Run(run) = t.command;
        let file = ConfigFile::from_yaml(yaml).expect("file parses");
        Settings::merge(&t.common, &run, &file)
    }

    const FILE: &str = "
tunnel: from-file
edge: [192.0.2.1:7844, 192.0.2.2:7844]
ha-connections: 2
grace-period: 10s
edge-ip-version: '6'
metrics: 127.0.0.1:2000
loglevel: debug
features: [a, b]
max-active-flows: 7
icmpv4-src: 192.0.2.9
url: http://localhost:3000
no-autoupdate: true
";

    #[test]
    fn without_flags_the_file_beats_the_defaults() {
        let s = settings(&["run"], FILE).unwrap();
        assert_eq!(s.edge, ["192.0.2.1:7844", "192.0.2.2:7844"]);
        assert_eq!(s.ha_connections, 2);
        assert_eq!(s.grace_period, Duration::from_secs(10));
        assert_eq!(s.ip_version, IpVersion::V6);
        assert_eq!(s.metrics, "127.0.0.1:2000");
        assert_eq!(s.loglevel, "debug");
        assert_eq!(s.features, ["a", "b"]);
        assert_eq!(s.max_active_flows, Some(7));
        assert_eq!(s.icmpv4_src, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(s.url.as_deref(), Some("http://localhost:3000"));
        assert_eq!(s.tunnel.as_deref(), Some("from-file"));
    }

    #[test]
    fn without_either_the_defaults_hold() {
        let s = settings(&["run"], "").unwrap();
        assert!(s.edge.is_empty(), "DNS SRV");
        assert_eq!(s.ha_connections, 4);
        assert_eq!(s.grace_period, Duration::from_secs(30));
        assert_eq!(s.ip_version, IpVersion::Auto);
        assert_eq!(s.metrics, "localhost:0");
        assert_eq!(s.loglevel, "info");
        assert!(s.features.is_empty());
        assert_eq!(s.max_active_flows, None);
        assert!(!s.post_quantum);
    }

    #[test]
    fn flags_beat_the_file_before_or_after_run() {
        let s = settings(
            &[
                "--ha-connections",
                "3",
                "--grace-period",
                "1m",
                "--edge",
                "198.51.100.1:7844",
                "run",
                "--metrics",
                "127.0.0.1:3000",
                "--edge-ip-version",
                "4",
                "--loglevel",
                "warn",
                "-F",
                "c",
                "--max-active-flows",
                "0",
                "--url",
                "http://localhost:4000",
                "from-flag",
            ],
            FILE,
        )
        .unwrap();
        assert_eq!(
            s.edge,
            ["198.51.100.1:7844"],
            "a list flag replaces the file's"
        );
        assert_eq!(s.ha_connections, 3);
        assert_eq!(
            s.grace_period,
            Duration::from_secs(60),
            "an explicit --grace-period is not overridden by the file"
        );
        assert_eq!(s.ip_version, IpVersion::V4);
        assert_eq!(s.metrics, "127.0.0.1:3000");
        assert_eq!(s.loglevel, "warn");
        assert_eq!(s.features, ["c"]);
        assert_eq!(s.max_active_flows, Some(0));
        assert_eq!(s.url.as_deref(), Some("http://localhost:4000"));
        assert_eq!(s.tunnel.as_deref(), Some("from-flag"));
        // Flags equal to the defaults still count as given.
        let s = settings(
            &["--grace-period", "30s", "--ha-connections", "4", "run"],
            FILE,
        )
        .unwrap();
        assert_eq!(s.grace_period, Duration::from_secs(30));
        assert_eq!(s.ha_connections, 4);
    }

    #[test]
    fn merged_values_are_checked_wherever_they_came_from() {
        let e = |args: &[&str], yaml: &str| settings(args, yaml).unwrap_err().to_string();
        assert!(e(&["run"], "grace-period: 4m\n").contains("too long"));
        assert!(e(&["--grace-period", "4m", "run"], "").contains("too long"));
        // The file's too-long value does not matter when the flag overrides it.
        assert!(settings(&["--grace-period", "1s", "run"], "grace-period: 4m\n").is_ok());
        assert!(e(&["run"], "protocol: http2\n").contains("http2 protocol is not supported"));
        assert!(e(&["run"], "edge-ip-version: '5'\n").contains("edge-ip-version 5"));
        assert!(settings(&["run", "-p", "quic"], "protocol: http2\n").is_ok());
    }

    #[test]
    fn post_quantum_from_flag_or_file() {
        assert!(
            settings(&["run"], "post-quantum: true\n")
                .unwrap()
                .post_quantum
        );
        assert!(
            settings(&["run", "--pq"], "post-quantum: false\n")
                .unwrap()
                .post_quantum
        );
        assert!(
            !settings(&["run"], "post-quantum: false\n")
                .unwrap()
                .post_quantum
        );
    }

    #[test]
    fn flags_before_tunnel_move_after_it_and_nothing_else_moves() {
        let argv = |a: &[&str]| -> Vec<String> {
            cloudflared_argv(a.iter().map(Into::into).collect())
                .into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            argv(&[
                "burrow",
                "--no-autoupdate",
                "--metrics",
                "x",
                "tunnel",
                "run",
                "id"
            ]),
            [
                "burrow",
                "tunnel",
                "--no-autoupdate",
                "--metrics",
                "x",
                "run",
                "id"
            ]
        );
        for same in [
            &["burrow", "tunnel", "--no-autoupdate", "run"][..],
            &["burrow", "edge", "--dir", "tunnel"],
            &["burrow", "--version"],
        ] {
            assert_eq!(argv(same), same);
        }
    }

    #[test]
    fn single_origin_flags_and_keys_shape_the_one_rule() {
        let s = settings(
            &[
                "run",
                "--url",
                "https://localhost:8443",
                "--http-host-header",
                "internal.test",
                "--no-tls-verify",
            ],
            "origin-ca-pool: /etc/ca.pem\nhttp-host-header: from-file\nno-chunked-encoding: true\n",
        )
        .unwrap();
        let service = single_origin(&s).unwrap().unwrap();
        let ingress = Ingress::single_with(service, &s.origin).unwrap();
        let o = &ingress.rules()[0].origin.origin_request;
        assert_eq!(
            o.http_host_header.as_deref(),
            Some("internal.test"),
            "flag over file"
        );
        assert!(o.no_tls_verify);
        assert_eq!(o.ca_pool.as_deref(), Some("/etc/ca.pem"), "the file's key");
        assert!(o.disable_chunked_encoding);
        let order = settings(
            &[
                "run",
                "--url",
                "http://a:1",
                "--unix-socket",
                "/s",
                "--hello-world",
            ],
            "",
        )
        .unwrap();
        assert_eq!(single_origin(&order).unwrap(), Some(Service::HelloWorld));
        let order = settings(&["run", "--url", "http://a:1", "--unix-socket", "/s"], "").unwrap();
        assert_eq!(
            single_origin(&order).unwrap(),
            Some(url_service("http://a:1").unwrap())
        );
    }
}
