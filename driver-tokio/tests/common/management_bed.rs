// Included (`include!`) by burrow-tokio's and burrow-mio's e2e_management.rs, in each of which
// `testbed` names driver-tokio/src/testbed.rs (burrow-tokio's module, or burrow-mio's path
// module of the same file), so the one set-up serves both.

/// A tunnel serving `app.test` and the management hostname through `burrow edge` (binary
/// `edge`), with a TCP map to a private-network echo server; the connector `start` runs with
/// the options it is given (`label: box-1`, one connection over `protocol`) is then held to
/// every check of [`check_service`], named `name` in failures.
fn serve_and_check(
    name: &str,
    edge: &std::path::Path,
    protocol: &str,
    start: impl FnOnce(
        &testbed::Testbed,
        &testbed::ConnectorOpts,
    ) -> Result<testbed::Proc, testbed::TestbedError>,
) {
    let bed = testbed::Testbed::create(
        edge,
        &format!("e2e-mgmt-{}", name.replace(' ', "-")),
        "app",
        &["app.test", common::management::MANAGEMENT],
    )
    .expect("tunnel");
    let echo = common::origins::tcp_echo();
    let tcp_port = testbed::free_tcp().expect("port");
    let mut eo = testbed::EdgeOpts::loopback().expect("ports");
    eo.tcp_maps = vec![format!("{tcp_port}=app:{echo}")];
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let o = testbed::ConnectorOpts {
        edge: eo.quic,
        metrics,
        // The catch-all would take the management host if the service's rule did not come
        // first.
        ingress: vec![
            (
                Some("app.test".into()),
                format!("http://127.0.0.1:{}", common::origins::origin()),
            ),
            (None, "http_status:404".into()),
        ],
        ha_connections: 1,
        extra: vec!["--protocol".into(), protocol.into()],
        // cloudflared takes --label only before `run`: the key works for every connector.
        config_extra: "label: box-1\n".into(),
    };
    let mut connector = start(&bed, &o).expect("connector");
    testbed::wait_ready(&mut connector, metrics, 1, std::time::Duration::from_secs(30))
        .expect("ready");
    let pid = connector.pid();
    check_service(name, eo.http.port(), (tcp_port.port(), echo), || {
        testbed::cpu_time(pid).expect("CPU time")
    });
    connector.check_alive().expect("connector alive");
}
