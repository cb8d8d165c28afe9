//! How the drivers write log lines, as cloudflared's `--output` sets it; the drivers set up
//! the logging itself (burrow-os).

/// `--output`: how stderr lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Text lines (`default`, or unset).
    #[default]
    Text,
    /// cloudflared's JSON lines (`json`).
    Json,
}

impl LogFormat {
    /// cloudflared's values: `json`, anything else (`default`) is text.
    pub fn parse(s: &str) -> Self {
        if s == "json" {
            Self::Json
        } else {
            Self::Text
        }
    }
}
