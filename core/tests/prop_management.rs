//! The management log stream's codecs: a JSON log line read into a [`Log`] and sent as a
//! `logs` event keeps its time, level, message, kind and every other field; a client's start
//! event with any filters reads back as those filters; a request head split anywhere reads the
//! same.

use burrow_core::management::events::{ClientEvent, Filters, Log, LogEventType, LogLevel};
use burrow_core::management::request::parse_head;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const LEVELS: [(LogLevel, &str); 4] = [
    (LogLevel::Debug, "debug"),
    (LogLevel::Info, "info"),
    (LogLevel::Warn, "warn"),
    (LogLevel::Error, "error"),
];
const KINDS: [(LogEventType, &str); 4] = [
    (LogEventType::Cloudflared, "cloudflared"),
    (LogEventType::Http, "http"),
    (LogEventType::Tcp, "tcp"),
    (LogEventType::Udp, "udp"),
];

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ]
}

proptest! {
    #[test]
    fn a_log_line_round_trips_into_its_event(
        time in "[0-9TZ:-]{1,25}",
        level in 0usize..4,
        kind in 0usize..4,
        message in ".{1,40}",
        fields in proptest::collection::btree_map("[a-zA-Z][a-zA-Z_-]{0,12}", field_value(), 0..6),
    ) {
        let fields: Map<String, Value> = fields
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "time" | "level" | "event" | "message" | "error"))
            .collect();
        let mut line = fields.clone();
        line.insert("time".into(), time.clone().into());
        line.insert("level".into(), LEVELS[level].1.into());
        line.insert("event".into(), (kind as u64).into());
        line.insert("message".into(), message.clone().into());
        let log = Log::from_json_line(Value::Object(line).to_string().as_bytes()).unwrap();
        prop_assert_eq!(log.level, LEVELS[level].0);
        prop_assert_eq!(log.event, KINDS[kind].0);
        let event: Value = serde_json::from_str(&log.to_event()).unwrap();
        prop_assert_eq!(&event["type"], "logs");
        let sent = &event["logs"][0];
        prop_assert_eq!(&sent["time"], &json!(time));
        prop_assert_eq!(&sent["message"], &json!(message));
        // Zero values are left out, as Go's omitempty does.
        let want_level = if level == 0 { Value::Null } else { json!(LEVELS[level].1) };
        prop_assert_eq!(&sent["level"], &want_level);
        let want_kind = if kind == 0 { Value::Null } else { json!(KINDS[kind].1) };
        prop_assert_eq!(&sent["event"], &want_kind);
        let want_fields = if fields.is_empty() { Value::Null } else { Value::Object(fields) };
        prop_assert_eq!(&sent["fields"], &want_fields);
    }

    #[test]
    fn start_filters_read_back(
        kinds in proptest::collection::vec(0usize..4, 0..4),
        level in proptest::option::of(0usize..4),
        sampling in 0.0f64..2.0,
    ) {
        let mut filters = json!({
            "events": kinds.iter().map(|&k| KINDS[k].1).collect::<Vec<_>>(),
            "sampling": sampling,
        });
        if let Some(l) = level {
            filters["level"] = LEVELS[l].1.into();
        }
        let text = json!({"type": "start_streaming", "filters": filters}).to_string();
        let Ok(ClientEvent::Start(got)) = ClientEvent::parse(text.as_bytes()) else {
            panic!("{text}");
        };
        let want = Filters {
            events: kinds.iter().map(|&k| KINDS[k].0).collect(),
            level: level.map(|l| LEVELS[l].0),
            sampling: got.sampling,
        };
        // JSON's decimal text may come back a unit in the last place off.
        prop_assert!((got.sampling - sampling).abs() < 1e-12);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn a_head_split_anywhere_reads_the_same(
        path in "/[a-z_]{0,12}",
        token in "[A-Za-z0-9._-]{0,40}",
        origin in proptest::option::of("https://[a-z]{1,8}\\.cloudflare\\.com"),
        cut in 0usize..400,
    ) {
        let mut head = format!("GET {path}?access_token={token} HTTP/1.1\r\nHost: m\r\n");
        if let Some(o) = &origin {
            head.push_str(&format!("Origin: {o}\r\n"));
        }
        head.push_str("\r\n");
        let (whole, n) = parse_head(head.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(n, head.len());
        prop_assert_eq!(&whole.path, &path);
        prop_assert_eq!(whole.access_token.as_deref(), Some(token.as_str()));
        prop_assert_eq!(&whole.origin, &origin);
        let cut = cut.min(head.len() - 1);
        prop_assert_eq!(parse_head(&head.as_bytes()[..cut]).unwrap(), None);
    }
}
