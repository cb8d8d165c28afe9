//! `service install` / `service uninstall`, as cloudflared does them: which init system runs
//! the host (systemd, OpenRC, else SysV), the unit or init script written for it, the command
//! line it runs, the checks made before anything is written, and the commands run after. The
//! driver does the file and process work.

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
    /// Where OpenRC and SysV scripts go (`init.d`, `conf.d`, `rcN.d`, `sysconfig` below it).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "BURROW_SYSCONF_DIR",
        default_value = "/etc"
    )]
    pub sysconf_dir: String,
    /// The `openrc-run` program whose presence means OpenRC runs the host (default: any of
    /// cloudflared's three places).
    #[arg(long, global = true, hide = true, env = "BURROW_OPENRC_RUN")]
    pub openrc_run: Option<String>,
    /// The subcommand.
    #[command(subcommand)]
    pub command: ServiceCommand,
}

/// Subcommands of `service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install burrow as a service (systemd unit `cloudflared.service`, or the init script
    /// `cloudflared` under OpenRC or SysV), enable and start it.
    ///
    /// With TOKEN, the token is written to the service configuration directory and the
    /// service runs with `--token-file`. Without, the configuration file (with `tunnel` and
    /// `credentials-file`) is copied there and the service runs with `--config`.
    Install {
        /// The tunnel token, as the dashboard shows it.
        token: Option<String>,
        /// Accepted for cloudflared's command line; burrow installs no update timer.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_update_service")]
        no_update_service: Option<super::Switch>,
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

/// The init system that runs a host, as cloudflared's `inits` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// systemd: `/run/systemd/system` is a directory (sd_booted's test).
    Systemd,
    /// OpenRC: `openrc-run` is installed.
    OpenRc,
    /// Neither: a SysV-style `/etc/init.d` with `rcN.d` links.
    SysV,
}

/// Where cloudflared looks for `openrc-run`.
pub const OPENRC_RUN: [&str; 3] = [
    "/sbin/openrc-run",
    "/usr/sbin/openrc-run",
    "/usr/bin/openrc-run",
];

impl Init {
    /// The init system of the host `args` describe: `systemd_booted` is whether its
    /// `systemd_run_dir` is a directory (the driver looks).
    pub fn of(args: &ServiceArgs, systemd_booted: bool, host: &dyn Host) -> Self {
        if systemd_booted {
            return Self::Systemd;
        }
        let openrc = match &args.openrc_run {
            Some(p) => host.is_file(p),
            None => OPENRC_RUN.iter().any(|p| host.is_file(p)),
        };
        if openrc {
            Self::OpenRc
        } else {
            Self::SysV
        }
    }

    /// Its name as cloudflared logs it ("Using SysV").
    pub fn name(self) -> &'static str {
        match self {
            Self::Systemd => "Systemd",
            Self::OpenRc => "OpenRC",
            Self::SysV => "SysV",
        }
    }
}

/// The init script's name under `init.d` (and OpenRC's `conf.d`): cloudflared's.
pub const SCRIPT: &str = "cloudflared";

/// A word for `/bin/sh`: as is when the shell would read it back unchanged, else in single
/// quotes (cloudflared writes paths bare, which breaks on a space).
fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// `--no-autoupdate args...` as shell words.
fn sh_args(args: &[String]) -> String {
    let mut line = String::from("--no-autoupdate");
    for a in args {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    line
}

/// OpenRC's `/etc/init.d/cloudflared`, as cloudflared's: supervise-daemon restarts the
/// tunnel when it exits, as systemd's `Restart=on-failure`.
pub fn openrc_script(exe: &str, args: &[String]) -> String {
    // Inside double quotes, where `\`, `"`, `$` and `` ` `` are still special.
    let mut command_args = String::new();
    for c in sh_args(args).chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            command_args.push('\\');
        }
        command_args.push(c);
    }
    format!(
        "#!/sbin/openrc-run

description=\"Cloudflare Tunnel client\"

: \"${{cloudflared_user:=root}}\"

command={exe}
command_args=\"{args}\"
command_user=\"${{cloudflared_user}}\"

pidfile=\"/run/${{RC_SVCNAME}}.pid\"
output_log=\"/var/log/${{RC_SVCNAME}}.log\"
error_log=\"/var/log/${{RC_SVCNAME}}.err\"

# Use OpenRC's supervisor so the tunnel is restarted on failure.
supervisor=\"supervise-daemon\"
respawn_delay=5
respawn_max=0

depend() {{
\tneed net
\tuse dns logger
\tafter net firewall
}}
",
        exe = sh_quote(exe),
        args = command_args,
    )
}

