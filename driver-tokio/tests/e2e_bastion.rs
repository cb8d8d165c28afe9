//! The `bastion` service and `originRequest.bastionMode` end to end (real `burrow edge` and
//! `burrow tunnel run` on loopback): an eyeball WebSocket, as `cloudflared access
//! --destination` opens it, reaches the TCP destination its `Cf-Access-Jump-Destination`
//! names (`burrow edge` passes that header on, as Cloudflare's edge); without it the request
//! fails.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{EdgeOpts, Testbed};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

mod common;
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

fn ws(
    http: SocketAddr,
    host: &str,
    jump: Option<&str>,
) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let tcp = TcpStream::connect(http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("ws://{host}/").into_client_request().unwrap();
    if let Some(j) = jump {
        req.headers_mut()
            .insert("Cf-Access-Jump-Destination", j.parse().unwrap());
    }
    match tungstenite::client(req, tcp) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

fn echo_once(s: &mut tungstenite::WebSocket<TcpStream>, data: &[u8]) -> Vec<u8> {
    s.send(Message::Binary(data.to_vec().into())).unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        match s.read().expect("read") {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

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
    // jump.test names an ssh service, but bastionMode makes it a bastion (as cloudflared).
    let (mut c, _metrics) = bed
        .connector_with_ingress(
            eo.quic,
            "- hostname: bastion.test\n  service: bastion\n\
             - hostname: jump.test\n  service: ssh://127.0.0.1:1\n  originRequest:\n    bastionMode: true\n\
             - service: http_status:404\n",
            &[],
        )
        .expect("connector");

    // Two destinations behind one hostname, each reached by the request that names it.
    let mut a = ws(eo.http, "bastion.test", Some(&echo_a.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut a, b"to a"), b"to a");
    let url = format!("ssh://{echo_b}/ignored");
    let mut b = ws(eo.http, "bastion.test", Some(&url)).expect("upgrade");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    assert!(echo_once(&mut b, &big) == big, "the echo came back whole");
    let mut j = ws(eo.http, "jump.test", Some(&echo_a.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut j, b"via bastionMode"), b"via bastionMode");

    // No destination (or one without a port): the request fails, the eyeball gets no upgrade.
    assert_eq!(ws(eo.http, "bastion.test", None).err(), Some(502));
    assert_eq!(
        ws(eo.http, "bastion.test", Some("127.0.0.1")).err(),
        Some(502)
    );
    // The connection carries on.
    let mut again = ws(eo.http, "bastion.test", Some(&echo_b.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut again, b"still"), b"still");
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
