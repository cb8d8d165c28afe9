//! `burrow-bench`: the tunnel against direct loopback, in one run.
//!
//! Starts `burrow edge` and `burrow tunnel run` (the `burrow` binary beside this one) as child
//! processes, runs HTTP, TCP and UDP origins in process, then measures each with the same
//! client code twice: straight to the origin, and through the edge's public listeners and the
//! tunnel. Prints a table with the ratio tunnel/direct and the daemons' memory. A part that
//! fails prints `n/a` and its reason; the rest still runs.
//!
//! `cargo run --release -p burrow-tokio --bin burrow-bench [-- --quick] [--pin] [--mio PATH] [--cloudflared PATH] [--http2]`

mod ceiling;
mod client;
mod http;
mod origin;
mod pin;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};
use clap::Parser;

use client::Percentiles;

/// Message size of the chatty-streams part: a small WebSocket or SSH message.
const CHATTY_MSG: usize = 1024;
/// Bytes each chatty stream carries before the memory is read: more than the largest read
/// buffer, so a buffer walked through by small reads has been touched whole.
const CHATTY_BYTES: usize = 192 * 1024;

/// The hostname the tunnel serves on the edge's HTTP listener.
const HOST: &str = "bench.burrow.test";

/// Measures burrow's tunnel against direct loopback: throughput, round trips, memory.
#[derive(Debug, Parser)]
#[command(name = "burrow-bench")]
struct Args {
    /// A short run with small sizes (a smoke test; the figures mean little).
    #[arg(long)]
    quick: bool,
    /// HTTP bytes moved each way, MiB [default: 256, quick 8].
    #[arg(long)]
    http_mib: Option<u64>,
    /// TCP bytes moved each way, MiB [default: 256, quick 8].
    #[arg(long)]
    tcp_mib: Option<u64>,
    /// Concurrent connections for the throughput runs [default: 4, quick 2].
    #[arg(long)]
    conns: Option<usize>,
    /// Round-trip samples per measurement [default: 2000, quick 100].
    #[arg(long)]
    samples: Option<usize>,
    /// Seconds of UDP packet rate per side [default: 3, quick 0.5].
    #[arg(long)]
    udp_secs: Option<f64>,
    /// UDP flows (client sockets) for the packet rate.
    #[arg(long, default_value_t = 2)]
    udp_flows: usize,
    /// UDP packets in flight per flow.
    #[arg(long, default_value_t = 32)]
    udp_window: usize,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 64)]
    udp_size: usize,
    /// UDP sessions held open at once for the memory figure [default: 10000, quick 500].
    #[arg(long)]
    udp_sessions: Option<usize>,
    /// TCP echo streams held open at once for the chatty-streams memory figure, each
    /// carrying 192 KiB in 1 KiB round trips [default: 300, quick 20].
    #[arg(long)]
    tcp_streams: Option<usize>,
    /// HA connections of the connector.
    #[arg(long, default_value_t = 4)]
    ha_connections: u8,
    /// Also measure burrow-mio (the binary at PATH, e.g. `target/release-small/burrow-mio`) as
    /// the connector, in extra columns.
    #[arg(long, value_name = "PATH")]
    mio: Option<std::path::PathBuf>,
    /// Also measure a stock cloudflared binary as the connector (through the same kind of
    /// burrow edge), in extra columns.
    #[arg(long)]
    cloudflared: Option<std::path::PathBuf>,
    /// Also measure each connector with `--protocol http2` (HTTP/2 over TLS on TCP to the
    /// edge's port), in extra columns `... h2`. HTTP/2 carries no UDP.
    #[arg(long)]
    http2: bool,
    /// Pin the connector alone on CPU 1 and everything else (edge, origins, clients) on CPU 0,
    /// so throughput and round trips measure the connector, not the contention for two cores.
    #[arg(long)]
    pin: bool,
    /// Run only these parts (comma-separated), e.g. `--only http-up,udp-pps` to profile one
    /// part at a time; the table then has only their rows.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// One measurement of the run, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The QUIC ceiling column.
    Ceiling,
    /// HTTP download.
    HttpDown,
    /// HTTP upload.
    HttpUp,
    /// HTTP round trips.
    HttpRtt,
    /// TCP download.
    TcpDown,
    /// TCP upload.
    TcpUp,
    /// TCP round trips.
    TcpRtt,
    /// UDP packet rate.
    UdpPps,
    /// UDP round trips.
    UdpRtt,
    /// UDP sessions (and the memory rows taken with them).
    Sessions,
    /// Many chatty TCP streams held open (the memory rows taken with them).
    Streams,
}

