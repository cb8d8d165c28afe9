//! The metric families both drivers export alike, in Prometheus text under cloudflared's names,
//! help texts and labels: `quic_client_*` (figures core decides,
//! [`burrow_core::quic::client_metrics`]), Go's `process_*` (read from `/proc`, as client_golang's
//! process collector reads them), `build_info`, and what the connector counts of requests, UDP
//! flows and drops, ICMP, registrations, TCP origin dials and the flow limit
//! ([`ConnectorFigures`]): the whole of `/metrics` for both daemons.

use std::fmt::Write;

use std::collections::BTreeMap;

use burrow_core::connector::Connector;
use burrow_core::flow::{FlowStats, FlowType};
use burrow_core::quic::client_metrics::{IndexFigures, QuicClientStats, FRAME_TYPES};
use burrow_core::session::{DropReason, IndexStats, SessionMethod};
use burrow_core::tunnel::registrations::{rpc_latency_bounds, RegistrationStats};
use burrow_core::tunnel::requests::{RequestStats, CONNECT_LATENCY_BUCKETS_MS};
use burrow_core::tunnel::udp::DatagramHub;

/// Appends one family's HELP and TYPE lines, then `lines` (nothing when there are none, as
/// client_golang leaves out a family without series).
fn family(out: &mut String, name: &str, kind: &str, help: &str, lines: &str) {
    if !lines.is_empty() {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{lines}");
    }
}

/// A family with one series per index: `value` gives an index's value, if it has one.
fn by_index(
    out: &mut String,
    indexes: &[(u8, IndexFigures)],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&IndexFigures) -> Option<u64>,
) {
    let mut lines = String::new();
    for (i, f) in indexes {
        if let Some(v) = value(f) {
            let _ = writeln!(lines, "{name}{{conn_index=\"{i}\"}} {v}");
        }
    }
    family(out, name, kind, help, &lines);
}

/// A gauge family by index: name, help, an index's value.
type Gauge = (&'static str, &'static str, fn(&IndexFigures) -> Option<u64>);

