//! The control stream: the connector's first bidirectional stream, no preamble, Cap'n Proto RPC.
//!
//! The connector bootstraps the edge's `RegistrationServer`, calls `registerConnection`, then
//! (connection 0, locally managed tunnels) `updateLocalConfiguration`, and on graceful shutdown
//! `unregisterConnection`. [`connector::ControlClient`] is that side; [`edge::ControlServer`]
//! serves it. Both are byte-in/byte-out machines: the caller moves stream bytes, they never
//! touch a stream.

pub mod connector;
pub mod edge;
pub mod features;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

use crate::rpc::frame::{DecodeError, EncodeError};
use crate::rpc::registration::{
    ClientInfo, ConnectionDetails as WireDetails, ConnectionError, ConnectionOptions,
    ConnectionResponse, RegisterConnectionParams, TunnelAuth,
};
use crate::rpc::Inbox;

/// `cause` of a registration refused because the connection index is already connected.
pub const DUPLICATE_CONNECTION: &str = "EDUPCONN";

/// This platform as cloudflared names it in `ClientInfo.arch` (Go's `GOOS_GOARCH`), e.g.
/// `linux_amd64`, `linux_arm64`.
pub fn os_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}_{arch}", std::env::consts::OS)
}

/// Everything `registerConnection` carries, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Credentials `AccountTag`.
    pub account_tag: String,
    /// Credentials `TunnelSecret` bytes.
    pub tunnel_secret: Vec<u8>,
    /// Tunnel UUID.
    pub tunnel_id: Uuid,
    /// HA connection index.
    pub conn_index: u8,
    /// Connector instance UUID (one per process).
    pub client_id: Uuid,
    /// Advertised features.
    pub features: Vec<String>,
    /// Build version.
    pub version: String,
    /// `os_arch`, e.g. `linux_amd64`.
    pub arch: String,
    /// Sent as `originLocalIp` (cloudflared sends the edge's address on QUIC).
    pub origin_local_ip: Option<IpAddr>,
    /// Replace an existing connection with this index.
    pub replace_existing: bool,
    /// Unused by the edge; cloudflared sends 0.
    pub compression_quality: u8,
    /// Retries before this attempt.
    pub num_previous_attempts: u8,
}

impl Registration {
    /// A first registration (connection 0, no retries, no origin IP) of `tunnel_id` with these
    /// credentials, as this build: version `burrow/<version>`, arch [`os_arch`].
    pub fn new(
        account_tag: impl Into<String>,
        tunnel_secret: Vec<u8>,
        tunnel_id: Uuid,
        client_id: Uuid,
        features: Vec<String>,
    ) -> Self {
        Self {
            account_tag: account_tag.into(),
            tunnel_secret,
            tunnel_id,
            conn_index: 0,
            client_id,
            features,
            version: format!("burrow/{}", env!("CARGO_PKG_VERSION")),
            arch: os_arch(),
            origin_local_ip: None,
            replace_existing: false,
            compression_quality: 0,
            num_previous_attempts: 0,
        }
    }

