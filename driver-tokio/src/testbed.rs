//! A tunnel on loopback made of real processes: `burrow edge` (generated CA) and
//! `burrow tunnel run` as children of the caller, with a tunnel created by
//! `burrow edge tunnel create`. Used by `burrow-bench` and by integration tests.
//!
//! Children are killed when their [`Proc`] guard drops (on error and panic too) and, on Linux,
//! when the thread that spawned them dies, so an aborted run leaves no daemon behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// What goes wrong while setting up or watching the testbed.
#[derive(Debug, Error)]
pub enum TestbedError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A child process exited while it should be running.
    #[error("{name} exited ({status}); its log ends with:\n{log}")]
    Exited {
        /// Which child.
        name: &'static str,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr.
        log: String,
    },
    /// `burrow edge tunnel create` failed or printed no id.
    #[error("burrow edge tunnel create: {0}")]
    Create(String),
    /// A wait ran out of time.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// `/proc/<pid>/status` has no VmRSS line.
    #[error("no VmRSS for pid {0}")]
    NoRss(u32),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout discarded and stderr into `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self, TestbedError> {
        let err = std::fs::File::create(&log).map_err(io(format!("{}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it asks the
        // kernel to kill the child when the spawning thread goes away (a killed bench, say).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io(format!("spawn {name}")))?;
        Ok(Self { name, child, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> Result<u64, TestbedError> {
        rss_kib(self.pid())
    }

    /// CPU time used so far.
    pub fn cpu_time(&self) -> Result<Duration, TestbedError> {
        cpu_time(self.pid())
    }

    /// Waits up to `limit` for the child to exit on its own (after a signal, say).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, TestbedError> {
        let mut status = None;
        wait_for(limit, &format!("{} to exit", self.name), || {
            status = self
                .child
                .try_wait()
                .map_err(io(format!("wait for {}", self.name)))?;
            Ok(status.is_some())
        })?;
        status.ok_or_else(|| TestbedError::Timeout(limit, format!("{} to exit", self.name)))
    }

    /// Stops the child the graceful way (SIGTERM: a connector unregisters, so the edge stops
    /// routing to it) and waits up to `limit` for it to exit.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, TestbedError> {
        let pid = libc::pid_t::try_from(self.pid()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: kill has no memory effects; the pid is our own unreaped child's.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == -1 {
            return Err(io(format!("SIGTERM {}", self.name))(
                std::io::Error::last_os_error(),
            ));
        }
        self.wait_exit(limit)
    }

    /// Errors (with the tail of the log) if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), TestbedError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TestbedError::Exited {
                name: self.name,
                status,
                log: self.log_tail(2000),
            }),
            Err(e) => Err(io(format!("wait for {}", self.name))(e)),
        }
    }

    /// The last `max` bytes of the child's stderr.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// The child, for signals and waits.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start `burrow edge`.
#[derive(Debug, Clone)]
pub struct EdgeOpts {
    /// QUIC address for tunnels.
    pub quic: SocketAddr,
    /// Public HTTP address.
    pub http: SocketAddr,
    /// `--tcp-map LISTEN=TUNNEL:DEST` values.
    pub tcp_maps: Vec<String>,
    /// `--udp-map LISTEN=TUNNEL:DEST` values.
    pub udp_maps: Vec<String>,
    /// `--icmp-map LISTEN=TUNNEL` values.
    pub icmp_maps: Vec<String>,
    /// More `edge` flags, e.g. `--http-header-timeout 1s`.
    pub extra: Vec<String>,
}

impl EdgeOpts {
    /// Free loopback ports for QUIC and HTTP, no mappings.
    pub fn loopback() -> Result<Self, TestbedError> {
        Ok(Self {
            quic: free_udp()?,
            http: free_tcp()?,
            tcp_maps: Vec::new(),
            udp_maps: Vec::new(),
            icmp_maps: Vec::new(),
            extra: Vec::new(),
        })
    }
}

/// How to start `burrow tunnel run`.
#[derive(Debug, Clone)]
pub struct ConnectorOpts {
    /// The edge's QUIC address.
    pub edge: SocketAddr,
    /// Metrics and readiness address.
    pub metrics: SocketAddr,
    /// Ingress rules as (hostname, service); the last should have no hostname.
    pub ingress: Vec<(Option<String>, String)>,
    /// HA connections.
    pub ha_connections: u8,
    /// More `tunnel run` flags, e.g. `--icmpv4-src`.
    pub extra: Vec<String>,
    /// More config.yml text after the ingress rules, e.g. a `warp-routing:` block.
    pub config_extra: String,
}

/// A tunnel created in a fresh state directory, removed on drop.
pub struct Testbed {
    bin: PathBuf,
    dir: PathBuf,
    /// Tunnel name.
    pub name: String,
    /// Tunnel id.
    pub id: String,
}

impl Testbed {
    /// Creates tunnel `name` serving `hostnames` in a new directory under the temp dir, named
    /// after `label` and the process id (so `label` must be unique within a process).
    pub fn create(
        bin: &Path,
        label: &str,
        name: &str,
        hostnames: &[&str],
    ) -> Result<Self, TestbedError> {
        let dir = std::env::temp_dir().join(format!("burrow-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("{}", dir.display())))?;
        // From here on, drop cleans the directory up.
        let mut bed = Self {
            bin: bin.to_owned(),
            dir,
            name: name.to_owned(),
            id: String::new(),
        };
        let mut cmd = Command::new(bin);
        cmd.args(["edge", "--dir"])
            .arg(&bed.dir)
            .args(["tunnel", "create", name]);
        for h in hostnames {
            cmd.args(["--hostname", h]);
        }
        let out = cmd.output().map_err(io(format!("run {}", bin.display())))?;
        if !out.status.success() {
            return Err(TestbedError::Create(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        bed.id = stdout
            .lines()
            .find_map(|l| {
                l.rsplit_once(" with id ")
                    .map(|(_, id)| id.trim().to_owned())
            })
            .ok_or_else(|| TestbedError::Create(format!("no tunnel id in: {stdout}")))?;
        Ok(bed)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The edge's generated CA (exists once the edge started).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The tunnel's credentials file.
    pub fn credentials(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.id))
    }

    /// Starts `burrow edge` and waits until its HTTP listener accepts (so QUIC is bound too).
    pub fn edge(&self, o: &EdgeOpts) -> Result<Proc, TestbedError> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["edge", "--dir"])
            .arg(&self.dir)
            .args(["--listen", &o.quic.to_string()])
            .args(["--http", &o.http.to_string()])
            .args(["--loglevel", "warn"]);
        for m in &o.tcp_maps {
            cmd.args(["--tcp-map", m]);
        }
        for m in &o.udp_maps {
            cmd.args(["--udp-map", m]);
        }
        for m in &o.icmp_maps {
            cmd.args(["--icmp-map", m]);
        }
        cmd.args(&o.extra);
        let mut p = Proc::spawn("burrow edge", cmd, self.dir.join("edge.log"))?;
        wait_for(Duration::from_secs(20), "edge HTTP listener", || {
            p.check_alive()?;
            Ok(self.ca().exists() && TcpStream::connect(o.http).is_ok())
        })?;
        Ok(p)
    }

    /// Writes the connector's config.yml (tunnel, credentials, ingress rules, `config_extra`);
    /// burrow and cloudflared read the same file.
    pub fn write_config(&self, o: &ConnectorOpts) -> Result<PathBuf, TestbedError> {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut yaml = self.config_head();
        for (host, service) in &o.ingress {
            match host {
                Some(h) => yaml.push_str(&format!(
                    "  - hostname: {}\n    service: {}\n",
                    q(h),
                    q(service)
                )),
                None => yaml.push_str(&format!("  - service: {}\n", q(service))),
            }
        }
        yaml.push_str(&o.config_extra);
        self.write_yaml(&yaml)
    }

    /// config.yml's first lines: the tunnel, its credentials, and `ingress:`.
    fn config_head(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "tunnel: {}\ncredentials-file: {}\ningress:\n",
            q(&self.id),
            q(&self.credentials().to_string_lossy())
        )
    }

    fn write_yaml(&self, yaml: &str) -> Result<PathBuf, TestbedError> {
        let config = self.dir.join("config.yml");
        std::fs::write(&config, yaml).map_err(io(format!("{}", config.display())))?;
        Ok(config)
    }

    /// For rules [`ConnectorOpts`] cannot express (options on any rule): writes config.yml
    /// with `ingress` as the YAML under `ingress:` (top-level keys may follow it), starts
    /// `burrow tunnel run` with one connection to `edge` and `flags` before `run`, and waits
    /// until it registered. Returns the connector and its metrics address.
    pub fn connector_with_ingress(
        &self,
        edge: SocketAddr,
        ingress: &str,
        flags: &[&str],
    ) -> Result<(Proc, SocketAddr), TestbedError> {
        self.connector_with_ingress_from(&self.bin, edge, ingress, flags)
    }

    /// The same with another binary that takes `burrow tunnel run`'s flags (burrow-mio).
    pub fn connector_with_ingress_from(
        &self,
        bin: &Path,
        edge: SocketAddr,
        ingress: &str,
        flags: &[&str],
    ) -> Result<(Proc, SocketAddr), TestbedError> {
        let config = self.write_yaml(&(self.config_head() + ingress))?;
        let metrics = free_tcp()?;
        let mut cmd = Command::new(bin);
        cmd.args(["tunnel", "--config"])
            .arg(&config)
            .args(["--edge", &edge.to_string()])
            .arg("--cacert")
            .arg(self.ca())
            .args(["--metrics", &metrics.to_string(), "--ha-connections", "1"])
            .args(flags)
            .arg("run")
            .args(datagram_v3_unless_named(flags));
        let mut c = Proc::spawn("burrow tunnel run", cmd, self.dir.join("connector.log"))?;
        wait_ready(&mut c, metrics, 1, Duration::from_secs(30)).map_err(|e| match e {
            // An exit carries the log already; a timeout gets it here.
            TestbedError::Timeout(limit, what) => TestbedError::Timeout(
                limit,
                format!(
                    "{what}; the connector's log ends with:\n{}",
                    c.log_tail(4000)
                ),
            ),
            e => e,
        })?;
        Ok((c, metrics))
    }

    /// Starts `bin` (burrow, burrow-mio or cloudflared) as `tunnel run` with `run_flags` and no
    /// config file (`$HOME` is an empty directory, so none is found): one connection to
    /// `edge`, a 1 s grace period, this tunnel's credentials. Waits until it registered.
    pub fn connector_without_config(
        &self,
        bin: &Path,
        edge: SocketAddr,
        run_flags: &[&str],
    ) -> Result<Proc, TestbedError> {
        let home = self.dir.join("empty-home");
        std::fs::create_dir_all(&home).map_err(io(format!("{}", home.display())))?;
        let metrics = free_tcp()?;
        let mut cmd = Command::new(bin);
        cmd.env("HOME", &home)
            .args(["tunnel", "--edge", &edge.to_string(), "--cacert"])
            .arg(self.ca())
            .args(["--metrics", &metrics.to_string(), "--ha-connections", "1"])
            .args(["--grace-period", "1s", "run"])
            .args(datagram_v3_unless_named(run_flags))
            .args(run_flags)
            .arg("--credentials-file")
            .arg(self.credentials())
            .arg(&self.id);
        let mut c = Proc::spawn("tunnel run", cmd, self.dir.join("connector-flags.log"))?;
        wait_ready(&mut c, metrics, 1, Duration::from_secs(30))?;
        Ok(c)
    }

    /// Writes the connector's config.yml and starts `burrow tunnel run`.
    pub fn connector(&self, o: &ConnectorOpts) -> Result<Proc, TestbedError> {
        self.connector_from(&self.bin, o)
    }

    /// The same with another binary that takes `burrow tunnel run`'s flags (burrow-mio).
    pub fn connector_from(&self, bin: &Path, o: &ConnectorOpts) -> Result<Proc, TestbedError> {
        let config = self.write_config(o)?;
        let mut cmd = Command::new(bin);
        cmd.args(["tunnel", "--config"])
            .arg(&config)
            .args(["--edge", &o.edge.to_string()])
            .arg("--cacert")
            .arg(self.ca())
            .args(["--metrics", &o.metrics.to_string()])
            .args(["--ha-connections", &o.ha_connections.to_string()])
            .args(["--grace-period", "1s", "--loglevel", "warn", "run"])
            .args(datagram_v3_unless_named(&o.extra))
            .args(&o.extra)
            .arg("--credentials-file")
            .arg(self.credentials())
            .arg(&self.id);
        own_session(&mut cmd);
        Proc::spawn("burrow tunnel run", cmd, self.dir.join("connector.log"))
    }

    /// Writes the same config.yml and starts a stock `cloudflared` (at `bin`) as the connector,
    /// over QUIC with datagram v3 (or the `--protocol` and `--features` given in `o.extra`). cloudflared opens at
    /// most one connection per edge address, so when `o.edge` is unspecified (`0.0.0.0:port`,
    /// the edge listening on all addresses) it is given `127.0.0.1..=127.0.0.N` at that port for
    /// `N` HA connections; otherwise `o.edge`.
    pub fn cloudflared(&self, bin: &Path, o: &ConnectorOpts) -> Result<Proc, TestbedError> {
        let config = self.write_config(o)?;
        let mut cmd = Command::new(bin);
        cmd.args(["tunnel", "--config"]).arg(&config);
        if o.edge.ip().is_unspecified() {
            for k in 1..=o.ha_connections {
                cmd.args(["--edge", &format!("127.0.0.{k}:{}", o.edge.port())]);
            }
        } else {
            cmd.args(["--edge", &o.edge.to_string()]);
        }
        cmd.arg("--cacert")
            .arg(self.ca())
            .args(["--metrics", &o.metrics.to_string()])
            .args(["--ha-connections", &o.ha_connections.to_string()])
            .args([
                "--grace-period",
                "1s",
                "--no-autoupdate",
                "--loglevel",
                "warn",
            ])
            .arg("run");
        cmd.args(datagram_v3_unless_named(&o.extra));
        // QUIC unless the caller picks a protocol.
        if !o.extra.iter().any(|a| a == "--protocol") {
            cmd.args(["--protocol", "quic"]);
        }
        cmd.args(&o.extra);
        own_session(&mut cmd);
        Proc::spawn(
            "cloudflared tunnel run",
            cmd,
            self.dir.join("cloudflared.log"),
        )
    }
}

/// Starts the child in a session of its own, as a service manager starts a daemon. Under the
/// kernel's autogroup scheduling (on by default) a session's threads share one CPU weight,
/// spread over the CPUs by where its load is: a connector left in the bench's session (with
/// `--pin`, the bench's load on CPU 0) got a small weight on CPU 1 and waited there behind other
/// sessions' compilers. A single loop thread waited 1.2 s of 2 (`perf sched timehist`, UDP
/// part) and ran 0.43 s while a compiler ran 1.4 s; in its own session it waits as the others.
fn own_session(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; a child just
    // forked is no process group leader, so it succeeds.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 50 ms until it returns true, errors, or `limit` passes.
pub fn wait_for(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool, TestbedError>,
) -> Result<(), TestbedError> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(TestbedError::Timeout(limit, what.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `readyConnections` from the connector's `/ready`, if it answers.
pub fn ready_connections(metrics: SocketAddr) -> Option<usize> {
    let mut s = TcpStream::connect(metrics).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let v: serde_json::Value = serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()?;
    v["readyConnections"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// Waits until the connector reports `n` registered connections.
pub fn wait_ready(
    connector: &mut Proc,
    metrics: SocketAddr,
    n: usize,
    limit: Duration,
) -> Result<(), TestbedError> {
    wait_for(limit, &format!("{n} registered connections"), || {
        connector.check_alive()?;
        Ok(ready_connections(metrics) == Some(n))
    })
}

/// A loopback TCP address free a moment ago.
pub fn free_tcp() -> Result<SocketAddr, TestbedError> {
    pick_port(false)
}

/// A loopback UDP address free a moment ago, its port free on TCP too (`burrow edge --listen`
/// takes both).
pub fn free_udp() -> Result<SocketAddr, TestbedError> {
    pick_port(true)
}

/// Where ports are picked: the 16384 ports below Linux's ephemeral range
/// (`ip_local_port_range`), from which bind(0) and connect() take theirs. A port picked inside
/// it is free only until any socket on the machine is given it, which happened between the
/// pick and a daemon's bind (`burrow edge`: "Address already in use") while other tests ran;
/// below it, only another explicit pick can take it.
fn pick_range() -> std::ops::Range<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    low.saturating_sub(16384).max(1024)..low
}

/// A loopback port free on TCP (and on UDP if `udp`) a moment ago, at random in
/// [`pick_range`] (so concurrent test processes rarely try the same one) and never one this
/// process handed out before (its parallel tests do not share one either).
fn pick_port(udp: bool) -> Result<SocketAddr, TestbedError> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range = pick_range();
    let span = u32::from(range.end - range.start);
    let mut last = None;
    for _ in 0..256 {
        let port = if span == 0 {
            0
        } else {
            let r = getrandom::u32()
                .map_err(|e| io("pick a port at random")(std::io::Error::other(e.to_string())))?;
            range.start + u16::try_from(r % span).unwrap_or(0)
        };
        let tcp = match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => l,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let addr = tcp.local_addr().map_err(io("bind a free TCP port"))?;
        if udp {
            if let Err(e) = UdpSocket::bind(addr) {
                last = Some(e);
                continue;
            }
        }
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
    Err(io("find a free port")(last.unwrap_or_else(|| {
        std::io::Error::from(std::io::ErrorKind::AddrInUse)
    })))
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, TestbedError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(io(path))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(TestbedError::NoRss(pid))
}

/// User plus system CPU time process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration, TestbedError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(io(path.clone()))?;
    // Fields after the parenthesised command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match (f.as_slice(), u64::try_from(hz)) {
        ([user, system], Ok(hz)) if hz > 0 => {
            Ok(Duration::from_secs_f64((user + system) as f64 / hz as f64))
        }
        _ => Err(TestbedError::Io {
            what: format!("parse {path}"),
            source: std::io::ErrorKind::InvalidData.into(),
        }),
    }
}

/// Raises this process's soft open-file limit to the hard limit (children inherit it);
/// returns the new soft limit.
pub fn raise_nofile() -> Result<u64, TestbedError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io("getrlimit")(std::io::Error::last_os_error()));
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io("setrlimit")(std::io::Error::last_os_error()));
        }
    }
    Ok(lim.rlim_cur)
}

/// The `burrow` binary in the directory of the running executable (cargo puts every binary
/// of the package in one target directory; test executables sit one level down, in `deps`).
pub fn burrow_beside_current_exe() -> Result<PathBuf, TestbedError> {
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join("burrow"), dir.join("../burrow")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| TestbedError::Io {
            what: format!("find burrow next to {}", exe.display()),
            source: std::io::ErrorKind::NotFound.into(),
        })
}

/// `--features support_datagram_v3_2` unless `args` name `--features`: the test bed's
/// connectors (burrow, burrow-mio and cloudflared alike) speak datagram v3 unless a test
/// picks otherwise (`support_datagram_v2`), so no test depends on Cloudflare's feature record
/// (`cfd-features.argotunnel.com`), which would choose v2 here, where it cannot be read.
pub fn datagram_v3_unless_named<S: AsRef<str>>(args: &[S]) -> &'static [&'static str] {
    if args.iter().any(|a| a.as_ref() == "--features") {
        &[]
    } else {
        &["--features", "support_datagram_v3_2"]
    }
}

/// Whether `burrow edge --help` lists `flag` (features land in parallel; callers skip what
/// the binary does not have yet).
pub fn edge_has_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .args(["edge", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_below_the_ephemeral_range_free_and_never_twice() {
        let range = pick_range();
        let mut seen = std::collections::HashSet::new();
        for k in 0..200 {
            let a = if k % 2 == 0 { free_udp() } else { free_tcp() }.expect("a port");
            assert!(range.contains(&a.port()), "{a} outside {range:?}");
            assert!(seen.insert(a.port()), "{a} handed out twice");
            bound_soon(|| TcpListener::bind(a)).expect("free on TCP");
            if k % 2 == 0 {
                bound_soon(|| UdpSocket::bind(a)).expect("free on UDP");
            }
        }
    }

    /// Binds, retrying for up to a second: a test spawning a process meanwhile (the e2e tests
    /// compiled into the same binary) holds a copy of every socket of this process, the pick's
    /// included, from its fork to its exec.
    fn bound_soon<T>(bind: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
        let start = Instant::now();
        loop {
            match bind() {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && start.elapsed() < Duration::from_secs(1) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => return r,
            }
        }
    }
}
