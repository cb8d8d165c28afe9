//! Logging for `tunnel run` as cloudflared's `--loglevel` and `--logfile` set it up.

use super::SetupError;

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
