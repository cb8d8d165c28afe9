//! cloudflared `tunnel` flags that are harmless to accept and ignore: burrow never updates
//! itself, has no pre-checks, UI or reconnect tokens, and its heartbeats and metrics are its
//! own; cloudflared itself ignores the removed SSH server's and DNS proxy's flags, `--ui`,
//! `--use-reconnect-token` and the two deprecated proxy timeouts. They are named once at debug
//! level (see [`IgnoredArgs::given`]).

use clap::{ArgMatches, Command};

use super::flag_table::{Flag, Takes};

/// The ignored flags, as cloudflared spells them.
pub(super) const IGNORED: &[Flag] = &[
    Flag::switch("no-autoupdate", "NO_AUTOUPDATE").env("NO_AUTOUPDATE"),
    Flag::value("autoupdate-freq", "AUTOUPDATE_FREQ"),
    Flag::switch("is-autoupdated", "IS_AUTOUPDATED"),
    Flag::switch("no-prechecks", "NO_PRECHECKS").env("TUNNEL_NO_PRECHECKS"),
    Flag::value("metrics-update-freq", "METRICS_UPDATE_FREQ").env("TUNNEL_METRICS_UPDATE_FREQ"),
    Flag::value("origincert", "ORIGINCERT").env("TUNNEL_ORIGIN_CERT"),
    Flag::value("heartbeat-interval", "HEARTBEAT_INTERVAL"),
    Flag::value("heartbeat-count", "HEARTBEAT_COUNT"),
    Flag::value("compression-quality", "COMPRESSION_QUALITY").env("TUNNEL_COMPRESSION_LEVEL"),
    Flag::value("dial-edge-timeout", "DIAL_EDGE_TIMEOUT").env("DIAL_EDGE_TIMEOUT"),
    Flag::value("transport-loglevel", "TRANSPORT_LOGLEVEL")
        .alias("proto-loglevel")
        .env("TUNNEL_PROTO_LOGLEVEL")
        .or_env("TUNNEL_TRANSPORT_LOGLEVEL"),
    Flag::switch("use-reconnect-token", "USE_RECONNECT_TOKEN").env("TUNNEL_USE_RECONNECT_TOKEN"),
    Flag::switch("ui", "UI"),
    Flag::value("trace-output", "TRACE_OUTPUT").env("TUNNEL_TRACE_OUTPUT"),
    Flag::value("max-fetch-size", "MAX_FETCH_SIZE").env("TUNNEL_MAX_FETCH_SIZE"),
    Flag::value("proxy-connection-timeout", "PROXY_CONNECTION_TIMEOUT"),
    Flag::value(
        "proxy-expect-continue-timeout",
        "PROXY_EXPECT_CONTINUE_TIMEOUT",
    ),
    Flag::switch("proxy-dns", "PROXY_DNS"),
    Flag::value("proxy-dns-port", "PROXY_DNS_PORT"),
    Flag::value("proxy-dns-address", "PROXY_DNS_ADDRESS"),
    Flag::values("proxy-dns-upstream", "PROXY_DNS_UPSTREAM"),
    Flag::value(
        "proxy-dns-max-upstream-conns",
        "PROXY_DNS_MAX_UPSTREAM_CONNS",
    ),
    Flag::values("proxy-dns-bootstrap", "PROXY_DNS_BOOTSTRAP"),
    Flag::switch("ssh-server", "SSH_SERVER").env("TUNNEL_SSH_SERVER"),
    Flag::value("local-ssh-port", "LOCAL_SSH_PORT").env("LOCAL_SSH_PORT"),
    Flag::value("ssh-idle-timeout", "SSH_IDLE_TIMEOUT").env("SSH_IDLE_TIMEOUT"),
    Flag::value("ssh-max-timeout", "SSH_MAX_TIMEOUT").env("SSH_MAX_TIMEOUT"),
    Flag::value("bucket-name", "BUCKET_NAME").env("BUCKET_ID"),
    Flag::value("region-name", "REGION_NAME").env("REGION_ID"),
    Flag::value("secret-id", "SECRET_ID").env("SECRET_ID"),
    Flag::value("access-key-id", "ACCESS_KEY_ID").env("ACCESS_CLIENT_ID"),
    Flag::value("session-token", "SESSION_TOKEN").env("SESSION_TOKEN_ID"),
    Flag::value("s3-url-host", "S3_URL_HOST").env("S3_URL"),
    Flag::value("host-key-path", "HOST_KEY_PATH").env("HOST_KEY_PATH"),
];

/// Whether the ignored flag `name` is a switch.
pub(super) fn is_switch(name: &str) -> bool {
    IGNORED
        .iter()
        .any(|f| f.long == name && matches!(f.takes, Takes::Switch | Takes::Presence))
}

/// The ignored flags given (on the command line or through their environment variable), in
/// `IGNORED`'s order, with their values.
#[derive(Debug, Clone, Default)]
pub struct IgnoredArgs {
    given: Vec<(&'static Flag, Option<String>)>,
}

impl IgnoredArgs {
    /// The value given for the ignored flag `name` (cloudflared reports some of them in
    /// `__configuration_flags`), in Go's spelling (`--no-autoupdate` is `"true"`); durations as
    /// given. `None` if not given; `Some(None)` for a switch whose variable is set but empty
    /// (cloudflared reports nothing then, and does not read the file's key either).
    pub fn configuration_flag(&self, name: &str) -> Option<Option<String>> {
        let (_, value) = self.given.iter().find(|(flag, _)| flag.long == name)?;
        Some(value.clone())
    }

    /// Adds the flags not given that cloudflared also reads from a second variable, set in
    /// `host`'s environment (the only such flag takes a value), in `IGNORED`'s order.
    pub fn read_later_env(&mut self, host: &dyn super::Host) {
        for flag in IGNORED {
            let Some(var) = flag.later_env.filter(|_| flag.takes == Takes::Value) else {
                continue;
            };
            if self.given.iter().any(|(f, _)| std::ptr::eq(*f, flag)) {
                continue;
            }
            if let Some(value) = host.var(var) {
                self.given.push((flag, Some(value)));
            }
        }
        self.given
            .sort_by_key(|(f, _)| IGNORED.iter().position(|g| std::ptr::eq(g, *f)));
    }

    /// The flags given (on the command line or through their environment variable).
    pub fn given(&self) -> Vec<&'static str> {
        self.given.iter().map(|(flag, _)| flag.long).collect()
    }
}

impl clap::FromArgMatches for IgnoredArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            given: IGNORED
                .iter()
                .filter_map(|flag| flag.read(matches).map(|value| (flag, value)))
                .collect(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for IgnoredArgs {
    fn augment_args(cmd: Command) -> Command {
        IGNORED.iter().fold(cmd, |cmd, flag| cmd.arg(flag.arg()))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
