//! One HA connection of either transport, as the supervisor drives it.

use std::time::Instant;

use quinn_proto::{Dir, Side, StreamId};

use crate::rpc_stream::ConfigUpdateResult;

use crate::tunnel::connector::{ConnectorConnection, ConnectorEvent};
use crate::tunnel::data::{FlowId, OriginAction};
use crate::tunnel::http2_link::Http2Link;
use crate::tunnel::protocol::Protocol;
use crate::tunnel::requests::RequestStats;

/// A tunnel connection over QUIC or HTTP/2.
// It lives boxed (in the supervisor's `Running`): the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    Quic(ConnectorConnection),
    Http2(Box<Http2Link>),
}

/// Calls the same method on whichever transport it is.
macro_rules! both {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Link::Quic($c) => $e,
            Link::Http2($c) => $e,
        }
    };
}

impl Link {
    pub(crate) fn protocol(&self) -> Protocol {
        match self {
            Link::Quic(_) => Protocol::Quic,
            Link::Http2(_) => Protocol::Http2,
        }
    }

    /// The QUIC connection, if it is one (datagrams and UDP only exist there).
    pub(crate) fn quic(&mut self) -> Option<&mut ConnectorConnection> {
        match self {
            Link::Quic(c) => Some(c),
            Link::Http2(_) => None,
        }
    }

    /// The HTTP/2 connection, if it is one.
    pub(crate) fn http2(&mut self) -> Option<&mut Http2Link> {
        match self {
            Link::Http2(c) => Some(c),
            Link::Quic(_) => None,
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        both!(self, c => c.handle_timeout(now))
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        both!(self, c => c.poll_timeout())
    }

    /// The next event. An HTTP/2 configuration push comes as the same
    /// [`ConnectorEvent::ConfigurationOffered`] as QUIC's, its h2 stream id carried in the
    /// `stream` field's index (read back by [`Link::respond_configuration`]), so the supervisor
    /// applies pushes one way whatever the transport.
    pub(crate) fn poll_event(&mut self) -> Option<ConnectorEvent> {
        match self {
            Link::Quic(c) => c.poll_event(),
            Link::Http2(c) => c.poll_event().or_else(|| {
                let (stream, version, config) = c.poll_offer()?;
                Some(ConnectorEvent::ConfigurationOffered {
                    stream: StreamId::new(Side::Client, Dir::Bi, u64::from(stream.0)),
                    version,
                    config,
                })
            }),
        }
    }

    /// Answers a configuration push.
    pub(crate) fn respond_configuration(
        &mut self,
        now: Instant,
        stream: StreamId,
        result: &ConfigUpdateResult,
    ) -> Result<(), String> {
        match self {
            Link::Quic(c) => c
                .respond_configuration(now, stream, result)
                .map_err(|e| e.to_string()),
            Link::Http2(c) => {
                let id = u32::try_from(stream.index()).map_err(|e| e.to_string())?;
                c.respond_configuration(now, crate::http2::StreamId(id), result)
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub(crate) fn poll_origin_action(&mut self) -> Option<OriginAction> {
        both!(self, c => c.poll_origin_action())
    }

    pub(crate) fn handle_flow_handshaking(&mut self, now: Instant, flow: FlowId) {
        both!(self, c => c.handle_flow_handshaking(now, flow))
    }

    pub(crate) fn handle_flow_dialing(&mut self, now: Instant, flow: FlowId) {
        both!(self, c => c.handle_flow_dialing(now, flow))
    }

    pub(crate) fn handle_flow_dialed(&mut self, flow: FlowId) {
        both!(self, c => c.handle_flow_dialed(flow))
    }

    pub(crate) fn handle_flow_http2(&mut self, flow: FlowId) {
        both!(self, c => c.handle_flow_http2(flow))
    }

    pub(crate) fn handle_flow_connected(&mut self, now: Instant, flow: FlowId) {
        both!(self, c => c.handle_flow_connected(now, flow))
    }

    pub(crate) fn handle_flow_failed(&mut self, now: Instant, flow: FlowId, reason: &str) {
        both!(self, c => c.handle_flow_failed(now, flow, reason))
    }

    pub(crate) fn handle_flow_data(
        &mut self,
        now: Instant,
        flow: FlowId,
        bytes: &bytes::Bytes,
    ) -> usize {
        both!(self, c => c.handle_flow_data(now, flow, bytes))
    }

    pub(crate) fn handle_flow_finished(&mut self, now: Instant, flow: FlowId) {
        both!(self, c => c.handle_flow_finished(now, flow))
    }

    pub(crate) fn handle_flow_written(&mut self, now: Instant, flow: FlowId) {
        both!(self, c => c.handle_flow_written(now, flow))
    }

    /// Graceful shutdown; `Err` only for caller misuse (the connection closes either way).
    pub(crate) fn shutdown(&mut self, now: Instant) -> Result<(), String> {
        match self {
            Link::Quic(c) => c.shutdown(now).map_err(|e| e.to_string()),
            Link::Http2(c) => {
                c.shutdown(now);
                Ok(())
            }
        }
    }

    /// What this connection's new streams and flows are held to.
    pub(crate) fn limits_mut(&mut self) -> &mut crate::tunnel::data::DataLimits {
        both!(self, c => c.data_mut().limits_mut())
    }

    pub(crate) fn close_now(&mut self, now: Instant) {
        both!(self, c => c.close_now(now))
    }

    pub(crate) fn set_flow_gate(&mut self, gate: crate::flow::FlowGate) {
        both!(self, c => c.data_mut().set_flow_gate(gate))
    }

    pub(crate) fn flow_slots(&self) -> u64 {
        both!(self, c => c.data().flow_slots())
    }

    pub(crate) fn take_request_stats(&mut self) -> RequestStats {
        both!(self, c => c.data_mut().take_request_stats())
    }

    pub(crate) fn take_flow_refusals(&mut self) -> Vec<crate::tunnel::data::FlowRefusal> {
        both!(self, c => c.data_mut().take_flow_refusals())
    }

    pub(crate) fn take_held_resets(&mut self) -> Vec<crate::tunnel::data::HeldReset> {
        both!(self, c => c.data_mut().take_held_resets())
    }

    pub(crate) fn is_closed(&self) -> bool {
        both!(self, c => c.is_closed())
    }
}
