//! The connector's events as both drivers log them: once each, by the driver, from
//! [`Event`], in cloudflared's words where cloudflared logs the same thing.

use burrow_core::connector::Event;
use burrow_core::tunnel::protocol::Protocol;
use tracing::{debug, error, info, warn};

/// Logs `e` once, in cloudflared's words where it has them; `stopping` once shutdown began
/// (a closed connection is then no warning).
pub fn log(e: &Event, stopping: bool) {
    match e {
        Event::Connecting {
            index,
            link,
            edge,
            protocol,
        } => {
            debug!(conn_index = index, %link, %edge, %protocol, "dialing edge");
        }
        Event::Registered {
            index,
            edge,
            details,
            protocol,
            ..
        } => info!(
            conn_index = index,
            connection = %details.uuid,
            event = 0,
            ip = %edge.ip(),
            location = %details.location,
            protocol = %protocol,
            "Registered tunnel connection"
        ),
        Event::ProtocolSelected { protocol } => {
            info!(%protocol, "the protocol percentages changed: new connections use {protocol}");
        }
        Event::ProtocolChanged { index, protocol } => {
            if *protocol == Protocol::Http2 {
                warn!(conn_index = index, "Switching to fallback protocol http2");
                warn!(conn_index = index, "If you are using private routing to this Tunnel, then ICMP, UDP (and Private DNS Resolution) will not work unless your cloudflared can connect with Cloudflare Network with `quic`.");
            } else {
                info!(conn_index = index, %protocol, "trying quic again: draining the http2 connection");
            }
        }
        Event::RegistrationFailed { index, error } => {
            error!(conn_index = index, cause = %error, local = error.is_local(), "Register tunnel error from server side");
        }
        Event::LinkClosed {
            index,
            link,
            reason,
            was_registered,
        } => {
            if *was_registered && !stopping {
                warn!(conn_index = index, %link, %reason, "Connection terminated");
            } else {
                debug!(conn_index = index, %link, %reason, "connection attempt failed");
            }
        }
        Event::Reconnecting {
            index,
            delay,
            up_to,
        } => {
            info!(conn_index = index, ?delay, ?up_to, "Retrying connection");
        }
        Event::FallbackUnavailable { index } => {
            warn!(conn_index = index, "QUIC keeps failing and --protocol quic allows no fallback; check that UDP to the edge port is allowed");
        }
        Event::ConfigurationApplied { version } => info!(version, "Updated to new configuration"),
        Event::AccessKeysFetched { url, error: None } => {
            debug!(%url, "Access signing keys fetched");
        }
        Event::AccessKeysFetched {
            url,
            error: Some(error),
        } => {
            warn!(%url, %error, "cannot fetch Access signing keys; requests to rules that require Access are refused until it works");
        }
        Event::ConfigurationRefused { version, error } => {
            warn!(version, %error, "remote configuration refused");
        }
        Event::FlowLimitChanged { limit, active } => info!(limit, active, "flow limit changed"),
        Event::LocalConfigurationFailed { index, reason } => {
            warn!(conn_index = index, %reason, "Failed to update local configuration");
        }
        Event::RpcCalled { index, call } => {
            debug!(conn_index = index, method = call.method.label(), latency = ?call.latency, failed = call.failed, "registration call ended");
        }
        Event::Fatal(e) => error!(error = %e, "giving up"),
        Event::Stopped => {}
    }
}