/// Settings after defaults.
struct Plan {
    http_bytes: u64,
    tcp_bytes: u64,
    conns: usize,
    samples: usize,
    udp_time: Duration,
    udp_flows: usize,
    udp_window: usize,
    udp_size: usize,
    udp_sessions: usize,
    tcp_streams: usize,
    ha: u8,
    /// Parts to run; empty runs all.
    only: Vec<Part>,
}

impl Plan {
    fn new(a: &Args) -> Self {
        let q = a.quick;
        let mib = |v: Option<u64>| v.unwrap_or(if q { 8 } else { 256 }).max(1) << 20;
        Self {
            http_bytes: mib(a.http_mib),
            tcp_bytes: mib(a.tcp_mib),
            conns: a.conns.unwrap_or(if q { 2 } else { 4 }).max(1),
            samples: a.samples.unwrap_or(if q { 100 } else { 2000 }).max(1),
            udp_time: Duration::from_secs_f64(
                a.udp_secs
                    .unwrap_or(if q { 0.5 } else { 3.0 })
                    .clamp(0.1, 600.0),
            ),
            udp_flows: a.udp_flows.max(1),
            udp_window: a.udp_window.max(1),
            udp_size: a.udp_size.clamp(1, 1400),
            udp_sessions: a
                .udp_sessions
                .unwrap_or(if q { 500 } else { 10_000 })
                .max(1),
            tcp_streams: a.tcp_streams.unwrap_or(if q { 20 } else { 300 }).max(1),
            ha: a.ha_connections.max(1),
            only: a.only.clone(),
        }
    }

    /// Whether `part` runs.
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// One table cell.
enum Cell {
    Val(f64),
    NotApplicable,
    Failed(String),
}

impl Cell {
    fn of(r: &Result<f64, String>) -> Self {
        match r {
            Ok(v) => Cell::Val(*v),
            Err(e) => Cell::Failed(e.clone()),
        }
    }

