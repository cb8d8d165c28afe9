//! `--output json` and `--logfile`: cloudflared's JSON log lines (level, time, message and
//! the event's fields under cloudflared's names) on stderr and in the file; `--retries`
//! caps the backoff between reconnects at 2^N seconds, as in cloudflared.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

fn json_lines(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => panic!("not a JSON object line: {l}"),
        })
        .collect()
}

fn run(bed: &Testbed, eo: &EdgeOpts, extra: &[&str], creds: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args(["--metrics", "127.0.0.1:0", "--output", "json", "run"])
        .args(extra)
        .args(["--url", "http://127.0.0.1:9", "--credentials-file"])
        .arg(creds)
        .arg(&bed.id);
    Proc::spawn("burrow tunnel run", cmd, log.to_owned()).expect("spawn")
}

#[test]
fn json_lines_on_stderr_and_in_the_logfile() {
    let bed = Testbed::create(Path::new(BIN), "e2e-logs", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let logfile = bed.dir().join("logs/connector.json");
    let stderr = bed.dir().join("stderr.log");
    let lf = logfile.display().to_string();
    let mut p = run(&bed, &eo, &["--logfile", &lf], &bed.credentials(), &stderr);
    let registered = |text: &str| text.contains("Registered tunnel connection");
    testbed::wait_for(Duration::from_secs(30), "a registration logged", || {
        p.check_alive()?;
        Ok(registered(
            &std::fs::read_to_string(&stderr).unwrap_or_default(),
        ))
    })
    .expect("registered");
    for path in [&stderr, &logfile] {
        let lines = json_lines(&std::fs::read_to_string(path).expect("log"));
        for l in &lines {
            assert!(
                matches!(
                    l.get("level").and_then(|v| v.as_str()),
                    Some("debug" | "info" | "warn" | "error")
                ) && l
                    .get("time")
                    .and_then(|v| v.as_str())
                    .is_some_and(|t| t.ends_with('Z'))
                    && l.get("message").is_some_and(|m| m.is_string()),
                "{l:?}"
            );
        }
        let reg = lines
            .iter()
            .find(|l| {
                l.get("message").and_then(|m| m.as_str()) == Some("Registered tunnel connection")
            })
            .unwrap_or_else(|| panic!("no registration line in {}", path.display()));
        assert_eq!(reg.get("connIndex"), Some(&serde_json::json!(0)), "{reg:?}");
        assert_eq!(
            reg.get("protocol"),
            Some(&serde_json::json!("quic")),
            "{reg:?}"
        );
        assert_eq!(
            reg.get("location"),
            Some(&serde_json::json!("LOCAL")),
            "{reg:?}"
        );
    }
}

#[test]
fn retries_cap_the_backoff() {
    let bed = Testbed::create(Path::new(BIN), "e2e-retries", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    // The edge refuses these credentials (wrong secret), so the connector keeps retrying.
    let mut creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bed.credentials()).expect("creds")).expect("json");
    creds["TunnelSecret"] = serde_json::json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let bad = bed.dir().join("bad.json");
    std::fs::write(&bad, creds.to_string()).expect("write");
    let stderr = bed.dir().join("stderr.log");
    let mut p = run(
        &bed,
        &eo,
        &["--retries", "1", "--ha-connections", "1"],
        &bad,
        &stderr,
    );
    let delays = || -> Vec<Duration> {
        json_lines(&std::fs::read_to_string(&stderr).unwrap_or_default())
            .iter()
            .filter(|l| l.get("message").and_then(|m| m.as_str()) == Some("Retrying connection"))
            .filter_map(|l| debug_duration(l.get("delay")?.as_str()?))
            .collect()
    };
    testbed::wait_for(Duration::from_secs(30), "five retries", || {
        p.check_alive()?;
        Ok(delays().len() >= 5)
    })
    .expect("retried");
    let d = delays();
    assert!(
        d.iter().all(|d| *d < Duration::from_secs(2)),
        "--retries 1 caps each wait below 2 s: {d:?}"
    );
}

/// Parses Rust's `Debug` of a `Duration`: `1.234567s`, `812.3ms`, `15µs`, `7ns`.
fn debug_duration(d: &str) -> Option<Duration> {
    let at = d.find(|c: char| c.is_alphabetic())?;
    let (n, unit) = d.split_at(at);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// `--output`'s two variables, as cloudflared 2026.8.2 reads them (checked against it): the
/// first set of `TUNNEL_MANAGEMENT_OUTPUT`, `TUNNEL_LOG_OUTPUT` wins.
#[test]
fn the_log_format_comes_from_the_first_of_its_two_variables() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("burrow-e2e-output-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let creds = dir.join("creds.json");
    std::fs::write(
        &creds,
        r#"{"AccountTag":"acc","TunnelSecret":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=","TunnelID":"11111111-2222-3333-4444-555555555555"}"#,
    )
    .expect("creds");
    let first_line = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "tunnel",
            "--edge",
            "127.0.0.1:9",
            "--metrics",
            "127.0.0.1:0",
            "run",
        ])
        .args(["--url", "http://127.0.0.1:9", "--credentials-file"])
        .arg(&creds)
        .arg("11111111-2222-3333-4444-555555555555")
        .env_remove("TUNNEL_MANAGEMENT_OUTPUT")
        .env_remove("TUNNEL_LOG_OUTPUT")
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let mut line = String::new();
        let read =
            std::io::BufReader::new(child.stderr.take().expect("stderr")).read_line(&mut line);
        let _ = child.kill();
        let _ = child.wait();
        read.expect("a log line");
        line
    };
    let json = |line: &str| serde_json::from_str::<serde_json::Value>(line).is_ok();
    for (vars, want_json) in [
        (&[("TUNNEL_LOG_OUTPUT", "json")][..], true),
        (&[("TUNNEL_MANAGEMENT_OUTPUT", "json")][..], true),
        (
            &[
                ("TUNNEL_MANAGEMENT_OUTPUT", "json"),
                ("TUNNEL_LOG_OUTPUT", "default"),
            ][..],
            true,
        ),
        (
            &[
                ("TUNNEL_MANAGEMENT_OUTPUT", "default"),
                ("TUNNEL_LOG_OUTPUT", "json"),
            ][..],
            false,
        ),
        (&[][..], false),
    ] {
        let line = first_line(vars);
        assert_eq!(json(&line), want_json, "{vars:?}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