/// The `quic_client_*` families.
pub fn quic(out: &mut String, q: &QuicClientStats) {
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        family(out, name, "counter", help, &format!("{name} {v}\n"));
    };
    counter(
        out,
        "quic_client_total_connections",
        "Number of connections initiated",
        q.total_connections,
    );
    counter(
        out,
        "quic_client_closed_connections",
        "Number of connections that has been closed",
        q.closed_connections,
    );
    counter(
        out,
        "quic_client_packet_too_big_dropped",
        "Count of packets received from origin that are too big to send to the edge and are dropped as a result",
        q.packet_too_big_dropped,
    );
    let indexes: Vec<(u8, IndexFigures)> = q.indexes().collect();
    let ix = &indexes;
    by_index(
        out,
        ix,
        (
            "quic_client_max_udp_payload",
            "gauge",
            "Maximum UDP payload size in bytes for a QUIC packet",
        ),
        |f| f.gauges.max_udp_payload,
    );
    for (name, help, of) in [
        (
            "quic_client_sent_frames",
            "Number of frames that have been sent through a connection",
            (|f: &IndexFigures| f.totals.sent_frames) as fn(&IndexFigures) -> [u64; 20],
        ),
        (
            "quic_client_received_frames",
            "Number of frames that have been received through a connection",
            |f| f.totals.received_frames,
        ),
    ] {
        // Only the frame types seen, as cloudflared creates a series at a type's first frame.
        let mut lines = String::new();
        for (i, f) in ix {
            for (ty, n) in FRAME_TYPES.iter().zip(of(f)).filter(|(_, n)| *n > 0) {
                let _ = writeln!(
                    lines,
                    "{name}{{conn_index=\"{i}\",frame_type=\"{ty}\"}} {n}"
                );
            }
        }
        family(out, name, "counter", help, &lines);
    }
    by_index(
        out,
        ix,
        (
            "quic_client_sent_bytes",
            "counter",
            "Number of bytes that have been sent through a connection",
        ),
        |f| Some(f.totals.sent_bytes),
    );
    by_index(
        out,
        ix,
        (
            "quic_client_receive_bytes",
            "counter",
            "Number of bytes that have been received through a connection",
        ),
        |f| Some(f.totals.receive_bytes),
    );
    // quinn does not say why a packet was declared lost.
    let mut lines = String::new();
    for (i, f) in ix {
        let _ = writeln!(
            lines,
            "quic_client_lost_packets{{conn_index=\"{i}\",reason=\"unknown_loss_reason\"}} {}",
            f.totals.lost_packets
        );
    }
    family(
        out,
        "quic_client_lost_packets",
        "counter",
        "Number of packets that have been lost from a connection",
        &lines,
    );
    let gauges: [Gauge; 5] = [
        (
            "quic_client_min_rtt",
            "Lowest RTT measured on a connection in millisec",
            |f| Some(f.gauges.min_rtt_ms),
        ),
        (
            "quic_client_latest_rtt",
            "Latest RTT measured on a connection",
            |f| f.gauges.latest_rtt_ms,
        ),
        (
            "quic_client_smoothed_rtt",
            "Calculated smoothed RTT measured on a connection in millisec",
            |f| Some(f.gauges.smoothed_rtt_ms),
        ),
        (
            "quic_client_mtu",
            "Current maximum transmission unit (MTU) of a connection",
            |f| Some(u64::from(f.gauges.mtu)),
        ),
        (
            "quic_client_congestion_window",
            "Current congestion window size",
            |f| Some(f.gauges.congestion_window),
        ),
    ];
    for (name, help, value) in gauges {
        by_index(out, ix, (name, "gauge", help), value);
    }
    let mut lines = String::new();
    for (i, f) in ix {
        if let Some(s) = f.gauges.congestion_state {
            let _ = writeln!(
                lines,
                "quic_client_congestion_state{{conn_index=\"{i}\"}} {s}"
            );
        }
    }
    family(
        out,
        "quic_client_congestion_state",
        "gauge",
        "Current congestion control state (0=slow_start, 1=congestion_avoidance, 2=application_limited, 3=recovery, -1=unknown)",
        &lines,
    );
}

/// cloudflared's un-namespaced `build_info`; burrow has no Go version or build type.
pub fn build_info(out: &mut String) {
    family(
        out,
        "build_info",
        "gauge",
        "Build and version information",
        &format!(
            "build_info{{goversion=\"none (rust)\",revision=\"\",type=\"burrow\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ),
    );
}

/// What `/proc` says of this process, in client_golang's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Entries of `/proc/self/fd`.
    pub open_fds: u64,
    /// The soft limit of open files (`u64::MAX` unlimited, as procfs reads it).
    pub max_fds: u64,
    /// Virtual memory size, bytes.
    pub virtual_memory: u64,
    /// The soft address-space limit.
    pub virtual_memory_max: u64,
    /// Resident set, bytes.
    pub resident_memory: u64,
    /// Start time, Unix seconds.
    pub start_time: f64,
    /// The network namespace's IP bytes in and out (`/proc/self/net/netstat`'s `IpExt`), what
    /// client_golang reports as the process's.
    pub network: Option<(u64, u64)>,
}

impl Process {
    /// Reads this process's figures; `None` without `/proc`.
    pub fn read() -> Option<Self> {
        use rustix::process::{getrlimit, Resource};
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces and parentheses.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        // stat(5) numbers fields from 1; field 3 (state) is the first after the name.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        })?;
        let limit = |r| getrlimit(r).current.unwrap_or(u64::MAX);
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds: limit(Resource::Nofile),
            virtual_memory: field(23)?,
            virtual_memory_max: limit(Resource::As),
            resident_memory: field(24)? * rustix::param::page_size() as u64,
            start_time: boot as f64 + field(22)? as f64 / ticks,
            network: std::fs::read_to_string("/proc/self/net/netstat")
                .ok()
                .and_then(|s| ip_octets(&s)),
        })
    }

    /// The `process_*` families.
    pub fn render(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            family(out, name, kind, help, &format!("{name} {v}\n"));
        };
        one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.to_string(),
        );
        one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.to_string(),
        );
        one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            go_float(self.max_fds),
        );
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_memory.to_string(),
        );
        one(
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            go_float(self.virtual_memory_max),
        );
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_memory.to_string(),
        );
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time.to_string(),
        );
        if let Some((rx, tx)) = self.network {
            one(
                "process_network_receive_bytes_total",
                "counter",
                "Number of bytes received by the process over the network.",
                rx.to_string(),
            );
            one(
                "process_network_transmit_bytes_total",
                "counter",
                "Number of bytes sent by the process over the network.",
                tx.to_string(),
            );
        }
    }
}

