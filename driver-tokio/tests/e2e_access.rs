//! `originRequest.access` end to end: `burrow edge`, `burrow tunnel run` and an origin on
//! loopback, with the checks burrow-mio runs too (`common::access_jwt`).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

mod common;

use common::access_jwt::{access_ingress, check_access, key_server, origin, CERTS_BASE};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn access_protected_rules_refuse_unless_the_token_verifies() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-access",
        "app",
        &["app.test", "down.test", "open.test"],
    )
    .expect("tunnel");
    let key_hits = Arc::new(AtomicUsize::new(0));
    let keys = key_server(key_hits.clone());
    let origin_hits = Arc::new(AtomicUsize::new(0));
    let origin = origin(origin_hits.clone());
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\ningress:\n{ingress}",
            id = q(&bed.id),
            creds = q(&bed.credentials().to_string_lossy()),
            ingress = access_ingress(origin),
        ),
    )
    .expect("config");
    let mut cmd = Command::new(BIN);
    cmd.env(CERTS_BASE, format!("http://{keys}"))
        .args(["tunnel", "--config"])
        .arg(&config)
        .args(["--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args([
            "--metrics",
            &metrics.to_string(),
            "--ha-connections",
            "1",
            "--loglevel",
            "debug",
            "run",
        ]);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    check_access(eo.http, &origin_hits, &key_hits, &|| c.log_tail(4000));
}
