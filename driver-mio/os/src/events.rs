//! The connector's events as both drivers log them: once each, by the driver, from
//! [`Event`], in cloudflared's words where cloudflared logs the same thing.

use burrow_core::connector::Event;
use burrow_core::control::features::FEATURES_RECORD;
use burrow_core::rpc_stream::server::CallRefusal;
use burrow_core::session::{DatagramFault, DatagramVersion, SessionNotice};
use burrow_core::tunnel::data::Stall;
use burrow_core::tunnel::protocol::{Protocol, PERCENTAGE_RECORD};
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
        Event::HaConnectionsCapped {
            requested,
            available,
        } => warn!(
            requested,
            available,
            "You requested {requested} HA connections but I can give you at most {available}."
        ),
        Event::DatagramVersionSelected { version, record } => {
            let version = match version {
                DatagramVersion::V2 => "v2",
                DatagramVersion::V3 => "v3",
            };
            info!(
                record = FEATURES_RECORD,
                dv3_2 = record.dv3_2,
                "datagram {version} for new connections (--features names no datagram version: the feature record chooses)"
            );
        }
        Event::FeaturesRefreshFailed {
            reason,
            error,
            first,
        } => {
            let detail = error.as_ref().map(ToString::to_string).unwrap_or_default();
            if *first {
                error!(record = FEATURES_RECORD, %reason, detail, "Failed to fetch features, default to disable");
            } else {
                error!(record = FEATURES_RECORD, %reason, detail, "Failed to refresh feature selector");
            }
        }
        Event::ProtocolRefreshFailed { reason } => {
            warn!(record = PERCENTAGE_RECORD, %reason, "Failed to refresh protocol");
        }
        Event::GracePeriodOver => warn!("grace period over; closing every connection now"),
        Event::DrainCutShort { index, streams } => warn!(
            conn_index = index,
            streams, "grace period over; closing with streams in flight"
        ),
        Event::StartFailed { index, edge, error } => {
            warn!(conn_index = index, %edge, %error, "cannot start a connection");
        }
        Event::ConnectFailed { index, error } => {
            warn!(conn_index = index, %error, "cannot connect; retrying");
        }
        Event::UnregisterFailed { index, reason } => {
            warn!(conn_index = index, %reason, "unregistering failed; draining anyway");
        }
        Event::UdpUnregisterFailed {
            index,
            session,
            failure,
            suppressed,
        } => warn!(
            conn_index = index,
            session_id = %session,
            reason = %failure,
            suppressed,
            "Failed to unregister udp session with edge"
        ),
        Event::FlowRefused {
            index,
            dest,
            limit,
            suppressed,
        } => warn!(
            conn_index = index,
            %dest,
            limit,
            suppressed,
            "Too many concurrent flows being handled, rejecting tcp proxy"
        ),
        Event::HeldRequestReset {
            index,
            host,
            waited,
            stall,
            suppressed,
        } => {
            let waited_ms = waited.as_millis() as u64;
            match stall {
                Stall::Crowded => warn!(
                    conn_index = index,
                    %host,
                    waited_ms,
                    suppressed,
                    "origin took none of the request body; reset it to make room for other requests"
                ),
                // cloudflared's own message (`quic/safe_stream.go`).
                Stall::Edge => error!(
                    conn_index = index,
                    %host,
                    waited_ms,
                    suppressed,
                    "Closing quic stream due to timeout while writing"
                ),
                Stall::Origin => warn!(
                    conn_index = index,
                    %host,
                    waited_ms,
                    suppressed,
                    "origin took no write within --write-stream-timeout; closed it and ended the stream"
                ),
            }
        }
        Event::RpcRefused {
            index,
            refusal,
            suppressed,
        } => match refusal {
            CallRefusal::DestinationIp { error } => warn!(
                conn_index = index,
                error, suppressed, "Failed to parse destination proxy IP"
            ),
            CallRefusal::BadParams { method, reason } => warn!(
                conn_index = index,
                method,
                %reason,
                suppressed,
                "refused an RPC call"
            ),
        },
        Event::Session(notice) => log_session(notice),
        Event::Fatal(e) => error!(error = %e, "giving up"),
        Event::Stopped => {}
    }
}

/// One UDP session notice, in cloudflared's words where it has them.
fn log_session(notice: &SessionNotice) {
    match notice {
        SessionNotice::DatagramDropped {
            link,
            fault: DatagramFault::RegistrationResponse,
            suppressed,
        } => warn!(%link, suppressed, "unexpected datagram type received: 3"),
        SessionNotice::DatagramDropped {
            link,
            fault,
            suppressed,
        } => warn!(%link, error = %fault, suppressed, "dropping malformed datagram"),
        SessionNotice::FlowLimited {
            id,
            link,
            limit,
            suppressed,
        } => warn!(
            flow_id = %id,
            %link,
            limit,
            suppressed,
            "Too many concurrent sessions being handled, rejecting udp proxy"
        ),
        SessionNotice::OriginFailed {
            id,
            reason,
            suppressed,
        } => warn!(flow_id = %id, %reason, suppressed, "flow closed with an error"),
        SessionNotice::OpenFailed {
            id,
            dest,
            reason,
            suppressed,
        } => warn!(flow_id = %id, %dest, %reason, suppressed, "flow registration failure"),
        SessionNotice::PayloadTooLarge {
            id,
            len,
            suppressed,
        } => warn!(
            flow_id = %id,
            len,
            suppressed,
            "origin payload exceeds the datagram limit; dropped"
        ),
    }
}
