//! `burrow tunnel run` settings from config.yml, as cloudflared reads them: every flag is also a
//! top-level key of the file, and a flag or its environment variable wins over the file, which
//! wins over the default. Real processes: the daemon against `burrow edge` on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};

mod common;
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// A TCP stream through `map` that echoed once, kept open so it holds its flow.
fn echo_stream(map: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(map).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"ping").ok()?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).ok()?;
    (&buf == b"ping").then_some(s)
}

/// `burrow tunnel --config <config> <args>` with only the flags given here.
fn connector(bed: &Testbed, config: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--config"]).arg(config).args(args);
    Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector")
}

/// The file sets edge, cacert, metrics, two HA connections, one flow at most (over
/// warp-routing's 5), grace period and log level, next to keys burrow does not act on; the
/// command line is `tunnel --config FILE run`. Then `--ha-connections 1 run
/// --max-active-flows 2` on the command line win over the same file.
#[test]
fn connector_settings_from_config_file_and_flags_over_it() {
    let bed = Testbed::create(Path::new(BIN), "e2e-config", "app", &["app.test"]).expect("tunnel");
    let origin = tcp_echo();
    let tcp_map = testbed::free_tcp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_map}=app:{origin}")];
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config: PathBuf = bed
        .write_config(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![(None, "http_status:404".into())],
            ha_connections: 0,
            extra: Vec::new(),
            config_extra: format!(
                "edge:\n  - {}\ncacert: {}\nmetrics: {}\nha-connections: 2\nmax-active-flows: 1\n\
                 grace-period: 1s\nloglevel: debug\nwarp-routing:\n  maxActiveFlows: 5\n\
                 no-autoupdate: true\nautoupdate-freq: 24h\nretries: 3\nlogfile: /dev/null\n",
                q(&eo.quic.to_string()),
                q(&bed.ca().to_string_lossy()),
                q(&metrics.to_string()),
            ),
        })
        .expect("config");

    {
        let mut c = connector(&bed, &config, &["run"]);
        testbed::wait_ready(&mut c, metrics, 2, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
        let first = echo_stream(tcp_map).expect("the first TCP flow is served");
        assert!(
            echo_stream(tcp_map).is_none(),
            "max-active-flows: 1 from the file refuses a second flow"
        );
        drop(first);
        let log = c.log_tail(20_000);
        assert!(
            log.contains("ignored")
                && log.contains("autoupdate-freq")
                && log.contains("no-autoupdate"),
            "loglevel: debug from the file, and the keys burrow does not act on are named:\n{log}"
        );
        // A graceful stop, so the edge drops this connector's connections at once rather
        // than routing the next flows to them until they time out.
        c.terminate(Duration::from_secs(10)).expect("graceful exit");
    }

    let mut c = connector(
        &bed,
        &config,
        &["--ha-connections", "1", "run", "--max-active-flows", "2"],
    );
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let _first = echo_stream(tcp_map).expect("first flow");
    assert!(
        echo_stream(tcp_map).is_some(),
        "--max-active-flows 2 wins over the file's 1"
    );
    assert_eq!(
        testbed::ready_connections(metrics),
        Some(1),
        "--ha-connections 1 wins over the file's 2"
    );
}

