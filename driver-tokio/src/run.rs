//! `burrow tunnel run`: cloudflared's flags, configuration file and credentials, then the
//! connector loop. Flags of `cloudflared tunnel` are accepted before or after `run`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use burrow_core::ingress::{ConfigFile, Ingress, Service};
use burrow_core::tunnel::supervisor::IpVersion;
use clap::{Args, Subcommand};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
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

/// Flags cloudflared defines on `tunnel`.
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
    /// HA connections to the edge.
    #[arg(long, global = true, default_value_t = 4)]
    pub ha_connections: u8,
    /// How long a graceful shutdown may take (at most 3m).
    #[arg(
        long,
        global = true,
        env = "TUNNEL_GRACE_PERIOD",
        default_value = "30s"
    )]
    pub grace_period: String,
    /// Edge IP version: 4, 6 or auto.
    #[arg(
        long,
        global = true,
        env = "TUNNEL_EDGE_IP_VERSION",
        default_value = "auto"
    )]
    pub edge_ip_version: String,
    /// Edge region (regional SRV service).
    #[arg(long, global = true, env = "TUNNEL_REGION")]
    pub region: Option<String>,
    /// Metrics and readiness server address.
    #[arg(
        long,
        global = true,
        env = "TUNNEL_METRICS",
        default_value = "localhost:0"
    )]
    pub metrics: String,
    /// Log level: debug, info, warn, error, fatal.
    #[arg(long, global = true, env = "TUNNEL_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
    /// Accepted for compatibility; burrow never updates itself.
    #[arg(long, global = true, hide = true)]
    pub no_autoupdate: bool,
}

#[derive(Debug, Subcommand)]
enum TunnelCommand {
    /// Run a tunnel's connector.
    Run(RunArgs),
}

/// Flags of `tunnel run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Tunnel token (base64 JSON {a,t,s}).
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Credentials file (cloudflared's <TunnelID>.json).
    #[arg(long, alias = "cred-file", env = "TUNNEL_CRED_FILE")]
    pub credentials_file: Option<String>,
    /// One origin for every request (instead of ingress rules).
    #[arg(long, env = "TUNNEL_URL")]
    pub url: Option<String>,
    /// Transport protocol: quic (http2 is not supported yet).
    #[arg(
        long,
        short = 'p',
        env = "TUNNEL_TRANSPORT_PROTOCOL",
        default_value = "auto"
    )]
    pub protocol: String,
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
    /// Post-quantum key exchange only.
    #[arg(long, alias = "pq", env = "TUNNEL_POST_QUANTUM")]
    pub post_quantum: bool,
    /// Tunnel UUID (or the config file's `tunnel`).
    pub tunnel: Option<String>,
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