/// A count as Go prints the float it becomes (`unlimited`, u64::MAX, is 1.8446744073709552e+19).
fn go_float(v: u64) -> String {
    if v < 1 << 53 {
        v.to_string()
    } else {
        format!("{:e}", v as f64).replace('e', "e+")
    }
}

/// `IpExt`'s `InOctets` and `OutOctets` in `/proc/net/netstat`: a line of names, then one of
/// values.
fn ip_octets(netstat: &str) -> Option<(u64, u64)> {
    let mut ext = netstat.lines().filter(|l| l.starts_with("IpExt:"));
    let (names, values) = (ext.next()?, ext.next()?);
    let pairs: Vec<(&str, &str)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .and_then(|(_, v)| v.parse().ok())
    };
    Some((get("InOctets")?, get("OutOctets")?))
}

/// A family labelled `conn_index`: name, type, help, and its value in core's counters.
type IndexFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&IndexStats) -> u64,
);

/// What the connector counted, copied through its read-only accessors (burrow-tokio each loop
/// turn for its metrics task, burrow-mio at each scrape), for every family but the QUIC,
/// process and build ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorFigures {
    /// HA connections configured (`cloudflared_tunnel_ha_connections`).
    pub ha_connections: usize,
    /// What core counted of the proxied requests (`cloudflared_tunnel_total_requests`,
    /// `_concurrent_requests_per_tunnel`, `_request_errors`, `_response_by_code`,
    /// `cloudflared_tcp_*_sessions`, `cloudflared_proxy_connect_*`).
    pub requests: RequestStats,
    /// Echo requests the driver's ping sockets sent (`cloudflared_icmp_total_requests`).
    pub icmp_requests: u64,
    /// Configuration version applied, from the driver's events
    /// (`cloudflared_orchestration_config_version`).
    pub config_version: i64,
    /// Core's UDP flow and drop counters by HA connection index
    /// (`cloudflared_udp_*_flows{conn_index}`, `cloudflared_udp_dropped_datagrams{conn_index,reason}`).
    pub udp: BTreeMap<u8, IndexStats>,
    /// Core's dropped datagrams of every index by [`DropReason::ALL`] order: what the indexes
    /// do not account for is no connection's (`conn_index=""`).
    pub udp_dropped: [u64; DropReason::ALL.len()],
    /// Core's ICMP drops of every index: what the indexes do not account for is no
    /// connection's (`cloudflared_icmp_dropped_packets{conn_index=""}`).
    pub icmp_dropped: u64,
    /// Registrations and server locations (`cloudflared_tunnel_tunnel_register_*`,
    /// `cloudflared_tunnel_server_locations`).
    pub registrations: RegistrationStats,
    /// Flows the limit refused (`flow_client_registrations_rate_limited_total{flow_type}`).
    pub flows: FlowStats,
    /// Echo replies sent to the edge (`cloudflared_icmp_total_replies`).
    pub icmp_replies: u64,
    /// Datagram-v2 sessions opened and still open (`cloudflared_udp_total_sessions`,
    /// `cloudflared_udp_active_sessions`).
    pub udp_sessions: (u64, u64),
    /// UDP sessions taken to the virtual DNS service's resolver
    /// (`cloudflared_virtual_origins_dns_requests_total{protocol="udp"}`; TCP's is in
    /// `requests`).
    pub dns_udp: u64,
}