    /// Borrowed wire params; `features` and `ip` are scratch the params borrow from.
    fn params<'a>(
        &'a self,
        features: &'a [&'a str],
        ip: &'a [u8; 16],
    ) -> RegisterConnectionParams<'a> {
        RegisterConnectionParams {
            auth: TunnelAuth {
                account_tag: &self.account_tag,
                tunnel_secret: &self.tunnel_secret,
            },
            tunnel_id: *self.tunnel_id.as_bytes(),
            conn_index: self.conn_index,
            options: ConnectionOptions {
                client: ClientInfo {
                    client_id: *self.client_id.as_bytes(),
                    features: features.into(),
                    version: &self.version,
                    arch: &self.arch,
                },
                origin_local_ip: if self.origin_local_ip.is_some() {
                    ip
                } else {
                    &[]
                },
                replace_existing: self.replace_existing,
                compression_quality: self.compression_quality,
                num_previous_attempts: self.num_previous_attempts,
            },
        }
    }

    /// The 16-byte form cloudflared's `net.ParseIP` produces (IPv4 mapped into IPv6).
    fn ip_bytes(&self) -> [u8; 16] {
        match self.origin_local_ip {
            Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(v6)) => v6.octets(),
            None => [0; 16],
        }
    }

    /// Owned copy of received params.
    fn from_params(p: &RegisterConnectionParams<'_>) -> Result<Self, DecodeError> {
        let ip = p.options.origin_local_ip;
        let origin_local_ip = match ip.len() {
            16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(ip);
                Some(Ipv6Addr::from(b).to_canonical())
            }
            4 => Some(IpAddr::from([ip[0], ip[1], ip[2], ip[3]])),
            // Anything else is unusable; cloudflared itself sends null when it cannot parse.
            _ => None,
        };
        Ok(Self {
            account_tag: p.auth.account_tag.to_owned(),
            tunnel_secret: p.auth.tunnel_secret.to_vec(),
            tunnel_id: Uuid::from_bytes(p.tunnel_id),
            conn_index: p.conn_index,
            client_id: Uuid::from_bytes(p.options.client.client_id),
            features: p
                .options
                .client
                .features
                .iter()
                .map(|f| f.map(str::to_owned))
                .collect::<Result<_, _>>()?,
            version: p.options.client.version.to_owned(),
            arch: p.options.client.arch.to_owned(),
            origin_local_ip,
            replace_existing: p.options.replace_existing,
            compression_quality: p.options.compression_quality,
            num_previous_attempts: p.options.num_previous_attempts,
        })
    }
}

/// What the edge says about an accepted connection, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionDetails {
    /// Connection UUID.
    pub uuid: Uuid,
    /// Edge location (airport code).
    pub location: String,
    /// The tunnel is managed remotely: no local configuration is sent.
    pub remotely_managed: bool,
}

impl ConnectionDetails {
    fn to_wire(&self) -> WireDetails<'_> {
        WireDetails {
            uuid: *self.uuid.as_bytes(),
            location_name: &self.location,
            tunnel_is_remotely_managed: self.remotely_managed,
        }
    }
}

/// The edge's words for a failed registration, classified once as they are read, as
/// cloudflared classifies them: the wire has no code, only the text (`EDUPCONN` exactly,
/// `connection/control.go`; any text containing `Unauthorized`, `supervisor/supervisor.go`).
/// Displayed, it is the text itself, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeCause {
    /// [`DUPLICATE_CONNECTION`]: the edge already has a connection with this index.
    DuplicateConnection,
    /// The credentials were refused; cloudflared retries these forever rather than exit.
    Unauthorized(String),
    /// Anything else, in the edge's words.
    Other(String),
}

impl EdgeCause {
    /// Classifies the edge's text (the only place that reads it).
    pub fn parse(text: &str) -> Self {
        if text == DUPLICATE_CONNECTION {
            Self::DuplicateConnection
        } else if text.contains("Unauthorized") {
            Self::Unauthorized(text.to_owned())
        } else {
            Self::Other(text.to_owned())
        }
    }

    /// The text on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::DuplicateConnection => DUPLICATE_CONNECTION,
            Self::Unauthorized(t) | Self::Other(t) => t,
        }
    }

    /// What it means for the supervisor.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::DuplicateConnection => Refusal::DuplicateConnection,
            Self::Unauthorized(_) => Refusal::Unauthorized,
            Self::Other(_) => Refusal::Other,
        }
    }
}

impl std::fmt::Display for EdgeCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for EdgeCause {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl From<String> for EdgeCause {
    fn from(text: String) -> Self {
        Self::parse(&text)
    }
}

/// A registration the edge refused: its `ConnectionError`, owned. The edge builds one to
/// send; the connector reads one as [`RegistrationFailure::Refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationError {
    /// The edge's cause; [`EdgeCause::DuplicateConnection`] for a duplicate.
    pub cause: EdgeCause,
    /// Whether retrying may help.
    pub should_retry: bool,
    /// The edge's suggested delay (cloudflared decodes and ignores it; we pass it on).
    pub retry_after: Duration,
}

