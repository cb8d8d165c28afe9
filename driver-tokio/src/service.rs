//! `burrow service install|uninstall`: the files and `systemctl` calls of cloudflared's
//! systemd installer (burrow-core's `settings::service` decides what they are).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitCode};

use burrow_core::settings::service::{
    self, ServiceArgs, ServiceCommand, ServiceError, INSTALL_SYSTEMCTL, RELOAD_SYSTEMCTL,
    TOKEN_FILE, UNINSTALL_SYSTEMCTL, UNIT,
};
use burrow_core::settings::{load_config, CommonArgs, SetupError};
use burrow_os::log::init_logging;
use burrow_os::settings::OsHost;
use thiserror::Error;
use tracing::{info, warn};

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
    Systemctl {
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

/// Entry point of `burrow service`.
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

/// systemd runs this host (sd_booted's test, as cloudflared's `inits.IsSystemd`).
fn systemd(args: &ServiceArgs) -> bool {
    Path::new(&args.systemd_run_dir).is_dir()
}

fn install(args: &ServiceArgs, token: Option<&str>) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(Failed::Exe)?;
    let unit_path = format!("{}/{UNIT}", args.unit_dir);
    // Before anything is written: a second install must not touch the first one's token.
    if Path::new(&unit_path).exists() {
        return Err(ServiceError::AlreadyInstalled(unit_path).into());
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
    let unit = service::unit_file(&exe.to_string_lossy(), &service_args);
    let written = fs::create_dir_all(&args.unit_dir)
        .map_err(io_err("error creating", &args.unit_dir))
        .and_then(|()| fs::write(&unit_path, unit).map_err(io_err("error writing", &unit_path)));
    if let Err(e) = written {
        if token.is_some() {
            remove_token(&token_path);
        }
        return Err(e);
    }
    info!(unit = unit_path, "unit written");
    if systemd(args) {
        for call in INSTALL_SYSTEMCTL {
            systemctl(args, call)?;
        }
        info!("Linux service for burrow installed successfully");
    } else {
        warn!(
            unit = unit_path,
            "systemd is not running on this host (no {}): the unit is written but not enabled \
             or started; under systemd run `systemctl enable --now {UNIT}`",
            args.systemd_run_dir
        );
    }
    Ok(())
}

fn uninstall(args: &ServiceArgs) -> Result<(), Failed> {
    let unit_path = format!("{}/{UNIT}", args.unit_dir);
    let installed = Path::new(&unit_path).exists();
    let systemd = systemd(args);
    if !systemd {
        warn!(
            "systemd is not running on this host (no {}): nothing to stop or disable",
            args.systemd_run_dir
        );
    }
    if installed {
        if systemd {
            for call in UNINSTALL_SYSTEMCTL {
                systemctl(args, call)?;
            }
        }
        fs::remove_file(&unit_path).map_err(io_err("error deleting", &unit_path))?;
    } else {
        info!("Service '{UNIT}' not installed, skipping its uninstall");
    }
    if systemd {
        systemctl(args, RELOAD_SYSTEMCTL)?;
    }
    remove_token(&format!("{}/{TOKEN_FILE}", args.service_config_dir));
    info!("Linux service for burrow uninstalled successfully");
    Ok(())
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

fn systemctl(args: &ServiceArgs, call: &[&str]) -> Result<(), Failed> {
    let out = Command::new(&args.systemctl)
        .args(call)
        .output()
        .map_err(|source| Failed::Spawn {
            program: args.systemctl.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Failed::Systemctl {
            program: args.systemctl.clone(),
            args: call.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