/// `burrow tunnel --config FILE run` with environment `env`, in an empty HOME so no default
/// credentials are found: it stops before connecting, and its stderr says why.
fn stops_with(dir: &Path, yaml: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let config = dir.join("config.yml");
    std::fs::write(&config, yaml).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--config"])
        .arg(&config)
        .args(args)
        .arg("run")
        .env("HOME", dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("TUNNEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out: Output = cmd.output().expect("burrow runs");
    assert!(!out.status.success(), "no credentials anywhere");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The grace period is checked after the merge, so which value won shows in the error: a flag
/// or environment variable over the file, and an explicit `--grace-period` is no longer
/// overridden by the file. Type errors name the key and the file.
#[test]
fn environment_and_flags_win_over_the_file_and_type_errors_name_the_key() {
    let dir = std::env::temp_dir().join(format!("burrow-e2e-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let too_long = "grace-period 4m is too long";
    let no_creds = "no credentials";

    let e = stops_with(&dir, "grace-period: 4m\n", &[], &[]);
    assert!(e.contains(too_long), "the file beats the default: {e}");
    let e = stops_with(
        &dir,
        "grace-period: 4m\n",
        &[("TUNNEL_GRACE_PERIOD", "10s")],
        &[],
    );
    assert!(
        e.contains(no_creds) && !e.contains(too_long),
        "env beats the file: {e}"
    );
    let e = stops_with(
        &dir,
        "grace-period: 10s\n",
        &[("TUNNEL_GRACE_PERIOD", "4m")],
        &[],
    );
    assert!(e.contains(too_long), "env beats the file: {e}");
    let e = stops_with(&dir, "grace-period: 4m\n", &[], &["--grace-period", "10s"]);
    assert!(
        e.contains(no_creds) && !e.contains(too_long),
        "the flag beats the file: {e}"
    );

    let e = stops_with(&dir, "ha-connections: two\nretries: 3\n", &[], &[]);
    let config = dir.join("config.yml");
    assert!(
        e.contains("ha-connections") && e.contains(&*config.to_string_lossy()),
        "{e}"
    );
    let e = stops_with(&dir, "edge: 127.0.0.1:7844\n", &[], &[]);
    assert!(e.contains("edge") && e.contains("sequence"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// config.yml for `bed`'s tunnel: one connection to `eo`'s edge, metrics on `metrics`, then
/// `rest`.
fn one_connection_config(bed: &Testbed, eo: &EdgeOpts, metrics: &str, rest: &str) -> PathBuf {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("one.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {}\ncredentials-file: {}\nedge: [{}]\ncacert: {}\nmetrics: {}\n\
             ha-connections: 1\n{rest}",
            q(&bed.id),
            q(&bed.credentials().to_string_lossy()),
            q(&eo.quic.to_string()),
            q(&bed.ca().to_string_lossy()),
            q(metrics),
        ),
    )
    .expect("config");
    config
}

/// `GET path` through the edge's public port with `Host: app.test`; the status.
fn status(http: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(http).expect("edge http");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Issue 11: a path rule holds whatever came before it on the tunnel. `^/admin` answers 403
/// and everything else goes to an HTTP origin; on one connection, in both orders, each request
/// reaches its own rule's service, never a pooled origin connection another rule opened.
#[test]
fn path_rules_hold_across_pooled_origin_connections() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-path-pool", "app", &["app.test"]).expect("tunnel");
    let origin = common::origins::origin();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let config = one_connection_config(
        &bed,
        &eo,
        &metrics.to_string(),
        &format!(
            "ingress:\n  - hostname: app.test\n    path: ^/admin\n    service: http_status:403\n  \
             - service: http://127.0.0.1:{origin}\n"
        ),
    );
    let mut c = connector(&bed, &config, &["run"]);
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let seen: Vec<(&str, u16)> = ["/", "/admin", "/", "/admin/x", "/index", "/admin"]
        .into_iter()
        .map(|p| (p, status(eo.http, p)))
        .collect();
    let want: Vec<(&str, u16)> = seen
        .iter()
        .map(|&(p, _)| (p, if p.starts_with("/admin") { 403 } else { 200 }))
        .collect();
    assert_eq!(seen, want, "connector: {}", c.log_tail(4000));
}

/// Runs `burrow <before> tunnel <tunnel> --config FILE run <run>` (with `env` set) against
/// `burrow edge`, checks that it serves, and returns its debug log.
fn serves_with(
    name: &str,
    before: &[&str],
    tunnel: &[&str],
    run: &[&str],
    env: &[(&str, &str)],
) -> String {
    let bed = Testbed::create(Path::new(BIN), name, "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let config = one_connection_config(
        &bed,
        &eo,
        &metrics.to_string(),
        "ingress:\n  - service: http_status:418\n",
    );
    let mut cmd = Command::new(BIN);
    cmd.args(before)
        .args(["--loglevel", "debug", "tunnel"])
        .args(tunnel)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .args(run)
        .envs(env.iter().copied());
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    assert_eq!(status(eo.http, "/"), 418, "the connector serves");
    c.log_tail(40_000)
}

/// The line naming the flags burrow does not act on.
fn ignored_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("flags burrow does not act on"))
        .unwrap_or_else(|| panic!("the ignored flags are named at debug:\n{log}"))
}

/// Issue 17: cloudflared's app-level flags come before `tunnel` (`burrow --no-autoupdate
/// tunnel run`), its `tunnel` flags before `run`; harmless ones are accepted, named at debug,
/// and the connector runs.
#[test]
fn cloudflared_flags_before_tunnel_and_before_run_are_accepted() {
    let log = serves_with(
        "e2e-global-flags",
        &["--no-autoupdate", "--autoupdate-freq", "24h"],
        &["--no-prechecks"],
        &["--heartbeat-count", "5"],
        &[],
    );
    let line = ignored_line(&log);
    for flag in [
        "no-autoupdate",
        "autoupdate-freq",
        "no-prechecks",
        "heartbeat-count",
    ] {
        assert!(line.contains(flag), "{flag} named: {line}");
    }
}

/// Switches with a value after `=` as cloudflared takes them (`strconv.ParseBool`'s
/// spellings; `/work/cfd/cloudflared tunnel --no-autoupdate=false run` gets as far as asking
/// for the tunnel), Go's single-dash spelling, and a switch's variable set but empty, which
/// urfave/cli takes as unset.
#[test]
fn switches_with_values_are_accepted() {
    let log = serves_with(
        "e2e-switch-values",
        &[],
        &["--no-autoupdate=true", "--no-prechecks=false"],
        &["--no-chunked-encoding=0", "-ui=T", "-pq=false"],
        &[("TUNNEL_MANAGEMENT_DIAGNOSTICS", "")],
    );
    let line = ignored_line(&log);
    for flag in ["no-autoupdate", "no-prechecks", "ui"] {
        assert!(line.contains(flag), "{flag} named: {line}");
    }
}

/// An origin that answers every request with its own head as the body.
fn head_echo_origin() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                head.len()
            );
            let _ = s.write_all(&head);
        }
    });
    port
}