/// OpenRC's `/etc/conf.d/cloudflared`, as cloudflared's.
pub const OPENRC_CONF: &str = "# Configuration for the cloudflared OpenRC service.

# User the cloudflared daemon runs as. Defaults to root.
#cloudflared_user=\"cloudflared\"
";

/// The SysV `/etc/init.d/cloudflared`: cloudflared's script (chkconfig and LSB headers,
/// start/stop/restart/status by pid file, logs in `/var/log`, overrides from
/// `sysconfig/cloudflared`), written for a POSIX `sh` (cloudflared's stop loop uses bash's
/// `{1..10}`, which dash runs once) and with the tunnel's words quoted. `sysconf` is the
/// directory `sysconfig` is under (`/etc`).
pub fn sysv_script(exe: &str, args: &[String], sysconf: &str) -> String {
    format!(
        r#"#!/bin/sh
# For RedHat and cousins:
# chkconfig: 2345 99 01
# description: Cloudflare Tunnel client
# processname: {exe}
### BEGIN INIT INFO
# Provides:          cloudflared
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Cloudflare Tunnel client
# Description:       Cloudflare Tunnel client
### END INIT INFO
name=$(basename "$(readlink -f "$0")")
pid_file="/var/run/$name.pid"
stdout_log="/var/log/$name.log"
stderr_log="/var/log/$name.err"
[ -e {sysconfig}/$name ] && . {sysconfig}/$name
get_pid() {{
    cat "$pid_file"
}}
is_running() {{
    [ -f "$pid_file" ] && kill -0 "$(get_pid)" > /dev/null 2>&1
}}
case "$1" in
    start)
        if is_running; then
            echo "Already started"
        else
            echo "Starting $name"
            {exe_word} --pidfile "$pid_file" {args} >> "$stdout_log" 2>> "$stderr_log" &
            echo $! > "$pid_file"
        fi
    ;;
    stop)
        if is_running; then
            printf "Stopping %s.." "$name"
            kill "$(get_pid)"
            for i in 1 2 3 4 5 6 7 8 9 10
            do
                if ! is_running; then
                    break
                fi
                printf "."
                sleep 1
            done
            echo
            if is_running; then
                echo "Not stopped; may still be shutting down or shutdown may have failed"
                exit 1
            else
                echo "Stopped"
                if [ -f "$pid_file" ]; then
                    rm "$pid_file"
                fi
            fi
        else
            echo "Not running"
        fi
    ;;
    restart)
        $0 stop
        if is_running; then
            echo "Unable to stop, will not attempt to start"
            exit 1
        fi
        $0 start
    ;;
    status)
        if is_running; then
            echo "Running"
        else
            echo "Stopped"
            exit 1
        fi
    ;;
    *)
    echo "Usage: $0 {{start|stop|restart|status}}"
    exit 1
    ;;
esac
exit 0
"#,
        exe = exe.replace('\n', " "),
        sysconfig = sh_quote(&format!("{sysconf}/sysconfig")),
        exe_word = sh_quote(exe),
        args = sh_args(args),
    )
}

/// The SysV run-level links cloudflared makes to its script: start in 2-5, kill in 0, 1, 6
/// (names as cloudflared's, so either installer removes the other's).
pub const SYSV_LINKS: [(&str, &str); 7] = [
    ("rc2.d", "S50et"),
    ("rc3.d", "S50et"),
    ("rc4.d", "S50et"),
    ("rc5.d", "S50et"),
    ("rc0.d", "K02et"),
    ("rc1.d", "K02et"),
    ("rc6.d", "K02et"),
];