    fn text(&self) -> String {
        match self {
            Cell::Val(v) => num(*v),
            Cell::NotApplicable => "-".into(),
            Cell::Failed(_) => "n/a".into(),
        }
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Row {
    metric: String,
    direct: Cell,
    /// Raw QUIC, one stream, between two processes: throughput rows only.
    ceiling: Cell,
    /// One cell per connector measured, in column order.
    tunnels: Vec<Cell>,
    note: String,
}

impl Row {
    fn new(metric: impl Into<String>, direct: Cell, tunnels: Vec<Cell>) -> Self {
        Self {
            metric: metric.into(),
            direct,
            ceiling: Cell::NotApplicable,
            tunnels,
            note: String::new(),
        }
    }

    fn ceiling(mut self, c: &Result<f64, String>) -> Self {
        self.ceiling = Cell::of(c);
        self
    }

    fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }

    /// metric, direct, then each tunnel cell and its ratio to direct, then the note.
    fn cells(&self, names: &[&str]) -> Vec<String> {
        let mut out = vec![self.metric.clone(), self.direct.text(), self.ceiling.text()];
        let mut note = self.note.clone();
        let mut fail = |side: &str, e: &str| {
            if !note.is_empty() {
                note.push_str("; ");
            }
            // One line per row: the reason's first line.
            note.push_str(&format!("{side}: {}", e.lines().next().unwrap_or("")));
        };
        if let Cell::Failed(e) = &self.direct {
            fail("direct", e);
        }
        if let Cell::Failed(e) = &self.ceiling {
            fail("ceiling", e);
        }
        for (t, name) in self.tunnels.iter().zip(names) {
            let ratio = match (&self.direct, t) {
                (Cell::Val(d), Cell::Val(t)) if *d != 0.0 => format!("{:.2}", t / d),
                (Cell::Failed(_), _) | (_, Cell::Failed(_)) => "n/a".into(),
                _ => "-".into(),
            };
            if let Cell::Failed(e) = t {
                fail(name, e);
            }
            out.push(t.text());
            out.push(ratio);
        }
        out.push(note);
        out
    }
}

fn print_table(rows: &[Row], names: &[&str]) {
    let mut head = vec![
        "metric".to_owned(),
        "direct".to_owned(),
        "QUIC ceiling".to_owned(),
    ];
    for n in names {
        head.push((*n).to_owned());
        head.push(format!("{n}/direct"));
    }
    head.push("note".into());
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells(names)).collect();
    let last = head.len() - 1;
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for c in &cells {
        for (i, s) in c.iter().enumerate().take(last) {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut l = format!("| {:<w$} |", c[0], w = w[0]);
        for (i, s) in c.iter().enumerate().take(last).skip(1) {
            l.push_str(&format!(" {s:>w$} |", w = w[i]));
        }
        println!("{l} {}", c[last]);
    };
    line(&head);
    let mut rule = format!("|{}|", "-".repeat(w[0] + 2));
    for width in w.iter().take(last).skip(1) {
        rule.push_str(&format!("{}:|", "-".repeat(width + 1)));
    }
    println!("{rule}------");
    for c in &cells {
        line(c);
    }
}

/// The running tunnel: children and the public addresses.
struct Tunnel {
    // Field order is drop order: children die before their state directory goes.
    connector: Proc,
    edge: Proc,
    _bed: Testbed,
    http: SocketAddr,
    tcp: SocketAddr,
    udp: Result<SocketAddr, String>,
}

impl Tunnel {
    /// Errors if a daemon has died (so a failure says so rather than "connection refused").
    fn alive(&mut self) -> Result<(), String> {
        self.edge.check_alive().map_err(|e| e.to_string())?;
        self.connector.check_alive().map_err(|e| e.to_string())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Origins {
    http: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
}

/// Which program connects the tunnel.
#[derive(Clone, Copy)]
enum Connector<'a> {
    Burrow,
    /// burrow-mio, the single-threaded connector.
    Mio(&'a std::path::Path),
    /// A stock cloudflared binary.
    Cloudflared(&'a std::path::Path),
}

fn start_tunnel(
    p: &Plan,
    o: &Origins,
    who: Connector,
    http2: bool,
    pin: bool,
) -> Result<Tunnel, String> {
    let bin = testbed::burrow_beside_current_exe().map_err(|e| e.to_string())?;
    let label = match (who, http2) {
        (Connector::Burrow, false) => "bench",
        (Connector::Mio(_), false) => "bench-mio",
        (Connector::Cloudflared(_), false) => "bench-cloudflared",
        (Connector::Burrow, true) => "bench-h2",
        (Connector::Mio(_), true) => "bench-mio-h2",
        (Connector::Cloudflared(_), true) => "bench-cloudflared-h2",
    };
    let bed = Testbed::create(&bin, label, "bench", &[HOST]).map_err(|e| e.to_string())?;
    let mut eo = EdgeOpts::loopback().map_err(|e| e.to_string())?;
    if let Connector::Cloudflared(_) = who {
        // cloudflared opens one connection per edge address: it is given 127.0.0.1..=N.
        eo.quic.set_ip(std::net::Ipv4Addr::UNSPECIFIED.into());
    }
    let tcp = testbed::free_tcp().map_err(|e| e.to_string())?;
    eo.tcp_maps.push(format!("{tcp}={}:{}", bed.name, o.tcp));
    let udp = if http2 {
        Err("HTTP/2 carries no UDP".to_owned())
    } else if testbed::edge_has_flag(&bin, "--udp-map") {
        let udp = testbed::free_udp().map_err(|e| e.to_string())?;
        eo.udp_maps.push(format!("{udp}={}:{}", bed.name, o.udp));
        Ok(udp)
    } else {
        Err("this burrow edge has no --udp-map".to_owned())
    };
    let edge = bed.edge(&eo).map_err(|e| e.to_string())?;
    let metrics = testbed::free_tcp().map_err(|e| e.to_string())?;
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics,
        ingress: vec![
            (Some(HOST.into()), format!("http://{}", o.http)),
            (None, "http_status:404".into()),
        ],
        ha_connections: p.ha,
        extra: if http2 {
            vec!["--protocol".into(), "http2".into()]
        } else {
            Vec::new()
        },
        config_extra: String::new(),
    };
    let mut connector = match who {
        Connector::Burrow => bed.connector(&co),
        Connector::Mio(path) => bed.connector_from(path, &co),
        Connector::Cloudflared(path) => bed.cloudflared(path, &co),
    }
    .map_err(|e| e.to_string())?;
    testbed::wait_ready(
        &mut connector,
        metrics,
        usize::from(p.ha),
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    if pin {
        pin::connector(connector.pid()).map_err(|e| format!("pin the connector: {e}"))?;
    }
    Ok(Tunnel {
        connector,
        edge,
        _bed: bed,
        http: eo.http,
        tcp,
        udp,
    })
}

/// What CPUs 0 and 1 did while each measurement ran, by the address it ran against.
#[derive(Default)]
struct CpuLog(RefCell<Vec<(SocketAddr, pin::CpuTicks)>>);

impl CpuLog {
    /// `f`, logging the CPUs' ticks over each run.
    fn watch<'a, T>(
        &'a self,
        f: impl Fn(SocketAddr) -> Result<T, String> + 'a,
    ) -> impl Fn(SocketAddr) -> Result<T, String> + 'a {
        move |a| {
            let before = pin::CpuTicks::now();
            let r = f(a);
            if let (Some(before), Some(after)) = (before, pin::CpuTicks::now()) {
                self.0.borrow_mut().push((a, after.since(&before)));
            }
            r
        }
    }

    /// How busy CPU `cpu` was over the runs against any of `addrs`.
    fn busy(&self, addrs: &[SocketAddr], cpu: usize) -> Cell {
        self.0
            .borrow()
            .iter()
            .filter(|(a, _)| addrs.contains(a))
            .fold(pin::CpuTicks::default(), |sum, (_, t)| sum.plus(t))
            .busy_percent(cpu)
            .map_or_else(|| Cell::Failed("not measured".into()), Cell::Val)
    }
}

/// Runs `f` against the origin and through each tunnel that is up.
fn each<T>(
    direct: SocketAddr,
    tunnels: &mut [Result<Tunnel, String>],
    via: impl Fn(&Tunnel) -> Result<SocketAddr, String>,
    f: impl Fn(SocketAddr) -> Result<T, String>,
) -> (Result<T, String>, Vec<Result<T, String>>) {
    let d = f(direct);
    let t = tunnels
        .iter_mut()
        .map(|tunnel| match tunnel {
            Ok(t) => t
                .alive()
                .and_then(|()| via(t))
                .and_then(&f)
                // A daemon that died mid-run is the better reason.
                .map_err(|e| t.alive().err().unwrap_or(e)),
            Err(e) => Err(e.clone()),
        })
        .collect();
    (d, t)
}

/// One cell per tunnel from `results`, through `f`.
fn cells<T>(results: &[Result<T, String>], f: impl Fn(&T) -> f64) -> Vec<Cell> {
    results
        .iter()
        .map(|r| Cell::of(&r.as_ref().map(&f).map_err(Clone::clone)))
        .collect()
}

fn rtt_rows(
    name: &str,
    d: Result<Percentiles, String>,
    t: Vec<Result<Percentiles, String>>,
) -> [Row; 2] {
    let pick = |r: &Result<Percentiles, String>, p99: bool| {
        Cell::of(
            &r.as_ref()
                .map(|x| if p99 { x.p99 } else { x.p50 })
                .map_err(Clone::clone),
        )
    };
    [
        Row::new(
            format!("{name} round trip p50 us"),
            pick(&d, false),
            t.iter().map(|r| pick(r, false)).collect(),
        ),
        Row::new(
            format!("{name} round trip p99 us"),
            pick(&d, true),
            t.iter().map(|r| pick(r, true)).collect(),
        ),
    ]
}

/// A note such as "loss direct 0.1% burrow 2.0%", naming only the sides that have a value.
fn sides<T>(
    what: &str,
    names: &[&str],
    d: Option<&Result<T, String>>,
    t: &[Result<T, String>],
    f: impl Fn(&T) -> String,
) -> String {
    let direct = d.map(|d| ("direct", d));
    let parts: Vec<String> = direct
        .into_iter()
        .chain(names.iter().copied().zip(t))
        .filter_map(|(side, r)| r.as_ref().ok().map(|v| format!("{side} {}", f(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{what} {}", parts.join(" "))
    }
}

fn rss(p: &Proc) -> Cell {
    Cell::of(&p.rss_kib().map(mib).map_err(|e| e.to_string()))
}

fn machine(pin: bool) -> String {
    // Online CPUs, not this thread's affinity mask (which `--pin` narrowed to one).
    // SAFETY: sysconf reads a system constant.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let layout = if pin {
        format!(
            "pinned: the connector alone on CPU {}, edge, origins and clients on CPU 0",
            pin::CONNECTOR_CPU
        )
    } else {
        "daemons, origins and clients share them".to_owned()
    };
    // Every TCP hop here is loopback, and a pacing congestion control (BBR) moves the bulk
    // rows by a fifth, uploads and downloads opposite ways (README: "The box's TCP congestion
    // control").
    let tcp_cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cores} cores available ({cpu}); {layout}; TCP congestion control {tcp_cc}")
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(ceiling::PEER_FLAG) {
        return match ceiling::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ceiling peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let p = Plan::new(&args);
    if args.pin {
        if let Err(e) = pin::rest_on_cpu0() {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let nofile = testbed::raise_nofile();
    let origins = match (origin::http(), origin::tcp(), origin::udp()) {
        (Ok(http), Ok(tcp), Ok(udp)) => Origins { http, tcp, udp },
        (h, t, u) => {
            let e = [h.err(), t.err(), u.err()].into_iter().flatten().next();
            eprintln!("error: cannot start the origins: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    let mut who = vec![(Connector::Burrow, false)];
    let mut names = vec!["burrow"];
    if let Some(path) = &args.mio {
        who.push((Connector::Mio(path), false));
        names.push("burrow-mio");
    }
    if let Some(path) = &args.cloudflared {
        who.push((Connector::Cloudflared(path), false));
        names.push("cloudflared");
    }
    if args.http2 {
        who.push((Connector::Burrow, true));
        names.push("burrow h2");
        if let Some(path) = &args.mio {
            who.push((Connector::Mio(path), true));
            names.push("burrow-mio h2");
        }
        if let Some(path) = &args.cloudflared {
            who.push((Connector::Cloudflared(path), true));
            names.push("cloudflared h2");
        }
    }
    let mut tunnels: Vec<Result<Tunnel, String>> = Vec::new();
    for ((w, http2), name) in who.iter().zip(&names) {
        eprintln!("burrow-bench: starting burrow edge and {name} as the connector ...");
        let t = start_tunnel(&p, &origins, *w, *http2, args.pin);
        if let Err(e) = &t {
            eprintln!("burrow-bench: no {name} tunnel: {e}");
        }
        tunnels.push(t);
    }
    let mut rows = Vec::new();
    let failed = |e: &String| Cell::Failed(e.clone());

    // Idle memory, right after registration.
    std::thread::sleep(Duration::from_millis(500));
    let conn_idle: Vec<Cell> = tunnels
        .iter()
        .map(|t| t.as_ref().map_or_else(failed, |t| rss(&t.connector)))
        .collect();
    let edge_idle: Vec<Cell> = tunnels
        .iter()
        .map(|t| t.as_ref().map_or_else(failed, |t| rss(&t.edge)))
        .collect();

    // Daemon CPU over the HTTP and TCP parts, per MB carried through each tunnel.
    let cpu = |t: &Result<Tunnel, String>| {
        t.as_ref()
            .ok()
            .and_then(|t| Some((t.connector.cpu_time().ok()?, t.edge.cpu_time().ok()?)))
    };
    let cpu_before: Vec<_> = tunnels.iter().map(cpu).collect();
    let mut tunnel_mb = vec![0.0; tunnels.len()];
    let mut carried = |rs: &[Result<f64, String>], bytes: u64| {
        for (mb, r) in tunnel_mb.iter_mut().zip(rs) {
            *mb += r.as_ref().map_or(0.0, |_| bytes as f64 / 1e6);
        }
    };
    let hb = p.http_bytes;
    let tb = p.tcp_bytes;
    let conns = p.conns;
    let id = |x: &f64| *x;
    let (bulk_cpus, udp_cpus) = (CpuLog::default(), CpuLog::default());
    eprintln!("burrow-bench: QUIC ceiling ...");
    let (ceil_down, ceil_up) = if !p.runs(Part::Ceiling) {
        let skipped = || Err("not in --only".to_owned());
        (skipped(), skipped())
    } else {
        match ceiling::Peer::start(args.pin) {
            Ok(peer) => (peer.measure(false, hb), peer.measure(true, hb)),
            Err(e) => (Err(e.clone()), Err(e)),
        }
    };
    eprintln!("burrow-bench: HTTP ...");
    if p.runs(Part::HttpDown) {
        let (d, t) = each(
            origins.http,
            &mut tunnels,
            |t| Ok(t.http),
            bulk_cpus.watch(|a| client::http_download(a, HOST, hb, conns)),
        );
        carried(&t, hb);
        rows.push(Row::new("HTTP download MB/s", Cell::of(&d), cells(&t, id)).ceiling(&ceil_down));
    }
    if p.runs(Part::HttpUp) {
        let (d, t) = each(
            origins.http,
            &mut tunnels,
            |t| Ok(t.http),
            bulk_cpus.watch(|a| client::http_upload(a, HOST, hb, conns)),
        );
        carried(&t, hb);
        rows.push(Row::new("HTTP upload MB/s", Cell::of(&d), cells(&t, id)).ceiling(&ceil_up));
    }
    if p.runs(Part::HttpRtt) {
        let (d, t) = each(
            origins.http,
            &mut tunnels,
            |t| Ok(t.http),
            |a| client::http_rtt(a, HOST, p.samples),
        );
        rows.extend(rtt_rows("HTTP request", d, t));
    }

    eprintln!("burrow-bench: TCP ...");
    if p.runs(Part::TcpDown) {
        let (d, t) = each(
            origins.tcp,
            &mut tunnels,
            |t| Ok(t.tcp),
            bulk_cpus.watch(|a| client::tcp_download(a, tb, conns)),
        );
        carried(&t, tb);
        rows.push(Row::new("TCP download MB/s", Cell::of(&d), cells(&t, id)).ceiling(&ceil_down));
    }
    if p.runs(Part::TcpUp) {
        let (d, t) = each(
            origins.tcp,
            &mut tunnels,
            |t| Ok(t.tcp),
            bulk_cpus.watch(|a| client::tcp_upload(a, tb, conns)),
        );
        carried(&t, tb);
        rows.push(Row::new("TCP upload MB/s", Cell::of(&d), cells(&t, id)).ceiling(&ceil_up));
    }
    if p.runs(Part::TcpRtt) {
        let (d, t) = each(
            origins.tcp,
            &mut tunnels,
            |t| Ok(t.tcp),
            |a| client::tcp_rtt(a, p.samples),
        );
        rows.extend(rtt_rows("TCP 64 B", d, t));
    }

    let cpu_after: Vec<_> = tunnels.iter().map(cpu).collect();
    let mut conn_cpu = Vec::new();
    let mut edge_cpu = Vec::new();
    for ((before, after), mb) in cpu_before.iter().zip(&cpu_after).zip(&tunnel_mb) {
        match (before, after) {
            (Some((c0, e0)), Some((c1, e1))) if *mb > 0.0 => {
                let per =
                    |a: &Duration, b: &Duration| Cell::Val((*b - *a).as_secs_f64() * 1e3 / mb);
                conn_cpu.push(per(c0, c1));
                edge_cpu.push(per(e0, e1));
            }
            _ => {
                let e = || Cell::Failed("no CPU figures (no tunnel, or nothing carried)".into());
                conn_cpu.push(e());
                edge_cpu.push(e());
            }
        }
    }
    eprintln!("burrow-bench: UDP ...");
    for t in tunnels.iter_mut().flatten() {
        // One probe first: when UDP does not pass at all, every UDP row says why at once.
        if let Ok(udp) = t.udp {
            if let Err(e) = client::udp_probe(udp) {
                t.udp = Err(format!("through the tunnel: {e}"));
            }
        }
    }
    let udp_via = |t: &Tunnel| t.udp.clone();
    let (mut conn_echo_cpu, mut edge_echo_cpu) = (Vec::new(), Vec::new());
    if p.runs(Part::UdpPps) {
        let cpu_before: Vec<_> = tunnels.iter().map(cpu).collect();
        let (d, t) = each(
            origins.udp,
            &mut tunnels,
            udp_via,
            udp_cpus
                .watch(|a| client::udp_pps(a, p.udp_time, p.udp_flows, p.udp_window, p.udp_size)),
        );
        let cpu_after = tunnels.iter().map(cpu);
        for ((before, after), r) in cpu_before.iter().zip(cpu_after).zip(&t) {
            match (before, after, r) {
                (Some((c0, e0)), Some((c1, e1)), Ok((_, _, echoes))) if *echoes > 0 => {
                    let per = |a: &Duration, b: &Duration| {
                        Cell::Val((*b - *a).as_secs_f64() * 1e6 / *echoes as f64)
                    };
                    conn_echo_cpu.push(per(c0, &c1));
                    edge_echo_cpu.push(per(e0, &e1));
                }
                _ => {
                    let e = || Cell::Failed("no CPU figures (no tunnel, or no echo)".into());
                    conn_echo_cpu.push(e());
                    edge_echo_cpu.push(e());
                }
            }
        }
        let note = sides("loss", &names, Some(&d), &t, |(_, l, _)| {
            format!("{:.1}%", l * 100.0)
        });
        rows.push(
            Row::new(
                format!("UDP {} B packets/s", p.udp_size),
                Cell::of(&d.map(|x| x.0)),
                cells(&t, |x| x.0),
            )
            .note(note),
        );
    }
    if p.runs(Part::UdpRtt) {
        let (d, t) = each(origins.udp, &mut tunnels, udp_via, |a| {
            client::udp_rtt(a, p.samples, p.udp_size)
        });
        let note = sides("lost", &names, Some(&d), &t, |(_, l)| l.to_string());
        let mut udp_rows = rtt_rows(
            &format!("UDP {} B", p.udp_size),
            d.map(|x| x.0),
            t.into_iter().map(|r| r.map(|x| x.0)).collect(),
        );
        udp_rows[1].note = note;
        rows.extend(udp_rows);
    }

    // Memory: after the transfers, then with many UDP sessions open at once.
    let conn_after: Vec<Cell> = tunnels
        .iter()
        .map(|t| t.as_ref().map_or_else(failed, |t| rss(&t.connector)))
        .collect();
    // Memory with many chatty TCP streams open and idle: what each stream keeps.
    let streams = p.tcp_streams;
    let (conn_streams, edge_streams): (Vec<Cell>, Vec<Cell>) = tunnels
        .iter_mut()
        .map(|t| {
            let t = match t {
                Ok(t) if p.runs(Part::Streams) => t,
                Ok(_) => {
                    let e = "not in --only".to_owned();
                    return (failed(&e), failed(&e));
                }
                Err(e) => return (failed(e), failed(e)),
            };
            eprintln!("burrow-bench: {streams} chatty TCP streams ...");
            let r = t.alive().and_then(|()| {
                client::chatty_streams(t.tcp, streams, CHATTY_MSG, CHATTY_BYTES, || {
                    std::thread::sleep(Duration::from_millis(500));
                    (rss(&t.connector), rss(&t.edge))
                })
            });
            r.unwrap_or_else(|e| {
                let e = t.alive().err().unwrap_or(e);
                (failed(&e), failed(&e))
            })
        })
        .unzip();

    let n = p.udp_sessions;
    eprintln!("burrow-bench: {n} UDP sessions ...");
    let skip_sessions = !p.runs(Part::Sessions);
    let direct_sessions = if skip_sessions {
        Err("not in --only".to_owned())
    } else {
        client::udp_sessions(origins.udp, n, 128, |_| ()).map(|(r, a, ())| (r, a))
    };
    let mut conn_busy = Vec::new();
    let mut edge_busy = Vec::new();
    let mut tunnel_sessions = Vec::new();
    for tunnel in &mut tunnels {
        let (c, e, s) = match tunnel {
            Ok(_) if skip_sessions => {
                let e = "not in --only".to_owned();
                (failed(&e), failed(&e), Err(e))
            }
            Ok(t) => match t.alive().and_then(|()| t.udp.clone()) {
                Ok(udp) => {
                    let r = client::udp_sessions(udp, n, 128, |_| {
                        // Let the daemons settle before reading their memory.
                        std::thread::sleep(Duration::from_millis(500));
                        (rss(&t.connector), rss(&t.edge))
                    });
                    match r {
                        Ok((rate, answered, (c, e))) => (c, e, Ok((rate, answered))),
                        Err(e) => {
                            let e = t.alive().err().unwrap_or(e);
                            (failed(&e), failed(&e), Err(e))
                        }
                    }
                }
                Err(e) => (failed(&e), failed(&e), Err(e)),
            },
            Err(e) => (failed(e), failed(e), Err(e.clone())),
        };
        conn_busy.push(c);
        edge_busy.push(e);
        tunnel_sessions.push(s);
        if let Ok(t) = tunnel {
            // Its figures are taken. A connector keeps its sessions' sockets until they idle
            // out, and each holds an ephemeral port: stopped now, the next connector's sessions
            // get the whole port range (two connectors' 10k sessions plus the clients' 10k do
            // not fit in Linux's default 28k ports, and the second would fail to open some).
            for p in [&mut t.connector, &mut t.edge] {
                let _ = p.child().kill();
                let _ = p.child().wait();
            }
        }
    }
    let answered = |(_, a): &(f64, usize)| format!("{a}/{n}");
    let note = sides(
        "answered",
        &names,
        Some(&direct_sessions),
        &tunnel_sessions,
        answered,
    );
    rows.push(
        Row::new(
            "UDP new sessions/s",
            Cell::of(&direct_sessions.map(|x| x.0)),
            cells(&tunnel_sessions, |x| x.0),
        )
        .note(note),
    );
    let na = || Cell::NotApplicable;
    rows.push(Row::new("connector RSS idle MiB", na(), conn_idle).note("after registration"));
    rows.push(Row::new(
        "connector RSS after transfers MiB",
        na(),
        conn_after,
    ));
    rows.push(
        Row::new(
            format!("connector RSS {n} UDP sessions MiB"),
            na(),
            conn_busy,
        )
        .note(sides("answered", &names, None, &tunnel_sessions, answered)),
    );
    let chatty = format!(
        "{streams} TCP streams open, each after {} KiB in {CHATTY_MSG} B round trips",
        CHATTY_BYTES >> 10
    );
    rows.push(
        Row::new(
            format!("connector RSS {streams} chatty TCP streams MiB"),
            na(),
            conn_streams,
        )
        .note(chatty.clone()),
    );
    let note = "HTTP and TCP parts";
    rows.push(Row::new("connector CPU ms per MB", na(), conn_cpu).note(note));
    rows.push(Row::new("edge CPU ms per MB", na(), edge_cpu).note(note));
    if p.runs(Part::UdpPps) {
        let note = "UDP packet rate; an echo is a datagram each way";
        rows.push(Row::new("connector CPU us per UDP echo", na(), conn_echo_cpu).note(note));
        rows.push(Row::new("edge CPU us per UDP echo", na(), edge_echo_cpu).note(note));
    }
    if args.pin {
        let mut busy_rows =
            |log: &CpuLog, ran: bool, what: &str, addrs: fn(&Tunnel) -> Vec<SocketAddr>| {
                for (cpu, who) in [(0, "edge, origins and clients"), (1, "the connector alone")] {
                    let cells = tunnels
                        .iter()
                        .map(|t| match t {
                            Err(e) => failed(e),
                            Ok(_) if !ran => Cell::Failed("not in --only".into()),
                            Ok(t) => log.busy(&addrs(t), cpu),
                        })
                        .collect();
                    rows.push(Row::new(format!("CPU {cpu} busy %, {what}"), na(), cells).note(who));
                }
            };
        let bulk = [Part::HttpDown, Part::HttpUp, Part::TcpDown, Part::TcpUp];
        let ran_bulk = bulk.into_iter().any(|part| p.runs(part));
        busy_rows(&bulk_cpus, ran_bulk, "HTTP and TCP throughput", |t| {
            vec![t.http, t.tcp]
        });
        busy_rows(&udp_cpus, p.runs(Part::UdpPps), "UDP packet rate", |t| {
            t.udp.iter().copied().collect()
        });
    }
    rows.push(Row::new("edge RSS idle MiB", na(), edge_idle).note("the burrow edge"));
    rows.push(
        Row::new(format!("edge RSS {n} UDP sessions MiB"), na(), edge_busy).note("the burrow edge"),
    );
    rows.push(
        Row::new(
            format!("edge RSS {streams} chatty TCP streams MiB"),
            na(),
            edge_streams,
        )
        .note(format!("the burrow edge; {chatty}")),
    );

    println!();
    println!(
        "burrow-bench{}: direct = client to origin on loopback; {} = client -> burrow edge -> QUIC ({} HA connections) -> that connector -> origin{}",
        if args.quick { " --quick" } else { "" },
        names.join(", "),
        p.ha,
        if args.http2 {
            "; ... h2: over HTTP/2 (TLS on TCP) instead of QUIC"
        } else {
            ""
        }
    );
    println!(
        "HTTP {} MiB and TCP {} MiB each way over {} connections; {} round-trip samples; UDP {:?} x {} flows x window {}; {} sessions",
        p.http_bytes >> 20,
        p.tcp_bytes >> 20,
        p.conns,
        p.samples,
        p.udp_time,
        p.udp_flows,
        p.udp_window,
        n
    );
    match nofile {
        Ok(l) => println!("machine: {}; open files limit {l}", machine(args.pin)),
        Err(e) => println!(
            "machine: {}; open files limit not raised: {e}",
            machine(args.pin)
        ),
    }
    println!();
    print_table(&rows, &names);
    if tunnels.iter().any(Result::is_err) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