impl ConnectorFigures {
    /// Brings these up to `machine`'s counts (maps and by-code counts copied only if they
    /// moved).
    pub fn update(&mut self, machine: &Connector) {
        self.ha_connections = machine.ha_connections();
        let r = machine.request_stats();
        let moved = |a: &RequestStats| (a.total, a.ended, a.tcp_refused, a.connect);
        if moved(r) != moved(&self.requests) {
            self.requests.clone_from(r);
        }
        let r = machine.registration_stats();
        if r.changes != self.registrations.changes {
            self.registrations.clone_from(r);
        }
        self.flows = machine.flow_stats();
        self.update_datagrams(machine.datagram_hub());
    }

    /// Brings the datagram plane's counts up to `hub`'s.
    pub fn update_datagrams(&mut self, hub: &DatagramHub) {
        if hub.sessions.index_stats() != &self.udp {
            self.udp.clone_from(hub.sessions.index_stats());
        }
        self.udp_dropped = hub.sessions.stats().dropped;
        self.icmp_dropped = hub.sessions.stats().icmp_dropped;
        self.icmp_replies = hub.stats().icmp_replies;
        let s = hub.sessions.stats();
        self.udp_sessions = (s.v2_sessions, s.v2_active());
        self.dns_udp = s.dns;
    }

    /// Their families, under cloudflared's names, help texts and labels.
    pub fn render(&self, out: &mut String) {
        self.render_tunnel(out);
        self.render_datagrams(out);
        self.render_registrations(out);
        self.render_connect(out);
        self.render_virtual_dns(out);
    }

    /// `cloudflared_virtual_origins_dns_requests_total{protocol}`: as a Prometheus vector
    /// does, a protocol shows once it counted one, the family once either did.
    fn render_virtual_dns(&self, out: &mut String) {
        let name = "cloudflared_virtual_origins_dns_requests_total";
        let mut lines = String::new();
        for (protocol, n) in [("tcp", self.requests.dns_tcp), ("udp", self.dns_udp)] {
            if n > 0 {
                let _ = writeln!(lines, "{name}{{protocol=\"{protocol}\"}} {n}");
            }
        }
        if !lines.is_empty() {
            family(
                out,
                name,
                "counter",
                "Total count of DNS requests that have been proxied to the virtual DNS resolver origin",
                &lines,
            );
        }
    }

