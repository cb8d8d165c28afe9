//! `originRequest.access` end to end: `burrow edge`, `burrow tunnel run` and an origin on
//! loopback, with the checks burrow-mio runs too (`common::access_jwt`).

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

mod common;

use common::access_jwt::{access_config, access_connector, check_access, key_server, origin};

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
    let config = bed.dir().join("config.yml");
    std::fs::write(&config, access_config(&bed.id, &bed.credentials(), origin)).expect("config");
    let cmd = access_connector(Path::new(BIN), &config, (eo.quic, &bed.ca()), metrics, keys);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));
    check_access(eo.http, &origin_hits, &key_hits, &|| c.log_tail(4000));
}