/// Issue 17 wire details: every origin request carries `Cf-Warp-Tag-Id: <connector id>` and
/// the `--tag`s; `--metrics 127.0.0.1:0` binds an ephemeral port, not 20241. (The origin's
/// `Connection: close` is dropped in core, tested there: burrow's edge, being hyper, never
/// shows an eyeball the tunnel's connection headers, so this test could not tell.)
#[test]
fn origin_requests_carry_tags_and_metrics_port_zero_is_ephemeral() {
    let bed = Testbed::create(Path::new(BIN), "e2e-tags", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let origin = head_echo_origin();
    let config = one_connection_config(
        &bed,
        &eo,
        "127.0.0.1:0",
        &format!("loglevel: info\ningress:\n  - service: http://127.0.0.1:{origin}\n"),
    );
    let mut c = connector(&bed, &config, &["--tag", "env=prod", "run"]);
    let mut metrics = None;
    testbed::wait_for(Duration::from_secs(30), "the metrics address", || {
        c.check_alive()?;
        metrics = c.log_tail(20_000).lines().find_map(|l| {
            let at = l.split("Starting metrics server on ").nth(1)?;
            at.split("/metrics").next()?.parse::<SocketAddr>().ok()
        });
        Ok(metrics.is_some())
    })
    .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let metrics = metrics.expect("found");
    assert!(
        !(20241..=20245).contains(&metrics.port()),
        "127.0.0.1:0 is not cloudflared's default: {metrics}"
    );
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let log = c.log_tail(20_000);
    let connector_id = log
        .lines()
        .find_map(|l| l.split("connector_id=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the log names the connector id")
        .to_owned();

    let mut s = TcpStream::connect(eo.http).expect("edge http");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(b"GET /h HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .expect("request");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let (head, body) = loop {
        let n = s.read(&mut b).expect("response");
        assert!(n > 0, "response cut: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if body.len() >= len {
                break (head.to_ascii_lowercase(), body.to_owned());
            }
        }
    };
    assert!(body.contains("Cf-Warp-Tag-Env: prod\r\n"), "{body}");
    assert!(
        body.contains(&format!("Cf-Warp-Tag-Id: {connector_id}\r\n")),
        "{connector_id}: {body}"
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

/// The whole response of one keep-alive `GET path` with `Host: app.test` through the edge:
/// (lower-cased head, body).
fn get_whole(http: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(http).expect("edge http");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").expect("request");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b).expect("response");
        assert!(n > 0, "response cut: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if body.len() >= len {
                return (head, body.to_owned());
            }
        }
    }
}

/// config.yml with only the edge, its CA, metrics and one connection: no tunnel, no
/// credentials, no ingress.
fn bare_config(bed: &Testbed, eo: &EdgeOpts, metrics: SocketAddr) -> PathBuf {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("bare.yml");
    std::fs::write(
        &config,
        format!(
            "edge: [{}]\ncacert: {}\nmetrics: {}\nha-connections: 1\n",
            q(&eo.quic.to_string()),
            q(&bed.ca().to_string_lossy()),
            q(&metrics.to_string()),
        ),
    )
    .expect("config");
    config
}

/// Issue 17: `--token-file` (the token cloudflared prints, in a file), `--hello-world` as the
/// origin, `--logfile` and `--pidfile`.
#[test]
fn token_file_hello_world_logfile_and_pidfile() {
    use base64::Engine;
    let bed =
        Testbed::create(Path::new(BIN), "e2e-token-file", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bed.credentials()).expect("credentials"))
            .expect("json");
    let token = serde_json::json!({
        "a": creds["AccountTag"], "t": creds["TunnelID"], "s": creds["TunnelSecret"],
    });
    let token_file = bed.dir().join("token");
    std::fs::write(
        &token_file,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(token.to_string())
        ),
    )
    .expect("token file");
    let logfile = bed.dir().join("logs/burrow.log");
    let pidfile = bed.dir().join("burrow.pid");
    let config = bare_config(&bed, &eo, metrics);
    let mut c = connector(
        &bed,
        &config,
        &[
            "--pidfile",
            &pidfile.to_string_lossy(),
            "--logfile",
            &logfile.to_string_lossy(),
            "run",
            "--token-file",
            &token_file.to_string_lossy(),
            "--hello-world",
        ],
    );
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let (head, body) = get_whole(eo.http, "/");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("Congrats! You created a tunnel!"), "{body}");
    let logged = std::fs::read_to_string(&logfile).expect("the log file exists");
    assert!(logged.contains("Registered tunnel connection"), "{logged}");
    let mut pid = String::new();
    testbed::wait_for(Duration::from_secs(10), "the pid file", || {
        pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        Ok(!pid.is_empty())
    })
    .expect("--pidfile written after the first registration");
    assert_eq!(pid, c.pid().to_string());
}

