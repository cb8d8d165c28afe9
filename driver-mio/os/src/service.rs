//! `service install|uninstall`, for both drivers: the files and commands of cloudflared's
//! installer under systemd, OpenRC or SysV (burrow-core's `settings::service` decides what
//! they are; OpenRC's and SysV's commands are found in `PATH`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitCode};

use burrow_core::settings::service::{
    self, Init, ServiceArgs, ServiceCommand, ServiceError, INSTALL_OPENRC, INSTALL_SYSTEMCTL,
    INSTALL_SYSV, OPENRC_CONF, RELOAD_SYSTEMCTL, SCRIPT, SYSV_LINKS, TOKEN_FILE, UNINSTALL_OPENRC,
    UNINSTALL_SYSTEMCTL, UNINSTALL_SYSV, UNIT,
};
use burrow_core::settings::{load_config, CommonArgs, SetupError};
use thiserror::Error;
use tracing::{info, warn};

use crate::log::init_logging;
use crate::settings::OsHost;

/// Why `service install` or `uninstall` failed.
#[derive(Debug, Error)]
enum Failed {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("error determining executable path: {0}")]
    Exe(io::Error),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} {args} returned with error code {status} due to: {stderr}")]
    Command {
        program: String,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> Failed + 'a {
    move |source| Failed::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Entry point of `service`.
pub fn main(args: ServiceArgs) -> ExitCode {
    init_logging("info");
    let done = match &args.command {
        ServiceCommand::Install { token, .. } => install(&args, token.as_deref()),
        ServiceCommand::Uninstall => uninstall(&args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The init system running this host.
fn init(args: &ServiceArgs) -> Init {
    // sd_booted's test, as cloudflared's `inits.IsSystemd`.
    let systemd = Path::new(&args.systemd_run_dir).is_dir();
    let init = Init::of(args, systemd, &OsHost);
    info!("Using {}", init.name());
    init
}

/// The file whose presence means the service is installed under `init`.
fn installed_at(args: &ServiceArgs, init: Init) -> String {
    match init {
        Init::Systemd => format!("{}/{UNIT}", args.unit_dir),
        Init::OpenRc | Init::SysV => format!("{}/init.d/{SCRIPT}", args.sysconf_dir),
    }
}

fn install(args: &ServiceArgs, token: Option<&str>) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(Failed::Exe)?;
    let exe = exe.to_string_lossy();
    let init = init(args);
    let path = installed_at(args, init);
    // Before anything is written: a second install must not touch the first one's token.
    if Path::new(&path).exists() {
        return Err(ServiceError::AlreadyInstalled(path).into());
    }
    let dir = &args.service_config_dir;
    let token_path = format!("{dir}/{TOKEN_FILE}");
    let service_args = match token {
        Some(token) => {
            service::check_token(token)?;
            config_dir(dir)?;
            write_token(&token_path, token)?;
            service::token_args(dir)
        }
        None => {
            let common = CommonArgs {
                config: args.config.clone(),
                ..CommonArgs::default()
            };
            let loaded = load_config(&common, &OsHost)?;
            config_dir(dir)?;
            if let Some(from) = service::config_to_copy(&loaded, dir, &OsHost)? {
                let to = format!("{dir}/{}", service::CONFIG_FILE);
                fs::copy(&from, &to).map_err(io_err("failed to copy to", &to))?;
                info!(from, to, "configuration copied for the service");
            }
            service::config_args(dir)
        }
    };
    let written = match init {
        Init::Systemd => write_file(&path, &service::unit_file(&exe, &service_args), 0o644),
        Init::OpenRc => write_file(
            &format!("{}/conf.d/{SCRIPT}", args.sysconf_dir),
            OPENRC_CONF,
            0o644,
        )
        .and_then(|()| write_file(&path, &service::openrc_script(&exe, &service_args), 0o755)),
        Init::SysV => write_file(
            &path,
            &service::sysv_script(&exe, &service_args, &args.sysconf_dir),
            0o755,
        ),
    };
    if let Err(e) = written {
        if token.is_some() {
            remove_token(&token_path);
        }
        return Err(e);
    }
    info!(path, "service written");
    match init {
        Init::Systemd => {
            for call in INSTALL_SYSTEMCTL {
                run(&args.systemctl, call)?;
            }
        }
        Init::OpenRc => {
            for call in INSTALL_OPENRC {
                run(call[0], &call[1..])?;
            }
        }
        Init::SysV => {
            // As cloudflared: a run level without its directory is skipped.
            for (level, link) in SYSV_LINKS {
                let _ = std::os::unix::fs::symlink(
                    &path,
                    format!("{}/{level}/{link}", args.sysconf_dir),
                );
            }
            run(INSTALL_SYSV[0], &INSTALL_SYSV[1..])?;
        }
    }
    info!("Linux service for burrow installed successfully");
    Ok(())
}

fn uninstall(args: &ServiceArgs) -> Result<(), Failed> {
    let init = init(args);
    let path = installed_at(args, init);
    let installed = Path::new(&path).exists();
    if !installed {
        info!("Service '{path}' not installed, skipping its uninstall");
    }
    match init {
        Init::Systemd => {
            if installed {
                for call in UNINSTALL_SYSTEMCTL {
                    run(&args.systemctl, call)?;
                }
                remove(&path)?;
            }
            run(&args.systemctl, RELOAD_SYSTEMCTL)?;
        }
        Init::OpenRc => {
            if installed {
                for call in UNINSTALL_OPENRC {
                    if let Err(e) = run(call[0], &call[1..]) {
                        warn!(error = %e, "continuing the uninstall");
                    }
                }
            }
            remove(&path)?;
            remove(&format!("{}/conf.d/{SCRIPT}", args.sysconf_dir))?;
        }
        Init::SysV => {
            if installed {
                run(UNINSTALL_SYSV[0], &UNINSTALL_SYSV[1..])?;
                remove(&path)?;
                for (level, link) in SYSV_LINKS {
                    let _ = fs::remove_file(format!("{}/{level}/{link}", args.sysconf_dir));
                }
            }
        }
    }
    remove_token(&format!("{}/{TOKEN_FILE}", args.service_config_dir));
    info!("Linux service for burrow uninstalled successfully");
    Ok(())
}

/// Writes `text` to `path` with `mode`, creating its directory.
fn write_file(path: &str, text: &str, mode: u32) -> Result<(), Failed> {
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).map_err(io_err("error creating", &dir.to_string_lossy()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("error writing", path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("error writing", path))?;
    f.write_all(text.as_bytes())
        .map_err(io_err("error writing", path))
}

/// Removes `path`; one already gone is fine.
fn remove(path: &str) -> Result<(), Failed> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("error deleting", path)(e)),
        _ => Ok(()),
    }
}

/// The service configuration directory, world-readable (the unit may run as another user).
fn config_dir(dir: &str) -> Result<(), Failed> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err("create config dir at", dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create config dir at", dir)(e)),
    }
}

/// The token, readable by its owner only (also when the file was there with wider modes).
fn write_token(path: &str, token: &str) -> Result<(), Failed> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create token file at", path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod token file at", path))?;
    f.write_all(token.as_bytes())
        .map_err(io_err("write token to", path))
}

fn remove_token(path: &str) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path, error = %e, "Could not remove service token file");
        }
    }
}

/// Runs `program args...`; a failure carries its exit status and standard error.
fn run(program: &str, call: &[&str]) -> Result<(), Failed> {
    let out = Command::new(program)
        .args(call)
        .output()
        .map_err(|source| Failed::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(Failed::Command {
            program: program.to_owned(),
            args: call.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