    /// The request, TCP session, HA and configuration families.
    fn render_tunnel(&self, out: &mut String) {
        let q = &self.requests;
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            family(out, name, kind, help, &format!("{name} {v}\n"));
        };
        one(
            "cloudflared_tunnel_ha_connections",
            "gauge",
            "Number of active ha connections",
            self.ha_connections.to_string(),
        );
        one(
            "cloudflared_tunnel_total_requests",
            "counter",
            "Amount of requests proxied through all the tunnels",
            q.total.to_string(),
        );
        one(
            "cloudflared_tunnel_concurrent_requests_per_tunnel",
            "gauge",
            "Concurrent requests proxied through each tunnel",
            q.in_flight().to_string(),
        );
        one(
            "cloudflared_tunnel_request_errors",
            "counter",
            "Count of error proxying to origin",
            q.errors.to_string(),
        );
        one(
            "cloudflared_tcp_total_sessions",
            "counter",
            "Total count of TCP sessions that have been proxied to any origin",
            q.tcp_total.to_string(),
        );
        one(
            "cloudflared_tcp_active_sessions",
            "gauge",
            "Concurrent count of TCP sessions that are being proxied to any origin",
            q.tcp_active().to_string(),
        );
        one(
            "cloudflared_icmp_total_requests",
            "counter",
            "Total count of ICMP requests that have been proxied to any origin",
            self.icmp_requests.to_string(),
        );
        one(
            "cloudflared_icmp_total_replies",
            "counter",
            "Total count of ICMP replies that have been proxied from any origin",
            self.icmp_replies.to_string(),
        );
        one(
            "cloudflared_orchestration_config_version",
            "gauge",
            "Configuration Version",
            self.config_version.to_string(),
        );
        // A line per code seen (no family before the first).
        let mut lines = String::new();
        for (code, n) in &q.by_status {
            let _ = writeln!(
                lines,
                "cloudflared_tunnel_response_by_code{{status_code=\"{code}\"}} {n}"
            );
        }
        family(
            out,
            "cloudflared_tunnel_response_by_code",
            "counter",
            "Count of responses by HTTP status code",
            &lines,
        );
    }

    /// The UDP flow, dropped datagram and ICMP drop families, by `conn_index`, and the
    /// datagram-v2 session ones.
    fn render_datagrams(&self, out: &mut String) {
        // Without labels, as cloudflared's `datagramsession` registers them.
        for (name, kind, help, v) in [
            (
                "cloudflared_udp_active_sessions",
                "gauge",
                "Concurrent count of UDP sessions that are being proxied to any origin",
                self.udp_sessions.1,
            ),
            (
                "cloudflared_udp_total_sessions",
                "counter",
                "Total count of UDP sessions that have been proxied to any origin",
                self.udp_sessions.0,
            ),
        ] {
            family(out, name, kind, help, &format!("{name} {v}\n"));
        }
        let by_index: [IndexFamily; 5] = [
            (
                "cloudflared_udp_active_flows",
                "gauge",
                "Concurrent count of UDP flows that are being proxied to any origin",
                IndexStats::active,
            ),
            (
                "cloudflared_udp_total_flows",
                "counter",
                "Total count of UDP flows that have been proxied to any origin",
                |s| s.total_flows,
            ),
            (
                "cloudflared_udp_failed_flows",
                "counter",
                "Total count of flows that errored and closed",
                |s| s.failed,
            ),
            (
                "cloudflared_udp_retry_flow_responses",
                "counter",
                "Total count of UDP flows that have had to send their registration response more than once",
                |s| s.retries,
            ),
            (
                "cloudflared_udp_migrated_flows",
                "counter",
                "Total count of UDP flows have been migrated across local connections",
                |s| s.migrated,
            ),
        ];
        for (name, kind, help, value) in by_index {
            let mut lines = String::new();
            for (index, s) in &self.udp {
                let _ = writeln!(lines, "{name}{{conn_index=\"{index}\"}} {}", value(s));
            }
            family(out, name, kind, help, &lines);
        }
        self.by_index_and(
            out,
            (
                "cloudflared_udp_dropped_datagrams",
                "Total count of UDP dropped datagrams",
            ),
            ("reason", &DropReason::ALL.map(DropReason::label)),
            |s, i| s.dropped[i],
            &self.udp_dropped,
        );
        // cloudflared counts every ICMP drop as `write_failed`.
        self.by_index_and(
            out,
            (
                "cloudflared_icmp_dropped_packets",
                "Total count of ICMP dropped datagrams",
            ),
            ("reason", &[DropReason::WriteFailed.label()]),
            |s, _| s.icmp_dropped,
            &[self.icmp_dropped],
        );
        self.by_index_and(
            out,
            (
                "cloudflared_udp_unsupported_remote_command_total",
                "Total count of unsupported remote RPC commands called",
            ),
            ("command", &SessionMethod::ALL.map(SessionMethod::label)),
            |s, i| s.unsupported[i],
            &[],
        );
    }

    /// A counter family labelled `conn_index` and `key`: every value of `labels` for each
    /// index (zeros too, so a rate starts from 0), then what the indexes do not account for
    /// of `totals` under `conn_index=""`.
    fn by_index_and(
        &self,
        out: &mut String,
        (name, help): (&str, &str),
        (key, labels): (&str, &[&str]),
        at: impl Fn(&IndexStats, usize) -> u64,
        totals: &[u64],
    ) {
        let mut lines = String::new();
        let mut unnamed = totals.to_vec();
        unnamed.resize(labels.len(), 0);
        for (index, s) in &self.udp {
            for (i, (label, rest)) in labels.iter().zip(&mut unnamed).enumerate() {
                let n = at(s, i);
                *rest = rest.saturating_sub(n);
                let _ = writeln!(
                    lines,
                    "{name}{{conn_index=\"{index}\",{key}=\"{label}\"}} {n}"
                );
            }
        }
        for (label, n) in labels.iter().zip(unnamed).filter(|(_, n)| *n > 0) {
            let _ = writeln!(lines, "{name}{{conn_index=\"\",{key}=\"{label}\"}} {n}");
        }
        family(out, name, "counter", help, &lines);
    }

    /// Registrations and server locations, the registration-server calls and the local
    /// configuration pushes.
    fn render_registrations(&self, out: &mut String) {
        let r = &self.registrations;
        for (name, help, v) in [
            (
                "cloudflared_config_local_config_pushes",
                "Number of local configuration pushes to the edge",
                r.config_pushes,
            ),
            (
                "cloudflared_config_local_config_pushes_errors",
                "Number of errors occurred during local configuration pushes",
                r.config_push_errors,
            ),
        ] {
            family(out, name, "counter", help, &format!("{name} {v}\n"));
        }
        // A series per method called (client_golang's vectors show none before the first).
        let labels = |m: burrow_core::control::connector::RpcMethod| {
            format!("handler=\"registration\",method=\"{}\"", m.label())
        };
        for (name, help, failures) in [
            (
                "cloudflared_rpc_client_operations",
                "Number of rpc methods by handler requested",
                false,
            ),
            (
                "cloudflared_rpc_client_failures",
                "Number of rpc method failures by handler requested",
                true,
            ),
        ] {
            let mut lines = String::new();
            for (m, f) in &r.rpc {
                let n = if failures { f.failures } else { f.operations };
                if n > 0 {
                    let _ = writeln!(lines, "{name}{{{}}} {n}", labels(*m));
                }
            }
            family(out, name, "counter", help, &lines);
        }
        let name = "cloudflared_rpc_client_latency_secs";
        let mut lines = String::new();
        for (m, f) in &r.rpc {
            let l = labels(*m);
            let mut below = 0;
            for (le, n) in rpc_latency_bounds().iter().zip(f.buckets) {
                below += n;
                let _ = writeln!(lines, "{name}_bucket{{{l},le=\"{le}\"}} {below}");
            }
            let _ = write!(
                lines,
                "{name}_bucket{{{l},le=\"+Inf\"}} {n}\n{name}_sum{{{l}}} {}\n{name}_count{{{l}}} {n}\n",
                f.sum_secs,
                n = f.operations
            );
        }
        family(
            out,
            name,
            "histogram",
            "Latency of rpc methods by handler requested",
            &lines,
        );
        let rpc = "rpcName=\"registerConnection\"";
        family(
            out,
            "cloudflared_tunnel_tunnel_register_success",
            "counter",
            "Count of successful tunnel registrations",
            &if r.success > 0 {
                format!(
                    "cloudflared_tunnel_tunnel_register_success{{{rpc}}} {}\n",
                    r.success
                )
            } else {
                String::new()
            },
        );
        let mut lines = String::new();
        for (kind, n) in &r.failed {
            let _ = writeln!(
                lines,
                "cloudflared_tunnel_tunnel_register_fail{{error=\"{kind}\",{rpc}}} {n}"
            );
        }
        family(
            out,
            "cloudflared_tunnel_tunnel_register_fail",
            "counter",
            "Count of tunnel registration errors by type",
            &lines,
        );
        let mut lines = String::new();
        for ((index, location), v) in &r.locations {
            let _ = writeln!(
                lines,
                "cloudflared_tunnel_server_locations{{connection_id=\"{index}\",edge_location=\"{}\"}} {v}",
                escape(location)
            );
        }
        family(
            out,
            "cloudflared_tunnel_server_locations",
            "gauge",
            "Where each tunnel is connected to. 1 means current location, 0 means previous locations.",
            &lines,
        );
    }

    /// Connect latency and errors of TCP streams, and the flow limit's refusals.
    fn render_connect(&self, out: &mut String) {
        let c = &self.requests.connect;
        let name = "cloudflared_proxy_connect_latency";
        let mut lines = String::new();
        let mut below = 0;
        for (le, n) in CONNECT_LATENCY_BUCKETS_MS.iter().zip(c.buckets) {
            below += n;
            let _ = writeln!(lines, "{name}_bucket{{le=\"{le}\"}} {below}");
        }
        let count = c.count();
        let _ = write!(
            lines,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}\n",
            c.sum_ms
        );
        family(
            out,
            name,
            "histogram",
            "Time it takes to establish and acknowledge connections in milliseconds",
            &lines,
        );
        let name = "cloudflared_proxy_connect_streams_errors";
        family(
            out,
            name,
            "counter",
            "Total count of failure to establish and acknowledge connections",
            &format!("{name} {}\n", c.errors),
        );
        // cloudflared's `flow` namespace, without the `cloudflared_` prefix (`flow/metrics.go`).
        let name = "flow_client_registrations_rate_limited_total";
        let mut lines = String::new();
        for t in FlowType::ALL {
            let _ = writeln!(
                lines,
                "{name}{{flow_type=\"{}\"}} {}",
                t.label(),
                self.flows.rejected(t)
            );
        }
        family(
            out,
            name,
            "counter",
            "Count registrations dropped due to high number of concurrent flows being handled",
            &lines,
        );
    }
}

