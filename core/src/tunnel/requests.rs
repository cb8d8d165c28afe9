//! What each proxied request came to, counted as cloudflared's proxy counts it (PROTOCOL.md
//! C§6, `proxy/metrics.go`, `proxy/logger.go`): the drivers only export these figures.
//!
//! A request is a data stream whose `ConnectRequest` was read (HTTP, WebSocket or TCP), as
//! cloudflared counts each `ProxyHTTP`/`ProxyTCP` call. It is in flight until its stream ends.
//! It ends in one [`RequestOutcome`]: an HTTP response delivered whole counts under its status
//! code (`response_by_code`; never a `101`, whose stream turns raw), an exchange that failed
//! counts as an error (`request_errors`: origin unreachable or broken, a bad response, the edge
//! giving up mid-exchange, an Access refusal — cloudflared's middleware filter is logged as a
//! request error), and a raw stream (TCP, WebSocket after its 101) or a request the flow limit
//! refused counts as neither, as in cloudflared.

use std::collections::BTreeMap;

use crate::stream::proxy::FlowKind;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The origin's response (this status, not 101) reached the edge whole.
    Status(u16),
    /// The exchange failed.
    Error,
    /// Neither: a raw stream that ended, or a refusal cloudflared does not count as an error.
    Done,
}

/// Counters of requests. Every field only grows, so a connection's counts since they were last
/// taken ([`RequestStats::add`]) fold into the process's without losing what was in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Requests read (`cloudflared_tunnel_total_requests`).
    pub total: u64,
    /// Requests whose stream ended.
    pub ended: u64,
    /// Requests that failed (`cloudflared_tunnel_request_errors`).
    pub errors: u64,
    /// Responses delivered whole, by status code (`cloudflared_tunnel_response_by_code`). Keys
    /// are three-digit codes, so the map holds at most 1000 entries.
    pub by_status: BTreeMap<u16, u64>,
    /// TCP (warp-routing) requests read (`cloudflared_tcp_total_sessions`).
    pub tcp_total: u64,
    /// TCP requests whose stream ended.
    pub tcp_ended: u64,
    /// TCP requests the flow limit refused (`cloudflared_flow_rate_limited_total{flow_type="tcp"}`).
    pub tcp_refused: u64,
}

impl RequestStats {
    /// Requests not ended (`cloudflared_tunnel_concurrent_requests_per_tunnel`).
    pub fn in_flight(&self) -> u64 {
        self.total.saturating_sub(self.ended)
    }

    /// TCP requests not ended (`cloudflared_tcp_active_sessions`).
    pub fn tcp_active(&self) -> u64 {
        self.tcp_total.saturating_sub(self.tcp_ended)
    }

    /// A request of `kind` was read.
    pub(crate) fn started(&mut self, kind: FlowKind) {
        self.total += 1;
        if kind == FlowKind::Tcp {
            self.tcp_total += 1;
        }
    }

    /// A request of `kind` ended with `outcome`.
    pub(crate) fn ended(&mut self, kind: FlowKind, outcome: RequestOutcome) {
        self.ended += 1;
        if kind == FlowKind::Tcp {
            self.tcp_ended += 1;
        }
        match outcome {
            RequestOutcome::Status(code) => *self.by_status.entry(code.min(999)).or_default() += 1,
            RequestOutcome::Error => self.errors += 1,
            RequestOutcome::Done => {}
        }
    }

    /// Adds `other`'s counts to these (a connection's, into the process's).
    pub fn add(&mut self, other: &RequestStats) {
        self.total += other.total;
        self.ended += other.ended;
        self.errors += other.errors;
        for (code, n) in &other.by_status {
            *self.by_status.entry(*code).or_default() += n;
        }
        self.tcp_total += other.tcp_total;
        self.tcp_ended += other.tcp_ended;
        self.tcp_refused += other.tcp_refused;
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.ended == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_as_cloudflared_counts_them() {
        let mut s = RequestStats::default();
        for kind in [
            FlowKind::Http,
            FlowKind::Http,
            FlowKind::Tcp,
            FlowKind::WebSocket,
        ] {
            s.started(kind);
        }
        assert_eq!(
            (s.total, s.in_flight(), s.tcp_total, s.tcp_active()),
            (4, 4, 1, 1)
        );
        let mut sum = RequestStats::default();
        // Taken while all four are in flight, then their ends taken later.
        sum.add(&std::mem::take(&mut s));
        s.ended(FlowKind::Http, RequestOutcome::Status(404));
        s.ended(FlowKind::Http, RequestOutcome::Error);
        s.ended(FlowKind::Tcp, RequestOutcome::Done);
        sum.add(&std::mem::take(&mut s));
        assert!(s.is_empty());
        assert_eq!((sum.total, sum.in_flight(), sum.errors), (4, 1, 1));
        assert_eq!(sum.tcp_active(), 0);
        assert_eq!(sum.by_status.get(&404), Some(&1));
    }
}
