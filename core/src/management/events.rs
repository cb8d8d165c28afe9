//! The messages of the management log stream (`management/events.go`): the client's
//! `start_streaming` and `stop_streaming`, the server's `logs`, and a log line as the stream
//! carries it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// Longest client message read (a start event with filters is a few hundred bytes).
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// A log line's severity, as the stream names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `debug` (also trace, and any level not named).
    Debug,
    /// `info`.
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
}

/// What a log line is about (cloudflared's `event` field: 0-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEventType {
    /// The connector itself.
    Cloudflared,
    /// HTTP requests.
    Http,
    /// TCP flows.
    Tcp,
    /// UDP sessions.
    Udp,
}

impl LogEventType {
    fn from_number(n: f64) -> Option<Self> {
        Some(match n as i64 {
            0 => Self::Cloudflared,
            1 => Self::Http,
            2 => Self::Tcp,
            3 => Self::Udp,
            _ => return None,
        })
    }
}

/// The filters of a `start_streaming` event (`null` reads as absent, as Go reads it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Filters {
    /// Only these kinds (all when empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub events: Vec<LogEventType>,
    /// Only this level and above.
    #[serde(default)]
    pub level: Option<LogLevel>,
    /// The share of lines kept, in (0, 1); 0 or 1 (or beyond) keeps them all.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sampling: f64,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Filters {
    /// Whether `log` passes the level and kind filters (sampling aside).
    pub fn admits(&self, log: &Log) -> bool {
        self.level.is_none_or(|l| log.level >= l)
            && (self.events.is_empty() || self.events.contains(&log.event))
    }

    /// The sampling percentage to keep (as cloudflared's sampler: `rand(100) <= p`), or None
    /// to keep every line.
    pub fn sample_percent(&self) -> Option<u32> {
        let s = self.sampling.clamp(0.0, 1.0);
        (s > 0.0 && s < 1.0).then_some((s * 100.0) as u32)
    }
}

/// A client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Start streaming with these filters.
    Start(Filters),
    /// Stop streaming (the socket stays open).
    Stop,
}

/// Why a client message was refused; the stream closes with "unsupported data" (but see
/// [`EventError::BadStart`]) and this text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// A binary message, or one without a `type`.
    #[error("invalid message type was provided")]
    MessageType,
    /// A `type` the service does not know.
    #[error("invalid client message type was provided: {0}")]
    UnknownType(String),
    /// Not a JSON object with a string `type`.
    #[error("invalid client message: {0}")]
    Json(String),
    /// A start event whose filters cannot be read; the stream closes with "invalid command".
    #[error("expected start streaming as first event")]
    BadStart,
}

#[derive(Deserialize)]
struct Kind {
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    filters: Option<Filters>,
}

impl ClientEvent {
    /// Reads a text message: its `type` first, then a start event's filters (cloudflared reads
    /// them in two steps too, and answers bad filters differently: [`EventError::BadStart`]).
    pub fn parse(text: &[u8]) -> Result<Self, EventError> {
        let kind: Kind =
            serde_json::from_slice(text).map_err(|e| EventError::Json(e.to_string()))?;
        match kind.kind.as_str() {
            "start_streaming" => serde_json::from_slice::<Start>(text)
                .map(|s| Self::Start(s.filters.unwrap_or_default()))
                .map_err(|_| EventError::BadStart),
            "stop_streaming" => Ok(Self::Stop),
            "" => Err(EventError::MessageType),
            other => Err(EventError::UnknownType(other.to_owned())),
        }
    }
}

/// One log line as the stream sends it. Zero values are left out, as Go's `omitempty` does
/// (a debug line has no `level`, a connector line no `event`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    /// RFC 3339 time.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub time: String,
    /// Severity.
    #[serde(skip_serializing_if = "is_debug")]
    pub level: LogLevel,
    /// The message.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Its kind.
    #[serde(skip_serializing_if = "is_connector")]
    pub event: LogEventType,
    /// Every other field.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

fn is_debug(l: &LogLevel) -> bool {
    *l == LogLevel::Debug
}

fn is_connector(e: &LogEventType) -> bool {
    *e == LogEventType::Cloudflared
}

