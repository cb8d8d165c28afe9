//! The `bastion` service and `originRequest.bastionMode` end to end (real `burrow edge` and
//! `burrow tunnel run` on loopback): an eyeball WebSocket, as `cloudflared access
//! --destination` opens it, reaches the TCP destination its `Cf-Access-Jump-Destination`
//! names (`burrow edge` passes that header on, as Cloudflare's edge); without it the request
//! fails.

use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{EdgeOpts, Testbed};

mod common;
use common::access::{check_bastion, echo_once, ws_to as ws, BASTION_INGRESS};
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn bastion_requests_reach_the_destination_they_name() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-bastion",
        "app",
        &["bastion.test", "jump.test"],
    )
    .expect("tunnel");
    let (echo_a, echo_b) = (tcp_echo(), tcp_echo());
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(eo.quic, BASTION_INGRESS, &[])
        .expect("connector");
    check_bastion(eo.http, echo_a, echo_b);
    c.check_alive().expect("connector alive");
}

/// `--bastion` on the command line (no config file): the one origin is the bastion, from
/// burrow and, with `BURROW_CLOUDFLARED` set, from stock cloudflared alike.
#[test]
fn bastion_flag_makes_the_one_origin_a_bastion() {
    let bed =
        Testbed::create(Path::new(BIN), "e2e-bastion-flag", "app", &["any.test"]).expect("tunnel");
    let echo = tcp_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let mut bins = vec![(std::path::PathBuf::from(BIN), vec!["--bastion"])];
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let flags = vec![
            "--bastion",
            "--features",
            "support_datagram_v3_2",
            "--protocol",
            "quic",
        ];
        bins.push((cfd.into(), flags));
    }
    for (bin, flags) in bins {
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        let mut s = ws(eo.http, "any.test", Some(&echo.to_string())).expect("upgrade");
        assert_eq!(echo_once(&mut s, b"jumped"), b"jumped", "{}", bin.display());
        assert_eq!(
            ws(eo.http, "any.test", None).err(),
            Some(502),
            "{}",
            bin.display()
        );
        c.terminate(Duration::from_secs(30)).expect("stops");
    }
}
