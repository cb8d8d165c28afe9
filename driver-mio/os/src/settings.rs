//! The I/O half of core's `settings`, which reads and writes nothing itself: the process's
//! file system and `$HOME` as its [`Host`], `tunnel run`'s start with logging set up, the pid
//! and credentials files, and the edge's roots from the system certificate store.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use burrow_core::quic::tls::{self, TlsError};
use burrow_core::settings::{
    self, expand_home, Credentials, CredsError, Host, LoadedConfig, Settings, SetupError,
    TunnelArgs,
};
use tracing::{debug, warn};

use crate::log::init_logging_as;

/// The process's own file system and environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsHost;

impl Host for OsHost {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn is_file(&self, path: &str) -> bool {
        std::path::Path::new(path).is_file()
    }
    fn home(&self) -> String {
        std::env::var("HOME").unwrap_or_default()
    }
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// How `tunnel run` starts in either driver: core's settings read and merged, logging set up
/// as they say, then the flags and keys burrow does not act on named once at debug level.
pub fn start(args: &mut TunnelArgs) -> Result<(LoadedConfig, Settings), SetupError> {
    let (loaded, settings) = settings::start(args, &OsHost)?;
    init_logging_as(
        &settings.loglevel,
        settings.logfile.as_deref(),
        settings.log_format,
    )?;
    settings::note_ignored(args, &loaded);
    Ok((loaded, settings))
}

/// Writes the process id (no newline) to `path` (`~/` expanded), as cloudflared's
/// writePidFile does; the error names the expanded path.
pub fn write_pidfile(path: &str) -> Result<String, (String, std::io::Error)> {
    let path = expand_home(path, &OsHost);
    match std::fs::write(&path, std::process::id().to_string()) {
        Ok(()) => Ok(path),
        Err(e) => Err((path, e)),
    }
}

/// Writes a credentials file with mode 0400 (cloudflared's), replacing none.
pub fn write_credentials(creds: &Credentials, path: &str) -> Result<(), CredsError> {
    let io = |source| CredsError::Io {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(io)?;
    f.write_all(creds.to_file_json().as_bytes()).map_err(io)
}

/// Root certificates for the edge: `--cacert` alone, else cloudflared's default (the system
/// store plus Cloudflare's Origin CA roots, which the edge's certificate chains to).
pub fn edge_roots(cacert: Option<&[u8]>) -> Result<rustls::RootCertStore, TlsError> {
    if let Some(pem) = cacert {
        return tls::roots_from_pem(pem, "--cacert");
    }
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        warn!(error = %e, "cannot read part of the system certificate store");
    }
    let (roots, skipped) = tls::edge_default_roots(system.certs)?;
    debug!(
        roots = roots.len(),
        skipped, "edge roots: system store and Cloudflare's origin CAs"
    );
    Ok(roots)
}
