//! `service install` / `service uninstall`, as cloudflared does them on a systemd host: the
//! unit file it writes, the command line that unit runs, the checks made before anything is
//! written, and the `systemctl` calls. The driver does the file and process work.

use clap::{Args, Subcommand};
use thiserror::Error;

use super::{Credentials, Host, LoadedConfig};

/// The unit's name: cloudflared's, so `systemctl restart cloudflared` and
/// `cloudflared service uninstall` keep working after a switch (either installer refuses
/// while the other's unit is there).
pub const UNIT: &str = "cloudflared.service";
/// The token file `service install TOKEN` writes in the service configuration directory.
pub const TOKEN_FILE: &str = "token";
/// The configuration file the unit reads, in the service configuration directory.
pub const CONFIG_FILE: &str = "config.yml";

/// `burrow service ...`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Configuration file to install (cloudflared's `--config`); without it, the first
    /// config.yml in cloudflared's default directories.
    #[arg(long, global = true)]
    pub config: Option<String>,
    /// Where the unit file goes.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "BURROW_SYSTEMD_UNIT_DIR",
        default_value = "/etc/systemd/system"
    )]
    pub unit_dir: String,
    /// The service configuration directory (token file, config.yml).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "BURROW_SERVICE_CONFIG_DIR",
        default_value = "/etc/cloudflared"
    )]
    pub service_config_dir: String,
    /// Present when systemd runs the host (sd_booted's test, as cloudflared's).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "BURROW_SYSTEMD_RUN_DIR",
        default_value = "/run/systemd/system"
    )]
    pub systemd_run_dir: String,
    /// The `systemctl` program.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "BURROW_SYSTEMCTL",
        default_value = "systemctl"
    )]
    pub systemctl: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: ServiceCommand,
}

/// Subcommands of `service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install burrow as a systemd service (unit `cloudflared.service`), enable and start it.
    ///
    /// With TOKEN, the token is written to the service configuration directory and the
    /// service runs with `--token-file`. Without, the configuration file (with `tunnel` and
    /// `credentials-file`) is copied there and the service runs with `--config`.
    Install {
        /// The tunnel token, as the dashboard shows it.
        token: Option<String>,
        /// Accepted for cloudflared's command line; burrow installs no update timer.
        #[arg(long)]
        no_update_service: bool,
    },
    /// Stop, disable and remove the service and its token file.
    Uninstall,
}

/// What stops `service install` before the unit is written.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The token does not decode (cloudflared's "Provided Tunnel token is not valid.").
    #[error(transparent)]
    BadToken(super::CredsError),
    /// No configuration file was found or given.
    #[error("Cannot determine default configuration path. No file [config.yml config.yaml] in [~/.cloudflared ~/.cloudflare-warp ~/cloudflare-warp /etc/cloudflared /usr/local/etc/cloudflared]")]
    NoConfig,
    /// The configuration does not name the tunnel and its credentials.
    #[error("configuration file {0} must contain entries for the tunnel to run and its associated credentials (tunnel: TUNNEL-UUID, credentials-file: CREDENTIALS-FILE)")]
    Incomplete(String),
    /// Another configuration is already where the service reads its own.
    #[error("possible conflicting configuration in {found} and {service}. Either remove {service} or run `burrow --config {service} service install`")]
    Conflict {
        /// The configuration file found.
        found: String,
        /// The service's configuration file.
        service: String,
    },
    /// A unit is installed already.
    #[error("cloudflared service is already installed at {0}; if you are running a cloudflared tunnel, you can point it to multiple origins, avoiding the need to run more than one cloudflared service in the same machine; otherwise if you are really sure, you can do `burrow service uninstall` to clean up the existing service and then try again this command")]
    AlreadyInstalled(String),
}

/// Checks a token as cloudflared does before writing it.
pub fn check_token(token: &str) -> Result<(), ServiceError> {
    Credentials::from_token(token)
        .map(|_| ())
        .map_err(ServiceError::BadToken)
}

/// The service's arguments after `--no-autoupdate` for a token install.
pub fn token_args(config_dir: &str) -> Vec<String> {
    vec![
        "tunnel".into(),
        "run".into(),
        "--token-file".into(),
        format!("{config_dir}/{TOKEN_FILE}"),
    ]
}

/// What a configuration-file install does with the file found: `Some(path)` is copied to
/// the service's `config.yml`, `None` means it is that file already. The file must name the
/// tunnel and its credentials file, and must not shadow another configuration already in the
/// service directory.
pub fn config_to_copy(
    loaded: &LoadedConfig,
    config_dir: &str,
    host: &dyn Host,
) -> Result<Option<String>, ServiceError> {
    let path = loaded.path.clone().ok_or(ServiceError::NoConfig)?;
    let named = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !named(&loaded.file.tunnel) || !named(&loaded.file.credentials_file) {
        return Err(ServiceError::Incomplete(path));
    }
    let service = format!("{config_dir}/{CONFIG_FILE}");
    if path == service {
        return Ok(None);
    }
    if host.is_file(&service) {
        return Err(ServiceError::Conflict {
            found: path,
            service,
        });
    }
    Ok(Some(path))
}

/// The service's arguments after `--no-autoupdate` for a configuration-file install.
pub fn config_args(config_dir: &str) -> Vec<String> {
    vec![
        "--config".into(),
        format!("{config_dir}/{CONFIG_FILE}"),
        "tunnel".into(),
        "run".into(),
    ]
}

/// cloudflared's `cloudflared.service`, running `exe --no-autoupdate args...`. `Type=notify`:
/// the daemon tells systemd it is ready once its first connection is registered.
pub fn unit_file(exe: &str, args: &[String]) -> String {
    let mut exec = quote(exe);
    exec.push_str(" --no-autoupdate");
    for a in args {
        exec.push(' ');
        exec.push_str(&quote(a));
    }
    format!(
        "[Unit]
Description=Cloudflare Tunnel client
After=network-online.target
Wants=network-online.target

[Service]
TimeoutStartSec=15
Type=notify
ExecStart={exec}
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
"
    )
}

/// One `ExecStart` word: as is when systemd would read it back unchanged, else
/// double-quoted with `\` and `"` escaped (cloudflared writes paths unquoted, which breaks on
/// a space).
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\' | '%' | '$' | ';'));
    if plain {
        return word.to_owned();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // `%` starts a specifier and `$` a variable in ExecStart, even inside quotes.
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `systemctl` calls after the unit is written, in cloudflared's order.
pub const INSTALL_SYSTEMCTL: [&[&str]; 3] =
    [&["enable", UNIT], &["daemon-reload"], &["start", UNIT]];

/// `systemctl` calls before the unit is removed (when it is installed), in cloudflared's order.
pub const UNINSTALL_SYSTEMCTL: [&[&str]; 2] = [&["disable", UNIT], &["stop", UNIT]];

/// `systemctl` call after the unit is removed.
pub const RELOAD_SYSTEMCTL: &[&str] = &["daemon-reload"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_token_file_as_cloudflareds_does() {
        let unit = unit_file("/usr/bin/burrow", &token_args("/etc/cloudflared"));
        assert!(unit.contains(
            "\nExecStart=/usr/bin/burrow --no-autoupdate tunnel run --token-file /etc/cloudflared/token\n"
        ));
        assert!(unit.contains("\nType=notify\n"));
        assert!(unit.ends_with("[Install]\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn words_systemd_would_split_or_expand_are_quoted() {
        assert_eq!(quote("/opt/my dir/burrow"), "\"/opt/my dir/burrow\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("50%$HOME"), "\"50%%$$HOME\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("--config"), "--config");
    }
}
