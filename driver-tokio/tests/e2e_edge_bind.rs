//! `--edge-bind-address` end to end: the connector's edge socket is bound to the given
//! address (read from /proc/net/udp), the tunnel serves, and an address of the other family
//! than `--edge-ip-version` stops it with cloudflared's error.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// Local addresses (hex, as /proc/net/udp writes them) of bound UDP sockets.
fn udp_locals() -> Vec<String> {
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn edge_sockets_bind_to_the_edge_bind_address() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-edge-bind", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let mut c = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![(None, "http_status:204".into())],
            ha_connections: 1,
            extra: vec!["--edge-bind-address".into(), "127.0.0.2".into()],
            config_extra: String::new(),
        })
        .expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    assert!(
        udp_locals().iter().any(|a| a.starts_with("0200007F:")),
        "a UDP socket bound to 127.0.0.2: {:?}",
        udp_locals()
    );

    let out = Command::new(BIN)
        .args([
            "tunnel",
            "--edge-bind-address",
            "127.0.0.1",
            "--edge-ip-version",
            "6",
            "run",
        ])
        .arg("--credentials-file")
        .arg(bed.credentials())
        .args(["--url", "http://127.0.0.1:9", &bed.id])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IPv4 bind address is specified, but edge-ip-version is IPv6"),
        "{err}"
    );
}
