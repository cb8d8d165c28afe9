//! `burrow edge` with `--udp-map` and `--icmp-map`, started with [`crate::edge::start`] on
//! loopback, against a small in-test connector (burrow-core's `ConnectorConnection` and
//! `DatagramHub` over a real UDP socket, real origin sockets) and a real UDP echo origin.
//! The connector daemon's own datagram support is another branch's work; this stands in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::control::Registration;
use burrow_core::datagram::LinkId;
use burrow_core::icmp::{parse, write_echo, Echo, EchoKind, IcmpMessage, IcmpRouter, RouterConfig};
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::session::{
    SessionAction, SessionLimits, SessionManager, UdpFlowId, HEADROOM, TAILROOM,
};
use burrow_core::tunnel::connector::{ConnectorConfig, ConnectorConnection};
use burrow_core::tunnel::udp::{DatagramHub, Egress, HubAction, Links};
use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;
use uuid::Uuid;

use super::*;
use crate::edge::{self, EdgeArgs};
use burrow_core::settings::Credentials;

const WAIT: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burrow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A UDP echo service on loopback.
async fn echo_origin() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// One connector connection with a datagram plane: sessions get real connected UDP
/// sockets; ICMP is answered by the hub's router (TTL exceeded) only.
async fn connector(edge: SocketAddr, ca_pem: Vec<u8>, creds: Credentials) {
    let roots = tls::roots_from_pem(&ca_pem, "ca.pem").unwrap();
    let mut client = quinn_proto::ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).unwrap(),
    ));
    client.transport_config(QuicSettings::default().transport_config(true));
    let registration = Registration::new(
        creds.account_tag.clone(),
        creds.secret.clone(),
        creds.tunnel_id,
        Uuid::from_u128(9),
        vec!["support_datagram_v2".into(), "support_datagram_v3_2".into()],
    );
    let config = ConnectorConfig {
        grace_period: Duration::from_secs(5),
        ..ConnectorConfig::new(registration, client)
    };
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let conn = ConnectorConnection::connect(Instant::now(), config, edge, [4; 32]).unwrap();
    let mut links = OneLink(Some(conn));
    let mut hub = DatagramHub::new(
        SessionManager::new(SessionLimits::default()),
        IcmpRouter::new(RouterConfig::new(Some(Ipv4Addr::LOCALHOST), None)),
    );
    let mut origins: HashMap<UdpFlowId, Arc<UdpSocket>> = HashMap::new();
    let (origin_tx, mut origin_rx) = mpsc::unbounded_channel::<(UdpFlowId, Vec<u8>)>();
    let mut buf = Vec::new();
    let mut rbuf = vec![0u8; 65536];
    let mut obuf = BytesMut::new();
    loop {
        let now = Instant::now();
        let Some(conn) = links.0.as_mut() else {
            return;
        };
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            let _ = sock.send_to(&buf[..t.size], t.destination).await;
        }
        while conn.poll_event().is_some() {}
        hub.drain(now, LinkId(0), conn, |e| {
            if let Egress::Udp { flow, payload } = e {
                if let Some(s) = origins.get(&flow) {
                    let _ = s.try_send(payload);
                }
            }
        });
        while let Some(a) = hub.poll_action(&mut links) {
            match a {
                HubAction::Session(SessionAction::Open { flow, dest }) => {
                    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    s.connect(dest).await.unwrap();
                    let s = Arc::new(s);
                    let (rd, tx) = (s.clone(), origin_tx.clone());
                    tokio::spawn(async move {
                        let mut b = vec![0u8; 2048];
                        while let Ok(n) = rd.recv(&mut b).await {
                            if tx.send((flow, b[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    });
                    origins.insert(flow, s);
                    hub.sessions.handle_origin_opened(now, flow);
                }
                HubAction::Session(SessionAction::Send { flow, payload }) => {
                    if let Some(s) = origins.get(&flow) {
                        let _ = s.try_send(&payload);
                    }
                }
                HubAction::Session(SessionAction::Close { flow }) => {
                    origins.remove(&flow);
                }
                _ => {}
            }
        }
        // Actions may have queued datagrams (registration answers): send before sleeping.
        let conn = links.0.as_mut().unwrap();
        let mut sent = false;
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            sent = true;
            let _ = sock.send_to(&buf[..t.size], t.destination).await;
        }
        if sent {
            continue;
        }
        let deadline = [conn.poll_timeout(), hub.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            r = sock.recv_from(&mut rbuf) => {
                if let (Ok((n, from)), Some(conn)) = (r, links.0.as_mut()) {
                    conn.handle_datagram(Instant::now(), from, &rbuf[..n]);
                }
            }
            Some((flow, data)) = origin_rx.recv() => {
                obuf.clear();
                obuf.resize(HEADROOM + data.len() + TAILROOM, 0);
                obuf[HEADROOM..HEADROOM + data.len()].copy_from_slice(&data);
                hub.origin_read(Instant::now(), flow, &mut obuf, data.len(), &mut links);
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if let Some(conn) = links.0.as_mut() {
                    conn.handle_timeout(now);
                }
                hub.handle_timeout(now);
            }
        }
    }
}

/// The one connection the connector half of this test runs, whatever the link.
struct OneLink(Option<ConnectorConnection>);

impl Links for OneLink {
    fn connection(&mut self, _: LinkId) -> Option<&mut ConnectorConnection> {
        self.0.as_mut()
    }
}

/// Sends `payload` until an answer comes (the tunnel may not be up yet); returns it.
async fn first_answer(sock: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    loop {
        sock.send_to(payload, to).await.unwrap();
        if let Ok(Ok((n, _))) = timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
        {
            return buf[..n].to_vec();
        }
        assert!(start.elapsed() < WAIT, "no answer through the tunnel");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_icmp_mappings_through_a_real_tunnel() {
    let dir = temp_dir("edge-udp");
    let tunnels = dir.join("tunnels.json");
    let (_, creds) = edge::create_tunnel(&tunnels, "t1", Vec::new()).unwrap();
    let origin = echo_origin().await;
    let args = EdgeArgs {
        listen: "127.0.0.1:0".into(),
        http: "127.0.0.1:0".into(),
        dir: dir.clone(),
        cert: None,
        key: None,
        tunnels: Some(tunnels.clone()),
        tcp_map: Vec::new(),
        datagrams: DatagramArgs {
            udp_map: vec![format!("127.0.0.1:0=t1:{origin}")],
            icmp_map: vec!["127.0.0.1:0=t1".into()],
            ..DatagramArgs::default()
        },
        http_limits: Default::default(),
        loglevel: "info".into(),
        local_config_dir: None,
        command: None,
    };
    let running = edge::start(&args, &tunnels).await.unwrap();
    assert_eq!((running.udp_maps.len(), running.icmp_maps.len()), (1, 1));
    let (udp_map, icmp_map) = (running.udp_maps[0], running.icmp_maps[0]);
    assert_ne!(udp_map.port(), 0);
    let ca = std::fs::read(running.ca.clone().unwrap()).unwrap();
    tokio::spawn(connector(running.quic, ca, creds));

    // UDP: two clients, each its own session; every datagram echoed to its sender.
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(first_answer(&a, udp_map, b"hello").await, b"hello");
    let mut buf = vec![0u8; 2048];
    for i in 0..50u32 {
        for (who, sock) in [("a", &a), ("b", &b)] {
            let msg = format!("{who}-{i}-{}", "x".repeat(i as usize * 20));
            let got = if who == "b" && i == 0 {
                first_answer(sock, udp_map, msg.as_bytes()).await
            } else {
                sock.send_to(msg.as_bytes(), udp_map).await.unwrap();
                let (n, from) = timeout(WAIT, sock.recv_from(&mut buf))
                    .await
                    .expect("echo")
                    .unwrap();
                assert_eq!(from, udp_map, "answers come from the mapped port");
                buf[..n].to_vec()
            };
            assert_eq!(got, msg.as_bytes());
        }
    }

    // ICMP: an echo request with TTL 1 comes back as the connector's time-exceeded.
    let me = Ipv4Addr::new(192, 0, 2, 77);
    let mut req = vec![0u8; 128];
    let n = write_echo(
        &Echo {
            src: me.into(),
            dst: Ipv4Addr::new(10, 1, 2, 3).into(),
            ttl: 1,
            kind: EchoKind::Request,
            id: 0x5151,
            seq: 1,
            data: b"burrow",
        },
        &mut req,
    )
    .unwrap();
    req.truncate(n);
    let got = first_answer(&a, icmp_map, &req).await;
    let p = parse(&got).unwrap();
    assert_eq!(
        (p.src(), p.dst()),
        (IpAddr::from(Ipv4Addr::LOCALHOST), IpAddr::from(me))
    );
    match p.message() {
        IcmpMessage::TimeExceeded { original, .. } => {
            assert_eq!(&original[..20], &req[..20], "quotes our request's header")
        }
        other => panic!("expected time exceeded, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn map_flags_parse_and_refuse_nonsense() {
    assert_eq!(
        parse_udp_map("127.0.0.1:5353=web:10.0.0.1:53").unwrap(),
        ("127.0.0.1:5353", "web", "10.0.0.1:53".parse().unwrap())
    );
    assert_eq!(
        parse_udp_map("[::1]:53=web:[fd00::1]:53").unwrap().2,
        "[fd00::1]:53".parse::<SocketAddr>().unwrap()
    );
    for bad in [
        "",
        "x",
        "1=web",
        "1=web:host:53",
        "=web:10.0.0.1:53",
        "1=:10.0.0.1:53",
    ] {
        assert!(parse_udp_map(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_icmp_map("127.0.0.1:0=web").unwrap(),
        ("127.0.0.1:0", "web")
    );
    for bad in ["", "web", "=web", "1="] {
        assert!(parse_icmp_map(bad).is_err(), "{bad}");
    }
}
