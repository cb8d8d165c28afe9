//! Logging for `tunnel run` as cloudflared's `--loglevel`, `--logfile` and `--output` set it
//! up: text lines on stderr, or JSON lines with `--output json`; the log file always gets
//! JSON lines, as cloudflared's file writer does.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use burrow_core::settings::{LogFormat, SetupError};

/// Sets up logging at `level` to stderr.
pub fn init_logging(level: &str) {
    let _ = init_logging_as(level, None, LogFormat::Text);
}

/// Sets up logging at `level` to stderr in `format`, and as JSON lines to `file` when given
/// (appended; its directory is created, as cloudflared does).
pub fn init_logging_as(
    level: &str,
    file: Option<&str>,
    format: LogFormat,
) -> Result<(), SetupError> {
    let level = match level {
        "debug" | "trace" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" | "fatal" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let stderr: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(std::io::stderr),
        ),
    };
    let file_layer = match file {
        None => None,
        Some(path) => {
            let open = || {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            };
            let f = open().map_err(|e| {
                SetupError::Config(format!("unable to create a new logfile {path}: {e}"))
            })?;
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(std::sync::Mutex::new(f)),
            )
        }
    };
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::from_level(level))
        .with(stderr)
        .with(file_layer)
        .try_init();
    Ok(())
}

/// One JSON object per event, as cloudflared (zerolog) writes them: `level` in lower case,
/// `time` in RFC 3339 (UTC), `message`, and the event's fields under their own names; keys
/// sorted, as cloudflared's console JSON writer re-encodes each line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = std::collections::BTreeMap::new();
        event.record(&mut JsonFields(&mut fields));
        let level = match *event.metadata().level() {
            tracing::Level::TRACE => "trace",
            tracing::Level::DEBUG => "debug",
            tracing::Level::INFO => "info",
            tracing::Level::WARN => "warn",
            tracing::Level::ERROR => "error",
        };
        fields.insert("level".into(), level.into());
        fields.insert(
            "time".into(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        let line = serde_json::to_string(&fields).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut std::collections::BTreeMap<String, serde_json::Value>);

/// cloudflared's names for the fields burrow spells in snake case (`connection.LogFieldConnIndex`
/// and friends), so log queries written for cloudflared match.
fn json_name(field: &Field) -> String {
    match field.name() {
        "conn_index" => "connIndex",
        "tunnel_id" => "tunnelID",
        "connector_id" => "connectorID",
        other => other,
    }
    .to_owned()
}

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(json_name(field), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(json_name(field), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(json_name(field), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(json_name(field), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(json_name(field), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(json_name(field), value.into());
    }
}
