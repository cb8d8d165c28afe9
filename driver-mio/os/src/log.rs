//! Logging for `tunnel run` as cloudflared's `--loglevel`, `--logfile` and `--output` set it
//! up: text lines on stderr, or JSON lines with `--output json`; the log file always gets
//! JSON lines, as cloudflared's file writer does.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

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
    let file = match file {
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
            Some(open().map_err(|e| {
                SetupError::Config(format!("unable to create a new logfile {path}: {e}"))
            })?)
        }
    };
    // One global filter, raised to debug for burrow's own events while the tap (the
    // management service's log stream) has a sink, and writers that drop what is below
    // `level` themselves (per-layer filters would cost more code).
    let (global, handle) =
        reload::Layer::new(Targets::new().with_default(LevelFilter::from_level(level)));
    let writer = || std::io::stderr.with_max_level(level);
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(writer())
    });
    let file = file.map(|f| std::sync::Mutex::new(f).with_max_level(level));
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(f)
    });
    let logging = tracing_subscriber::registry()
        .with(global)
        .with(text)
        .with(json)
        .with(file)
        .with(TapLayer);
    if logging.try_init().is_ok() {
        let _ = TAP.set(Tap {
            sink: RwLock::new(None),
            filter: handle,
            level: LevelFilter::from_level(level),
        });
    }
    Ok(())
}

/// Where the tap's lines go, and the global level it raises.
struct Tap {
    sink: RwLock<Option<LineSink>>,
    filter: reload::Handle<Targets, Registry>,
    /// `--loglevel`'s.
    level: LevelFilter,
}

/// Takes one JSON log line; must not block (it runs inside whatever logged).
pub type LineSink = Box<dyn Fn(&[u8]) + Send + Sync>;

static TAP: OnceLock<Tap> = OnceLock::new();

thread_local! {
    /// Set while a line is in the sink, so that the sink's own logging does not loop.
    static IN_TAP: Cell<bool> = const { Cell::new(false) };
}

/// Hands every log event from now on, debug included, to `sink` as a JSON line (the
/// management service's log stream); None stops it. Does nothing before
/// [`init_logging_as`].
pub fn set_log_tap(sink: Option<LineSink>) {
    let Some(tap) = TAP.get() else {
        return;
    };
    // burrow's own debug events only: other crates' stay at `--loglevel`, unformatted.
    let mut targets = Targets::new().with_default(tap.level);
    if sink.is_some() {
        targets = targets.with_target("burrow", tap.level.max(LevelFilter::DEBUG));
    }
    if let Ok(mut s) = tap.sink.write() {
        *s = sink;
    }
    let _ = tap.filter.reload(targets);
}

/// The layer behind [`set_log_tap`].
struct TapLayer;

impl<S: Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(tap) = TAP.get() else {
            return;
        };
        // burrow's own events only, as cloudflared's management writer sees its zerolog lines
        // and not quic-go's (which has a logger of its own): quinn's events would also feed
        // back through the stream they are sent on.
        if !event.metadata().target().starts_with("burrow") || IN_TAP.with(|t| t.replace(true)) {
            return;
        }
        if let Ok(sink) = tap.sink.read() {
            if let Some(sink) = sink.as_ref() {
                if let Ok(line) = serde_json::to_vec(&json_fields(event)) {
                    sink(&line);
                }
            }
        }
        IN_TAP.with(|t| t.set(false));
    }
}

/// An event as cloudflared's JSON log line has it: `level` in lower case, `time` in RFC 3339
/// (UTC), `message`, and the event's fields under their own names.
fn json_fields(event: &Event<'_>) -> BTreeMap<String, serde_json::Value> {
    let mut fields = BTreeMap::new();
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
    fields
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
        let line = serde_json::to_string(&json_fields(event)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut BTreeMap<String, serde_json::Value>);

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
        // A request's headers are an object in cloudflared's lines; core hands them over as
        // JSON text (a tracing field holds no map).
        if field.name() == "headers" {
            if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str(value) {
                self.0.insert(json_name(field), v);
                return;
            }
        }
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
