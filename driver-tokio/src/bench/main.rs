//! `burrow-bench`: the tunnel against direct loopback, in one run.
//!
//! Starts `burrow edge` and `burrow tunnel run` (the `burrow` binary beside this one) as child
//! processes, runs HTTP, TCP and UDP origins in process, then measures each with the same
//! client code twice: straight to the origin, and through the edge's public listeners and the
//! tunnel. Prints a table with the ratio tunnel/direct and the daemons' memory. A part that
//! fails prints `n/a` and its reason; the rest still runs.
//!
//! `cargo run --release -p burrow-tokio --bin burrow-bench [-- --quick]`

mod client;
mod http;
mod origin;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};
use clap::Parser;

use client::Percentiles;

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
    /// HA connections of the connector.
    #[arg(long, default_value_t = 4)]
    ha_connections: u8,
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
    ha: u8,
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
            ha: a.ha_connections.max(1),
        }
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
    tunnel: Cell,
    note: String,
}

impl Row {
    fn new(metric: impl Into<String>, direct: Cell, tunnel: Cell) -> Self {
        Self {
            metric: metric.into(),
            direct,
            tunnel,
            note: String::new(),
        }
    }

    fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }

    fn cells(&self) -> [String; 5] {
        let ratio = match (&self.direct, &self.tunnel) {
            (Cell::Val(d), Cell::Val(t)) if *d != 0.0 => format!("{:.2}", t / d),
            (Cell::Failed(_), _) | (_, Cell::Failed(_)) => "n/a".into(),
            _ => "-".into(),
        };
        let mut note = self.note.clone();
        for (side, c) in [("direct", &self.direct), ("tunnel", &self.tunnel)] {
            if let Cell::Failed(e) = c {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                // One line per row: the reason's first line.
                note.push_str(&format!("{side}: {}", e.lines().next().unwrap_or("")));
            }
        }
        [
            self.metric.clone(),
            self.direct.text(),
            self.tunnel.text(),
            ratio,
            note,
        ]
    }
}

fn print_table(rows: &[Row]) {
    let head = ["metric", "direct", "tunnel", "tunnel/direct", "note"];
    let cells: Vec<[String; 5]> = rows.iter().map(Row::cells).collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate().take(4) {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 5]| {
        println!(
            "| {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} | {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
    };
    line(head);
    println!(
        "|{}|{}:|{}:|{}:|------",
        "-".repeat(w[0] + 2),
        "-".repeat(w[1] + 1),
        "-".repeat(w[2] + 1),
        "-".repeat(w[3] + 1)
    );
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
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

fn start_tunnel(p: &Plan, o: &Origins) -> Result<Tunnel, String> {
    let bin = testbed::burrow_beside_current_exe().map_err(|e| e.to_string())?;
    let bed = Testbed::create(&bin, "bench", "bench", &[HOST]).map_err(|e| e.to_string())?;
    let mut eo = EdgeOpts::loopback().map_err(|e| e.to_string())?;
    let tcp = testbed::free_tcp().map_err(|e| e.to_string())?;
    eo.tcp_maps.push(format!("{tcp}={}:{}", bed.name, o.tcp));
    let udp = if testbed::edge_has_flag(&bin, "--udp-map") {
        let udp = testbed::free_udp().map_err(|e| e.to_string())?;
        eo.udp_maps.push(format!("{udp}={}:{}", bed.name, o.udp));
        Ok(udp)
    } else {
        Err("this burrow edge has no --udp-map".to_owned())
    };
    let edge = bed.edge(&eo).map_err(|e| e.to_string())?;
    let metrics = testbed::free_tcp().map_err(|e| e.to_string())?;
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![
                (Some(HOST.into()), format!("http://{}", o.http)),
                (None, "http_status:404".into()),
            ],
            ha_connections: p.ha,
            extra: Vec::new(),
            config_extra: String::new(),
        })
        .map_err(|e| e.to_string())?;
    testbed::wait_ready(
        &mut connector,
        metrics,
        usize::from(p.ha),
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    Ok(Tunnel {
        connector,
        edge,
        _bed: bed,
        http: eo.http,
        tcp,
        udp,
    })
}

/// Runs `f` against the origin and, if the tunnel is up, through it.
fn both<T>(
    direct: SocketAddr,
    tunnel: &mut Result<Tunnel, String>,
    via: impl Fn(&Tunnel) -> Result<SocketAddr, String>,
    f: impl Fn(SocketAddr) -> Result<T, String>,
) -> (Result<T, String>, Result<T, String>) {
    let d = f(direct);
    let t = match tunnel {
        Ok(t) => t
            .alive()
            .and_then(|()| via(t))
            .and_then(&f)
            // A daemon that died mid-run is the better reason.
            .map_err(|e| t.alive().err().unwrap_or(e)),
        Err(e) => Err(e.clone()),
    };
    (d, t)
}

fn rtt_rows(
    name: &str,
    d: Result<Percentiles, String>,
    t: Result<Percentiles, String>,
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
            pick(&t, false),
        ),
        Row::new(
            format!("{name} round trip p99 us"),
            pick(&d, true),
            pick(&t, true),
        ),
    ]
}

