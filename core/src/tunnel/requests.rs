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
    /// TCP flows to the virtual DNS service taken to the local resolver
    /// (`cloudflared_virtual_origins_dns_requests_total{protocol="tcp"}`).
    pub dns_tcp: u64,
    /// Origin dials of stream requests, timed as cloudflared's `proxyStream`/`proxyTCPStream`
    /// time them (`cloudflared_proxy_connect_latency`, `_connect_streams_errors`).
    pub connect: ConnectStats,
}

/// `cloudflared_proxy_connect_latency`'s upper bounds, milliseconds (cloudflared's buckets).
pub const CONNECT_LATENCY_BUCKETS_MS: [u64; 8] = [1, 10, 25, 50, 100, 500, 1000, 5000];

/// How the origin dials of TCP streams (warp routing, and the WebSocket-carried `tcp://`-style,
/// bastion and SOCKS services) went: a histogram of the time from the dial to the origin
/// connected, and the dials that never connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectStats {
    /// Dials connected, by the first bucket of [`CONNECT_LATENCY_BUCKETS_MS`] they fit in
    /// (the last entry: above every bound). Not cumulative.
    pub buckets: [u64; CONNECT_LATENCY_BUCKETS_MS.len() + 1],
    /// Whole milliseconds of every connected dial, summed.
    pub sum_ms: u64,
    /// Dials that failed or were given up before connecting
    /// (`cloudflared_proxy_connect_streams_errors`).
    pub errors: u64,
}

impl ConnectStats {
    /// A dial connected after `ms` whole milliseconds (as Go's `Milliseconds()` truncates).
    pub(crate) fn observe(&mut self, ms: u64) {
        let at = CONNECT_LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(CONNECT_LATENCY_BUCKETS_MS.len());
        self.buckets[at] += 1;
        self.sum_ms += ms;
    }

    /// Dials connected.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ConnectStats) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
        self.errors += other.errors;
    }
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
        self.dns_tcp += other.dns_tcp;
        self.connect.add(&other.connect);
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.ended == 0 && self.connect == ConnectStats::default()
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

    #[test]
    fn connect_latency_falls_in_cloudflareds_buckets() {
        let mut c = ConnectStats::default();
        for ms in [0, 1, 2, 10, 5000, 5001] {
            c.observe(ms);
        }
        c.errors += 1;
        assert_eq!(c.buckets, [2, 2, 0, 0, 0, 0, 0, 1, 1]);
        let mut sum = ConnectStats::default();
        sum.add(&c);
        sum.add(&c);
        assert_eq!((sum.count(), sum.sum_ms, sum.errors), (12, 2 * 10014, 2));
    }
}