/// A label value as the text format wants it (the edge names its locations; be safe anyway).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every family of this module: the connector's, the QUIC figures, the process's,
/// `build_info`.
pub fn render(out: &mut String, q: &QuicClientStats, c: &ConnectorFigures) {
    c.render(out);
    quic(out, q);
    if let Some(p) = Process::read() {
        p.render(out);
    }
    build_info(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_this_process() {
        let p = Process::read().expect("/proc");
        assert!(p.resident_memory > 1 << 20 && p.virtual_memory >= p.resident_memory);
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds);
        assert!(p.start_time > 1.6e9 && p.start_time <= crate::unix_now() + 1.0);
        let mut out = String::new();
        p.render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
            "{out}"
        );
        assert_eq!(go_float(u64::MAX), "1.8446744073709552e+19");
        assert_eq!(go_float(1024), "1024");
    }

    #[test]
    fn ip_octets_follow_the_names_line() {
        let s =
            "TcpExt: A B\nTcpExt: 1 2\nIpExt: InNoRoutes InOctets OutOctets\nIpExt: 0 123 456\n";
        assert_eq!(ip_octets(s), Some((123, 456)));
        assert_eq!(ip_octets("IpExt: InOctets\n"), None);
    }

    #[test]
    fn connector_families_under_cloudflareds_names() {
        let mut c = ConnectorFigures::default();
        let mut out = String::new();
        c.render(&mut out);
        // Before any registration: no register or location series, the rest at zero.
        assert!(!out.contains("register_success{"), "{out}");
        assert!(!out.contains("server_locations{"), "{out}");
        for line in [
            "cloudflared_proxy_connect_latency_bucket{le=\"+Inf\"} 0\n",
            "cloudflared_proxy_connect_latency_count 0\n",
            "cloudflared_proxy_connect_streams_errors 0\n",
            "cloudflared_icmp_total_replies 0\n",
            "flow_client_registrations_rate_limited_total{flow_type=\"udp\"} 0\n",
            "cloudflared_config_local_config_pushes 0\n",
            "cloudflared_config_local_config_pushes_errors 0\n",
            "# TYPE cloudflared_udp_active_sessions gauge\ncloudflared_udp_active_sessions 0\n",
            "# TYPE cloudflared_udp_total_sessions counter\ncloudflared_udp_total_sessions 0\n",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
        // No call yet: no RPC client series (client_golang's vectors show none); no DNS yet.
        assert!(!out.contains("rpc_client"), "{out}");
        assert!(!out.contains("virtual_origins"), "{out}");
        c.registrations.success = 2;
        c.registrations.rpc.insert(
            burrow_core::control::connector::RpcMethod::RegisterConnection,
            burrow_core::tunnel::registrations::RpcFigures {
                operations: 3,
                failures: 1,
                buckets: [1, 1, 0, 0, 0],
                sum_secs: 0.25,
            },
        );
        c.registrations.config_pushes = 1;
        c.udp_sessions = (5, 2);
        c.registrations.failed.insert("dup_edge_conn", 1);
        c.registrations.locations.insert((0, "SJC".into()), 0);
        c.registrations.locations.insert((0, "LAX".into()), 1);
        c.requests.connect.buckets = [1, 0, 2, 0, 0, 0, 0, 0, 1];
        c.requests.connect.sum_ms = 6050;
        c.requests.connect.errors = 3;
        c.flows.rejected = [4, 5];
        c.icmp_replies = 6;
        c.dns_udp = 7;
        let mut out = String::new();
        c.render(&mut out);
        assert!(
            out.contains("cloudflared_virtual_origins_dns_requests_total{protocol=\"udp\"} 7\n"),
            "{out}"
        );
        assert!(!out.contains("{protocol=\"tcp\"}"), "{out}");
        for line in [
            "# TYPE cloudflared_tunnel_tunnel_register_success counter\ncloudflared_tunnel_tunnel_register_success{rpcName=\"registerConnection\"} 2\n",
            "cloudflared_tunnel_tunnel_register_fail{error=\"dup_edge_conn\",rpcName=\"registerConnection\"} 1\n",
            "cloudflared_tunnel_server_locations{connection_id=\"0\",edge_location=\"LAX\"} 1\n",
            "cloudflared_tunnel_server_locations{connection_id=\"0\",edge_location=\"SJC\"} 0\n",
            "# TYPE cloudflared_proxy_connect_latency histogram\ncloudflared_proxy_connect_latency_bucket{le=\"1\"} 1\n",
            "cloudflared_proxy_connect_latency_bucket{le=\"25\"} 3\n",
            "cloudflared_proxy_connect_latency_bucket{le=\"5000\"} 3\ncloudflared_proxy_connect_latency_bucket{le=\"+Inf\"} 4\ncloudflared_proxy_connect_latency_sum 6050\ncloudflared_proxy_connect_latency_count 4\n",
            "cloudflared_proxy_connect_streams_errors 3\n",
            "cloudflared_icmp_total_replies 6\n",
            "flow_client_registrations_rate_limited_total{flow_type=\"tcp\"} 4\n",
            "flow_client_registrations_rate_limited_total{flow_type=\"udp\"} 5\n",
            "cloudflared_config_local_config_pushes 1\n",
            "cloudflared_udp_active_sessions 2\n",
            "cloudflared_udp_total_sessions 5\n",
            "# TYPE cloudflared_rpc_client_operations counter\ncloudflared_rpc_client_operations{handler=\"registration\",method=\"register_connection\"} 3\n",
            "cloudflared_rpc_client_failures{handler=\"registration\",method=\"register_connection\"} 1\n",
            "# TYPE cloudflared_rpc_client_latency_secs histogram\ncloudflared_rpc_client_latency_secs_bucket{handler=\"registration\",method=\"register_connection\",le=\"0.05\"} 1\n",
            "{handler=\"registration\",method=\"register_connection\",le=\"0.15000000000000002\"} 2\n",
            "{handler=\"registration\",method=\"register_connection\",le=\"4.050000000000001\"} 2\n",
            "{handler=\"registration\",method=\"register_connection\",le=\"+Inf\"} 3\ncloudflared_rpc_client_latency_secs_sum{handler=\"registration\",method=\"register_connection\"} 0.25\ncloudflared_rpc_client_latency_secs_count{handler=\"registration\",method=\"register_connection\"} 3\n",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
    }

    #[test]
    fn quic_families_without_connections_are_the_two_counters() {
        let mut out = String::new();
        quic(&mut out, &QuicClientStats::default());
        assert_eq!(
            out,
            "# HELP quic_client_total_connections Number of connections initiated\n# TYPE quic_client_total_connections counter\nquic_client_total_connections 0\n# HELP quic_client_closed_connections Number of connections that has been closed\n# TYPE quic_client_closed_connections counter\nquic_client_closed_connections 0\n# HELP quic_client_packet_too_big_dropped Count of packets received from origin that are too big to send to the edge and are dropped as a result\n# TYPE quic_client_packet_too_big_dropped counter\nquic_client_packet_too_big_dropped 0\n"
        );
    }
}