/// What a refused registration means for the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The edge already has a connection with this index: try another address.
    DuplicateConnection,
    /// The credentials were refused; cloudflared retries these forever rather than exit.
    Unauthorized,
    /// Anything else.
    Other,
}

impl RegistrationError {
    /// The edge already has a connection with this index.
    pub fn is_duplicate_connection(&self) -> bool {
        self.cause == EdgeCause::DuplicateConnection
    }

    /// What the refusal means.
    pub fn refusal(&self) -> Refusal {
        self.cause.refusal()
    }

    fn from_wire(e: &ConnectionError<'_>) -> Self {
        Self {
            cause: EdgeCause::parse(e.cause),
            should_retry: e.should_retry,
            // A negative delay from the peer means "no delay".
            retry_after: Duration::from_nanos(u64::try_from(e.retry_after_ns).unwrap_or(0)),
        }
    }

    fn to_wire(&self) -> ConnectionResponse<'_> {
        ConnectionResponse::Error(ConnectionError {
            cause: self.cause.as_str(),
            retry_after_ns: i64::try_from(self.retry_after.as_nanos()).unwrap_or(i64::MAX),
            should_retry: self.should_retry,
        })
    }
}

/// Why a control-stream call failed: our own deadline passed (local), or the edge failed the
/// call (remote). Kept apart, as h11 keeps local and remote protocol errors apart.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CallFailure {
    /// Local: no answer within the call's deadline. Nothing was refused; retrying may help.
    #[error("timed out")]
    TimedOut,
    /// Remote: the edge answered with an RPC exception (or a return we cannot use), in its
    /// words.
    #[error("{0}")]
    Remote(EdgeCause),
}

/// Why a registration did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistrationFailure {
    /// Remote: the edge answered with a refusal.
    #[error("{}", .0.cause)]
    Refused(RegistrationError),
    /// The call itself failed (timed out, or the edge threw an exception).
    #[error(transparent)]
    Call(#[from] CallFailure),
}

impl RegistrationFailure {
    /// Whether retrying may help: the edge's word for a refusal; an RPC exception counts as
    /// permanent, as in cloudflared; a call that got no answer in time is retryable.
    pub fn should_retry(&self) -> bool {
        match self {
            Self::Refused(e) => e.should_retry,
            Self::Call(CallFailure::TimedOut) => true,
            Self::Call(CallFailure::Remote(_)) => false,
        }
    }

    /// What it means for the supervisor (cloudflared reads an exception's text as it reads a
    /// refusal's).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Refused(e) => e.refusal(),
            Self::Call(CallFailure::Remote(cause)) => cause.refusal(),
            Self::Call(CallFailure::TimedOut) => Refusal::Other,
        }
    }

    /// The edge's suggested delay, if it refused.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Refused(e) => e.retry_after,
            Self::Call(_) => Duration::ZERO,
        }
    }

    /// Whether we decided it (our deadline), not the edge.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Call(CallFailure::TimedOut))
    }
}

/// The peer broke the control-stream protocol; the stream (and connection) should be closed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// Bytes that are not a valid RPC message.
    #[error("undecodable control-stream message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer aborted the RPC connection.
    #[error("peer aborted the control stream: {0}")]
    Aborted(String),
    /// A message that makes no sense in the conversation so far.
    #[error("unexpected control-stream message: {0}")]
    Unexpected(String),
    /// A reply could not be encoded (a bug or absurd input, reported rather than dropped).
    #[error("could not encode a control-stream reply: {0}")]
    Encode(#[from] EncodeError),
}