/// Commands run after OpenRC's script is written, in cloudflared's order.
pub const INSTALL_OPENRC: [&[&str]; 2] = [
    &["rc-update", "add", SCRIPT, "default"],
    &["rc-service", SCRIPT, "start"],
];

/// Commands run before OpenRC's script is removed; a failure is only warned of, as cloudflared.
pub const UNINSTALL_OPENRC: [&[&str]; 2] = [
    &["rc-service", SCRIPT, "stop"],
    &["rc-update", "del", SCRIPT, "default"],
];

/// Command run after the SysV script is written.
pub const INSTALL_SYSV: &[&str] = &["service", SCRIPT, "start"];

/// Command run before the SysV script is removed (a failure stops the uninstall, as
/// cloudflared's).
pub const UNINSTALL_SYSV: &[&str] = &["service", SCRIPT, "stop"];

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

    struct Files(&'static [&'static str]);
    impl Host for Files {
        fn read(&self, _: &str) -> std::io::Result<Vec<u8>> {
            Err(std::io::ErrorKind::NotFound.into())
        }
        fn is_file(&self, path: &str) -> bool {
            self.0.contains(&path)
        }
        fn home(&self) -> String {
            String::new()
        }
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn args(openrc_run: Option<&str>) -> ServiceArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            service: ServiceArgs,
        }
        let mut argv = vec!["burrow"];
        if let Some(p) = openrc_run {
            argv.extend(["--openrc-run", p]);
        }
        argv.push("uninstall");
        Cli::try_parse_from(argv).unwrap().service
    }

    #[test]
    fn init_is_systemd_then_openrc_then_sysv_as_cloudflareds_inits() {
        let openrc = Files(&["/usr/sbin/openrc-run"]);
        assert_eq!(Init::of(&args(None), true, &openrc), Init::Systemd);
        assert_eq!(Init::of(&args(None), false, &openrc), Init::OpenRc);
        assert_eq!(Init::of(&args(None), false, &Files(&[])), Init::SysV);
        assert_eq!(
            Init::of(&args(Some("/x/openrc-run")), false, &openrc),
            Init::SysV,
            "a moved openrc-run is the only one looked for"
        );
    }

    #[test]
    fn sh_words_are_quoted_only_when_the_shell_would_change_them() {
        assert_eq!(sh_quote("/usr/bin/burrow"), "/usr/bin/burrow");
        assert_eq!(sh_quote("/opt/my dir/b"), "'/opt/my dir/b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn init_scripts_run_the_tunnel_as_cloudflareds_do() {
        let a = token_args("/etc/cloudflared");
        let openrc = openrc_script("/usr/bin/burrow", &a);
        assert!(openrc.starts_with("#!/sbin/openrc-run\n"));
        assert!(openrc.contains("\ncommand=/usr/bin/burrow\n"));
        assert!(openrc.contains(
            "\ncommand_args=\"--no-autoupdate tunnel run --token-file /etc/cloudflared/token\"\n"
        ));
        assert!(openrc.contains("\nsupervisor=\"supervise-daemon\"\n"));
        let odd = openrc_script("/usr/bin/burrow", &["a \"$b\"".into()]);
        assert!(
            odd.contains("command_args=\"--no-autoupdate 'a \\\"\\$b\\\"'\"\n"),
            "{odd}"
        );

        let sysv = sysv_script("/usr/bin/burrow", &a, "/etc");
        assert!(sysv.starts_with("#!/bin/sh\n# For RedHat and cousins:\n# chkconfig: 2345 99 01\n"));
        assert!(sysv.contains(
            "/usr/bin/burrow --pidfile \"$pid_file\" --no-autoupdate tunnel run --token-file /etc/cloudflared/token >> "
        ));
        assert!(sysv.contains("[ -e /etc/sysconfig/$name ] && . /etc/sysconfig/$name\n"));
        assert!(!sysv.contains("{1..10}"), "POSIX sh, not bash");
    }
}
