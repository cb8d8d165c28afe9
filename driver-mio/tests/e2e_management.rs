//! The management service served by burrow-mio, through the real `burrow edge` on loopback,
//! over QUIC and over HTTP/2: the same checks as burrow-tokio's (`common::management`).

use std::path::Path;
use std::time::Duration;

#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use common::management::{check_service, MANAGEMENT};
use common::origins::{origin, tcp_echo};
use harness::{burrow, MIO};
use testbed::{ConnectorOpts, EdgeOpts, Testbed};

fn run(protocol: &str) {
    let name = format!("burrow-mio over {protocol}");
    let bed = Testbed::create(
        burrow(),
        &format!("mio-mgmt-{protocol}"),
        "app",
        &["app.test", MANAGEMENT],
    )
    .expect("tunnel");
    let echo = tcp_echo();
    let tcp_port = testbed::free_tcp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_port}=app:{echo}")];
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let o = ConnectorOpts {
        edge: eo.quic,
        metrics,
        // The catch-all would take the management host if the service's rule did not come
        // first.
        ingress: vec![
            (
                Some("app.test".into()),
                format!("http://127.0.0.1:{}", origin()),
            ),
            (None, "http_status:404".into()),
        ],
        ha_connections: 1,
        extra: vec!["--protocol".into(), protocol.into()],
        config_extra: "label: box-1\n".into(),
    };
    let mut c = bed.connector_from(Path::new(MIO), &o).expect("burrow-mio");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30)).expect("ready");
    let pid = c.pid();
    check_service(&name, eo.http.port(), (tcp_port.port(), echo), || {
        testbed::cpu_time(pid).expect("CPU time")
    });
    c.check_alive().expect("burrow-mio alive");
}

#[test]
fn the_management_service_answers_on_its_hostname_over_quic() {
    run("quic");
}

#[test]
fn the_management_service_answers_on_its_hostname_over_http2() {
    run("http2");
}