/// The caller asked for something the control stream cannot do in its current state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    /// The operation needs a registered connection.
    #[error("{0} needs a registered connection")]
    NotRegistered(&'static str),
    /// Nothing of this kind is waiting for an answer.
    #[error("no {0} is waiting for an answer")]
    NothingPending(&'static str),
    /// The control stream is closed.
    #[error("the control stream is closed")]
    Closed,
    /// A message could not be encoded.
    #[error("could not encode {0}")]
    Encode(String),
    /// The peer's stream grant is used up and this many streams already wait for it to grow.
    #[error("no stream credit: {0} streams already wait for the peer's grant")]
    NoStreamCredit(usize),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A registration like cloudflared's for connection `conn_index`.
    pub(crate) fn registration(conn_index: u8) -> Registration {
        Registration {
            account_tag: "0123456789abcdef0123456789abcdef".into(),
            tunnel_secret: vec![0x42; 32],
            tunnel_id: Uuid::from_u128(0xaaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee),
            conn_index,
            client_id: Uuid::from_u128(0x01234567_89ab_4cde_8f01_23456789abcd),
            features: vec!["serialized_headers".into(), "support_datagram_v3_2".into()],
            version: "2026.8.2".into(),
            arch: "linux_amd64".into(),
            origin_local_ip: Some(IpAddr::from([192, 0, 2, 10])),
            replace_existing: false,
            compression_quality: 0,
            num_previous_attempts: 0,
        }
    }

    #[test]
    fn edge_causes_are_classified_once_and_keep_their_text() {
        for (text, refusal) in [
            ("EDUPCONN", Refusal::DuplicateConnection),
            ("Unauthorized: Invalid tunnel secret", Refusal::Unauthorized),
            ("tunnel deleted", Refusal::Other),
            // cloudflared compares the whole text for a duplicate.
            ("EDUPCONN ", Refusal::Other),
        ] {
            let cause = EdgeCause::parse(text);
            assert_eq!(cause.refusal(), refusal, "{text:?}");
            assert_eq!(cause.as_str(), text, "byte for byte");
            assert_eq!(cause.to_string(), text);
        }
        // Through the wire and back, the text is what the edge wrote.
        let refused = RegistrationError {
            cause: "Unauthorized: Invalid tunnel secret".into(),
            should_retry: false,
            retry_after: Duration::from_secs(1),
        };
        let ConnectionResponse::Error(wire) = refused.to_wire() else {
            panic!("an error response")
        };
        assert_eq!(wire.cause, "Unauthorized: Invalid tunnel secret");
        assert_eq!(RegistrationError::from_wire(&wire), refused);
    }

    #[test]
    fn a_local_timeout_and_a_remote_refusal_are_kept_apart() {
        let timed_out = RegistrationFailure::Call(CallFailure::TimedOut);
        assert!(timed_out.is_local() && timed_out.should_retry());
        assert_eq!(timed_out.refusal(), Refusal::Other);
        assert_eq!(timed_out.to_string(), "timed out");
        let refused = RegistrationFailure::Refused(RegistrationError {
            cause: DUPLICATE_CONNECTION.into(),
            should_retry: true,
            retry_after: Duration::from_secs(3),
        });
        assert!(!refused.is_local() && refused.should_retry());
        assert_eq!(refused.refusal(), Refusal::DuplicateConnection);
        assert_eq!(refused.retry_after(), Duration::from_secs(3));
        assert_eq!(refused.to_string(), "EDUPCONN");
        // An RPC exception is permanent, as in cloudflared, and read as a refusal's text is.
        let exception = RegistrationFailure::Call(CallFailure::Remote(EdgeCause::parse(
            "Unauthorized: no such tunnel",
        )));
        assert!(!exception.is_local() && !exception.should_retry());
        assert_eq!(exception.refusal(), Refusal::Unauthorized);
    }

    #[test]
    fn registration_round_trips_through_wire_params() {
        let reg = registration(3);
        let features: Vec<&str> = reg.features.iter().map(String::as_str).collect();
        let ip = reg.ip_bytes();
        assert_eq!(
            Registration::from_params(&reg.params(&features, &ip)).unwrap(),
            reg
        );
        let no_ip = Registration {
            origin_local_ip: None,
            ..reg.clone()
        };
        assert_eq!(
            Registration::from_params(&no_ip.params(&features, &ip)).unwrap(),
            no_ip
        );
    }
}