/// Sets up logging at `level`.
pub fn init_logging(level: &str) {
    let level = match level {
        "debug" | "trace" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" | "fatal" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Entry point of `burrow tunnel`.
pub fn main(args: TunnelArgs) -> ExitCode {
    init_logging(&args.common.loglevel);
    let TunnelCommand::Run(run) = args.command;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_tunnel(args.common, run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Loads credentials: token > credentials file > `<uuid>.json` in cloudflared's directories.
fn credentials(run: &RunArgs, file: &ConfigFile) -> Result<Credentials, SetupError> {
    if let Some(t) = &run.token {
        return Ok(Credentials::from_token(t)?);
    }
    let id = run.tunnel.clone().or_else(|| file.tunnel.clone());
    let path = run
        .credentials_file
        .clone()
        .or_else(|| file.credentials_file.clone())
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

/// Builds [`Options`] from flags and the configuration file.
pub fn options(
    common: &CommonArgs,
    run: &RunArgs,
    metrics: Arc<Metrics>,
) -> Result<Options, SetupError> {
    match run.protocol.as_str() {
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
    let config_path = common.config.clone().or_else(default_config);
    let (file, text) = match &config_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| SetupError::Config(format!("cannot read config {p}: {e}")))?;
            let file = ConfigFile::from_yaml(&text)
                .map_err(|e| SetupError::Config(format!("{p}: {e}")))?;
            (file, Some(text))
        }
        None => (ConfigFile::default(), None),
    };
    let creds = credentials(run, &file)?;
    let grace_text = file
        .grace_period
        .map(|d| humantime::format_duration(d.0).to_string())
        .unwrap_or_else(|| common.grace_period.clone());
    let grace = humantime::parse_duration(&grace_text)
        .map_err(|e| SetupError::Config(format!("invalid --grace-period {grace_text}: {e}")))?;
    if grace > MAX_GRACE {
        return Err(SetupError::Config(format!(
            "grace-period {grace_text} is too long. Maximum allowed is 3m0s"
        )));
    }
    let ingress = match file
        .ingress()
        .map_err(|e| SetupError::Config(e.to_string()))?
    {
        Some(i) => {
            if run.url.is_some() {
                warn!("--url is ignored: the configuration file has ingress rules");
            }
            i
        }
        None => match run.url.as_ref().or(file.url.as_ref()) {
            Some(url) => Ingress::single(url_service(url).map_err(SetupError::Config)?),
            None => {
                if run.token.is_none() {
                    warn!("No ingress rules were defined in provided config (if any) nor from the cli, cloudflared will return 503 for all incoming HTTP requests");
                }
                Ingress::default_origin()
            }
        },
    };
    // The local configuration conn 0 pushes: the file's ingress, originRequest and
    // warp-routing as JSON.
    let local_config = text.and_then(|t| {
        let v: serde_json::Value = serde_yaml_ng::from_str(&t).ok()?;
        let mut out = serde_json::Map::new();
        for key in ["ingress", "originRequest", "warp-routing"] {
            if let Some(x) = v.get(key) {
                out.insert(key.into(), x.clone());
            }
        }
        Some(serde_json::Value::Object(out).to_string().into_bytes())
    });
    let ip_version = match common.edge_ip_version.as_str() {
        "4" => IpVersion::V4,
        "6" => IpVersion::V6,
        "auto" => IpVersion::Auto,
        other => {
            return Err(SetupError::Config(format!(
                "invalid --edge-ip-version {other}: use 4, 6 or auto"
            )))
        }
    };
    let region = common
        .region
        .clone()
        .or_else(|| Some(creds.endpoint.clone()).filter(|e| !e.is_empty()));
    if common.region.is_some() && !creds.endpoint.is_empty() {
        return Err(SetupError::Config(
            "region provided with a token that has an endpoint".into(),
        ));
    }
    let edges = if common.edge.is_empty() {
        Edges::Srv { region }
    } else {
        Edges::Static(common.edge.clone())
    };
    let cacert = match &common.cacert {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| SetupError::Config(format!("--cacert {p}: {e}")))?)
        }
        None => None,
    };
    Ok(Options {
        creds,
        ingress,
        local_config,
        edges,
        ip_version,
        cacert,
        ha_connections: common.ha_connections.max(1),
        grace_period: grace,
        features: run.features.clone(),
        max_active_flows: run.max_active_flows,
        local_max_active_flows: file.warp_routing.max_active_flows,
        icmp: Some(crate::datagram::IcmpSources {
            v4: run.icmpv4_src,
            v6: run.icmpv6_src,
        }),
        post_quantum: run.post_quantum,
        metrics,
    })
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

async fn run_tunnel(common: CommonArgs, run: RunArgs) -> Result<(), String> {
    let connector_id = Uuid::new_v4();
    info!(%connector_id, "Generated Connector ID");
    let m = Metrics::new(connector_id);
    let opts = options(&common, &run, m.clone()).map_err(|e| e.to_string())?;
    let listener = metrics::bind(&common.metrics)
        .await
        .map_err(|e| format!("cannot bind metrics server on {}: {e}", common.metrics))?;
    tokio::spawn(metrics::serve(listener, m));
    let shutdown = signals();
    connector::run(opts, shutdown)
        .await
        .map_err(|e| e.to_string())
}
