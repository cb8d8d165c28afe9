//! `burrow-bench --quick` end to end: the real daemons as child processes, real loopback
//! traffic. Checks the table's shape and that HTTP and TCP figures exist on both sides; no
//! timing is asserted (the figures of a debug build on a shared machine mean nothing). With
//! `BURROW_MIO` set to a burrow-mio binary, or `BURROW_CLOUDFLARED` to a cloudflared binary,
//! their columns are checked too; with `--http2`, each connector's columns over HTTP/2 as well
//! (no UDP there: n/a with the reason).

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_burrow-bench");

/// Rows that must have numbers on both sides whenever the tunnel is up.
const MEASURED: &[&str] = &[
    "HTTP download MB/s",
    "HTTP upload MB/s",
    "HTTP request round trip p50 us",
    "HTTP request round trip p99 us",
    "TCP download MB/s",
    "TCP upload MB/s",
    "TCP 64 B round trip p50 us",
    "TCP 64 B round trip p99 us",
];

fn number(cell: &str, what: &str) -> f64 {
    let v: f64 = cell
        .parse()
        .unwrap_or_else(|_| panic!("{what}: {cell:?} is not a number"));
    assert!(v.is_finite() && v >= 0.0, "{what}: {v}");
    v
}

#[test]
fn quick_bench_prints_the_table() {
    let cloudflared = std::env::var_os("BURROW_CLOUDFLARED");
    let mut cmd = Command::new(BENCH);
    cmd.arg("--quick");
    let mut head = vec![
        "metric",
        "direct",
        "QUIC ceiling",
        "burrow",
        "burrow/direct",
    ];
    let mio = std::env::var_os("BURROW_MIO");
    if let Some(path) = &mio {
        cmd.arg("--mio").arg(path);
        head.extend(["burrow-mio", "burrow-mio/direct"]);
    }
    if let Some(path) = &cloudflared {
        cmd.arg("--cloudflared").arg(path);
        head.extend(["cloudflared", "cloudflared/direct"]);
    }
    // Every connector again over HTTP/2.
    cmd.arg("--http2");
    head.extend(["burrow h2", "burrow h2/direct"]);
    if mio.is_some() {
        head.extend(["burrow-mio h2", "burrow-mio h2/direct"]);
    }
    if cloudflared.is_some() {
        head.extend(["cloudflared h2", "cloudflared h2/direct"]);
    }
    let out = cmd.output().expect("run burrow-bench");
    let cells = head.len();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| l.split('|').skip(1).map(str::trim).collect())
        .collect();
    assert_eq!(
        rows.first().map(|r| &r[..cells]),
        Some(&head[..]),
        "{stdout}"
    );
    assert!(stdout.contains("cores available"), "machine note: {stdout}");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row {name:?} in\n{stdout}"))
    };
    for name in MEASURED {
        let r = row(name);
        assert!(number(r[1], name) > 0.0, "{name}: {r:?}");
        if name.ends_with("MB/s") {
            assert!(number(r[2], "QUIC ceiling") > 0.0, "{name}: {r:?}");
        }
        for k in (3..cells).step_by(2) {
            assert!(number(r[k], name) > 0.0, "{name}: {r:?}");
            number(r[k + 1], name);
        }
    }
    // UDP rows may be n/a while the tunnel lacks UDP; then they must say why.
    for r in rows.iter().skip(1) {
        for cell in &r[1..cells] {
            if *cell == "n/a" {
                assert!(
                    r.len() > cells && !r[cells].is_empty(),
                    "n/a without a reason: {r:?}"
                );
            } else if *cell != "-" {
                number(cell, r[0]);
            }
        }
    }
    for who in ["connector", "edge"] {
        let echo = row(&format!("{who} CPU us per UDP echo"));
        if echo[3] != "n/a" {
            assert!(number(echo[3], "CPU per UDP echo") > 0.0, "{echo:?}");
        }
    }
    let idle = row("connector RSS idle MiB");
    assert!(number(idle[3], "connector RSS") > 1.0, "{idle:?}");
    for who in ["connector", "edge"] {
        let chatty = row(&format!("{who} RSS 20 chatty TCP streams MiB"));
        assert!(number(chatty[3], "chatty streams RSS") > 1.0, "{chatty:?}");
    }
    assert!(
        rows.iter()
            .any(|r| r[0].starts_with("UDP") && r[0].ends_with("packets/s")),
        "{stdout}"
    );
}