/// A note such as "loss direct 0.1% tunnel 2.0%", naming only the sides that have a value.
fn sides<T>(what: &str, r: [&Result<T, String>; 2], f: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = ["direct", "tunnel"]
        .iter()
        .zip(r)
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

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores available ({cpu}); daemons, origins and clients share them")
}

fn main() -> ExitCode {
    let args = Args::parse();
    let p = Plan::new(&args);
    let nofile = testbed::raise_nofile();
    let origins = match (origin::http(), origin::tcp(), origin::udp()) {
        (Ok(http), Ok(tcp), Ok(udp)) => Origins { http, tcp, udp },
        (h, t, u) => {
            let e = [h.err(), t.err(), u.err()].into_iter().flatten().next();
            eprintln!("error: cannot start the origins: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("burrow-bench: starting burrow edge and burrow tunnel run ...");
    let mut tunnel = start_tunnel(&p, &origins);
    if let Err(e) = &tunnel {
        eprintln!("burrow-bench: no tunnel, direct figures only: {e}");
    }
    let mut rows = Vec::new();

    // Idle memory, right after registration.
    let (conn_idle, edge_idle) = match &tunnel {
        Ok(t) => {
            std::thread::sleep(Duration::from_millis(500));
            (rss(&t.connector), rss(&t.edge))
        }
        Err(e) => (Cell::Failed(e.clone()), Cell::Failed(e.clone())),
    };

    // Daemon CPU over the HTTP and TCP parts, per MB carried through the tunnel.
    let cpu = |t: &Result<Tunnel, String>| {
        t.as_ref()
            .ok()
            .and_then(|t| Some((t.connector.cpu_time().ok()?, t.edge.cpu_time().ok()?)))
    };
    let cpu_before = cpu(&tunnel);
    let mut tunnel_mb = 0.0;
    let carried =
        |r: &Result<f64, String>, bytes: u64| r.as_ref().map_or(0.0, |_| bytes as f64 / 1e6);
    let hb = p.http_bytes;
    let tb = p.tcp_bytes;
    let conns = p.conns;
    eprintln!("burrow-bench: HTTP ...");
    let (d, t) = both(
        origins.http,
        &mut tunnel,
        |t| Ok(t.http),
        |a| client::http_download(a, HOST, hb, conns),
    );
    tunnel_mb += carried(&t, hb);
    rows.push(Row::new("HTTP download MB/s", Cell::of(&d), Cell::of(&t)));
    let (d, t) = both(
        origins.http,
        &mut tunnel,
        |t| Ok(t.http),
        |a| client::http_upload(a, HOST, hb, conns),
    );
    tunnel_mb += carried(&t, hb);
    rows.push(Row::new("HTTP upload MB/s", Cell::of(&d), Cell::of(&t)));
    let (d, t) = both(
        origins.http,
        &mut tunnel,
        |t| Ok(t.http),
        |a| client::http_rtt(a, HOST, p.samples),
    );
    rows.extend(rtt_rows("HTTP request", d, t));

    eprintln!("burrow-bench: TCP ...");
    let (d, t) = both(
        origins.tcp,
        &mut tunnel,
        |t| Ok(t.tcp),
        |a| client::tcp_download(a, tb, conns),
    );
    tunnel_mb += carried(&t, tb);
    rows.push(Row::new("TCP download MB/s", Cell::of(&d), Cell::of(&t)));
    let (d, t) = both(
        origins.tcp,
        &mut tunnel,
        |t| Ok(t.tcp),
        |a| client::tcp_upload(a, tb, conns),
    );
    tunnel_mb += carried(&t, tb);
    rows.push(Row::new("TCP upload MB/s", Cell::of(&d), Cell::of(&t)));
    let (d, t) = both(
        origins.tcp,
        &mut tunnel,
        |t| Ok(t.tcp),
        |a| client::tcp_rtt(a, p.samples),
    );
    rows.extend(rtt_rows("TCP 64 B", d, t));

    let cpu_after = cpu(&tunnel);
    let cpu_rows = match (cpu_before, cpu_after) {
        (Some((c0, e0)), Some((c1, e1))) if tunnel_mb > 0.0 => {
            let per = |a: Duration, b: Duration| Cell::Val((b - a).as_secs_f64() * 1e3 / tunnel_mb);
            (per(c0, c1), per(e0, e1))
        }
        _ => {
            let e = || Cell::Failed("no CPU figures (no tunnel, or nothing carried)".into());
            (e(), e())
        }
    };
    eprintln!("burrow-bench: UDP ...");
    if let Ok(t) = &mut tunnel {
        // One probe first: when UDP does not pass at all, every UDP row says why at once.
        if let Ok(udp) = t.udp {
            if let Err(e) = client::udp_probe(udp) {
                t.udp = Err(format!("through the tunnel: {e}"));
            }
        }
    }
    let udp_via = |t: &Tunnel| t.udp.clone();
    let (d, t) = both(origins.udp, &mut tunnel, udp_via, |a| {
        client::udp_pps(a, p.udp_time, p.udp_flows, p.udp_window, p.udp_size)
    });
    let note = sides("loss", [&d, &t], |(_, l)| format!("{:.1}%", l * 100.0));
    rows.push(
        Row::new(
            format!("UDP {} B packets/s", p.udp_size),
            Cell::of(&d.map(|x| x.0)),
            Cell::of(&t.map(|x| x.0)),
        )
        .note(note),
    );
    let (d, t) = both(origins.udp, &mut tunnel, udp_via, |a| {
        client::udp_rtt(a, p.samples, p.udp_size)
    });
    let note = sides("lost", [&d, &t], |(_, l)| l.to_string());
    let mut udp_rows = rtt_rows(
        &format!("UDP {} B", p.udp_size),
        d.map(|x| x.0),
        t.map(|x| x.0),
    );
    udp_rows[1].note = note;
    rows.extend(udp_rows);

    // Memory: after the transfers, then with many UDP sessions open at once.
    let conn_after = match &tunnel {
        Ok(t) => rss(&t.connector),
        Err(e) => Cell::Failed(e.clone()),
    };
    let n = p.udp_sessions;
    eprintln!("burrow-bench: {n} UDP sessions ...");
    let direct_sessions =
        client::udp_sessions(origins.udp, n, 128, |_| ()).map(|(r, a, ())| (r, a));
    let (conn_busy, edge_busy, tunnel_sessions) = match &mut tunnel {
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
                        (Cell::Failed(e.clone()), Cell::Failed(e.clone()), Err(e))
                    }
                }
            }
            Err(e) => (Cell::Failed(e.clone()), Cell::Failed(e.clone()), Err(e)),
        },
        Err(e) => (
            Cell::Failed(e.clone()),
            Cell::Failed(e.clone()),
            Err(e.clone()),
        ),
    };
    let note = sides(
        "answered",
        [&direct_sessions, &tunnel_sessions],
        |(_, a)| format!("{a}/{n}"),
    );
    rows.push(
        Row::new(
            "UDP new sessions/s",
            Cell::of(&direct_sessions.map(|x| x.0)),
            Cell::of(&tunnel_sessions.as_ref().map(|x| x.0).map_err(Clone::clone)),
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
        .note(sides(
            "answered",
            [&Err(String::new()), &tunnel_sessions],
            |(_, a)| format!("{a}/{n}"),
        )),
    );
    let note = "HTTP and TCP parts; information";
    rows.push(Row::new("connector CPU ms per MB", na(), cpu_rows.0).note(note));
    rows.push(Row::new("edge CPU ms per MB", na(), cpu_rows.1).note(note));
    rows.push(Row::new("edge RSS idle MiB", na(), edge_idle).note("information"));
    rows.push(
        Row::new(format!("edge RSS {n} UDP sessions MiB"), na(), edge_busy).note("information"),
    );

    println!();
    println!(
        "burrow-bench{}: direct = client to origin on loopback; tunnel = client -> burrow edge -> QUIC ({} HA connections) -> burrow tunnel run -> origin",
        if args.quick { " --quick" } else { "" },
        p.ha
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
        Ok(l) => println!("machine: {}; open files limit {l}", machine()),
        Err(e) => println!("machine: {}; open files limit not raised: {e}", machine()),
    }
    println!();
    print_table(&rows);
    if tunnel.is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
