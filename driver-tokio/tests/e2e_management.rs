//! The management service through `burrow edge`, as Cloudflare's dashboard and `cloudflared
//! tail` reach it: requests whose host is `management.argotunnel.com` are served by the
//! connector itself (`/ping`, `/host_details`, `/metrics`, and `/logs`, a WebSocket streaming the
//! connector's log lines), whatever the ingress rules say, over QUIC and over HTTP/2. With
//! `BURROW_CLOUDFLARED`, stock cloudflared answers the same requests the same way.

use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Testbed};

mod common;
use common::management::{check_service, MANAGEMENT};
use common::origins::{origin, tcp_echo};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
fn run(name: &str, bin: Option<&Path>, protocol: &str) {
    let name = &format!("{name} over {protocol}");
    let bed = Testbed::create(
        Path::new(BIN),
        &format!("e2e-mgmt-{}", name.replace(' ', "-")),
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
        // cloudflared takes --label only before `run`: the key works for both.
        config_extra: "label: box-1\n".into(),
    };
    let mut connector = match bin {
        None => bed.connector(&o),
        Some(cfd) => bed.cloudflared(cfd, &o),
    }
    .expect("connector");
    testbed::wait_ready(&mut connector, metrics, 1, Duration::from_secs(30)).expect("ready");
    let pid = connector.pid();
    check_service(name, eo.http.port(), (tcp_port.port(), echo), || {
        testbed::cpu_time(pid).expect("CPU time")
    });
    connector.check_alive().expect("connector alive");
}

#[test]
fn the_management_service_answers_on_its_hostname() {
    let stock = std::env::var_os("BURROW_CLOUDFLARED");
    for protocol in ["quic", "http2"] {
        run("burrow", None, protocol);
        if let Some(cfd) = &stock {
            run("cloudflared", Some(Path::new(cfd)), protocol);
        }
    }
}