impl Log {
    /// Reads one JSON log line as cloudflared's `parseZerologEvent`: `time`, `level` (Error
    /// whenever an `error` field is present), `message` and `event` taken out, the rest kept as
    /// fields. None for a line that is not a JSON object.
    pub fn from_json_line(line: &[u8]) -> Option<Self> {
        let Ok(Value::Object(map)) = serde_json::from_slice(line) else {
            return None;
        };
        let (mut time, mut named, mut event, mut message) = (
            String::new(),
            LogLevel::Debug,
            LogEventType::Cloudflared,
            String::new(),
        );
        // The rest keep their order (a `remove` would reorder them under `preserve_order`).
        let mut fields = Map::new();
        for (k, v) in map {
            match (k.as_str(), v) {
                ("time", Value::String(t)) => time = t,
                ("level", Value::String(l)) => {
                    named = match l.as_str() {
                        "info" => LogLevel::Info,
                        "warn" => LogLevel::Warn,
                        "error" => LogLevel::Error,
                        _ => LogLevel::Debug,
                    }
                }
                ("event", Value::Number(n)) => {
                    event = n
                        .as_f64()
                        .and_then(LogEventType::from_number)
                        .unwrap_or(LogEventType::Cloudflared)
                }
                ("message", Value::String(m)) => message = m,
                ("time" | "level" | "event" | "message", _) => {}
                (_, v) => {
                    fields.insert(k, v);
                }
            }
        }
        let level = if fields.contains_key("error") {
            LogLevel::Error
        } else {
            named
        };
        Some(Self {
            time,
            level,
            message,
            event,
            fields,
        })
    }

    /// The server's `logs` event carrying this line alone, as cloudflared sends each.
    pub fn to_event(&self) -> String {
        #[derive(Serialize)]
        struct Logs<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            logs: [&'a Log; 1],
        }
        serde_json::to_string(&Logs {
            kind: "logs",
            logs: [self],
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_reads_as_cloudflared_reads_it() {
        let l = Log::from_json_line(
            br#"{"connIndex":0,"event":1,"level":"info","message":"GET /","time":"2026-12-08T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(l.level, LogLevel::Info);
        assert_eq!(l.event, LogEventType::Http);
        assert_eq!(
            l.to_event(),
            r#"{"type":"logs","logs":[{"time":"2026-12-08T00:00:00Z","level":"info","message":"GET /","event":"http","fields":{"connIndex":0}}]}"#
        );
        let e = Log::from_json_line(br#"{"level":"warn","error":"x","message":"m"}"#).unwrap();
        assert_eq!(e.level, LogLevel::Error);
        let d = Log::from_json_line(br#"{"level":"trace"}"#).unwrap();
        assert_eq!(d.to_event(), r#"{"type":"logs","logs":[{}]}"#);
        assert_eq!(Log::from_json_line(b"[1]"), None);
        assert_eq!(Log::from_json_line(b"not json"), None);
    }

    #[test]
    fn client_events_and_filters() {
        let s = ClientEvent::parse(
            br#"{"type":"start_streaming","filters":{"events":["http","udp"],"level":"warn","sampling":0.5}}"#,
        )
        .unwrap();
        let ClientEvent::Start(f) = s else {
            panic!("{s:?}")
        };
        assert_eq!(f.events, [LogEventType::Http, LogEventType::Udp]);
        assert_eq!(f.sample_percent(), Some(50));
        let mut log = Log::from_json_line(br#"{"level":"error","event":1}"#).unwrap();
        assert!(f.admits(&log));
        log.level = LogLevel::Info;
        assert!(!f.admits(&log));
        log.level = LogLevel::Warn;
        log.event = LogEventType::Tcp;
        assert!(!f.admits(&log));
        assert_eq!(
            ClientEvent::parse(br#"{"type":"start_streaming"}"#),
            Ok(ClientEvent::Start(Filters::default()))
        );
        assert_eq!(
            ClientEvent::parse(br#"{"type":"stop_streaming"}"#),
            Ok(ClientEvent::Stop)
        );
        assert_eq!(ClientEvent::parse(br#"{}"#), Err(EventError::MessageType));
        assert_eq!(
            ClientEvent::parse(br#"{"type":"go"}"#),
            Err(EventError::UnknownType("go".into()))
        );
        assert_eq!(
            ClientEvent::parse(br#"{"type":"start_streaming","filters":{"level":"loud"}}"#),
            Err(EventError::BadStart)
        );
        assert!(matches!(
            ClientEvent::parse(br#"{"type":1}"#),
            Err(EventError::Json(_))
        ));
        for s in [0.0, 1.0, 7.0, -1.0] {
            let f = Filters {
                sampling: s,
                ..Filters::default()
            };
            assert_eq!(f.sample_percent(), None, "{s}");
        }
    }
}