/// Issue 17: `--credentials-contents` with the tunnel id as argument, `--unix-socket` as the
/// origin with `--http-host-header`, and `--log-directory`.
#[test]
fn credentials_contents_unix_socket_origin_and_log_directory() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-cred-contents", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let socket = bed.dir().join("origin.sock");
    let l = std::os::unix::net::UnixListener::bind(&socket).expect("unix origin");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                head.len()
            );
            let _ = s.write_all(&head);
        }
    });
    let contents = std::fs::read_to_string(bed.credentials()).expect("credentials");
    let logs = bed.dir().join("logdir");
    let config = bare_config(&bed, &eo, metrics);
    let mut c = connector(
        &bed,
        &config,
        &[
            "--log-directory",
            &logs.to_string_lossy(),
            "run",
            "--credentials-contents",
            &contents,
            "--unix-socket",
            &socket.to_string_lossy(),
            "--http-host-header",
            "internal.test",
            &bed.id,
        ],
    );
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    let (head, body) = get_whole(eo.http, "/x");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.starts_with("GET /x HTTP/1.1\r\n"), "{body}");
    // cloudflared applies httpHostHeader to URL origins only, not unix sockets.
    assert!(body.contains("Host: app.test\r\n"), "{body}");
    let logged = std::fs::read_to_string(logs.join("cloudflared.log")).expect("cloudflared.log");
    assert!(logged.contains("Registered tunnel connection"), "{logged}");
}
