//! Real TLS 1.3 + QUIC handshakes between our client and server configurations, driven
//! sans-IO: two quinn-proto endpoints, packets handed across by the test on virtual time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::{ALPN, SERVER_NAME};
use bytes::BytesMut;
use quinn_proto::crypto::rustls::HandshakeData;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
    ServerConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

struct Peer {
    addr: SocketAddr,
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, Connection>,
    events: Vec<Event>,
}

impl Peer {
    fn new(addr: &str, server: Option<ServerConfig>) -> Self {
        Self {
            addr: addr.parse().unwrap(),
            endpoint: Endpoint::new(
                Arc::new(EndpointConfig::default()),
                server.map(Arc::new),
                true,
                Some([7; 32]),
            ),
            conns: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Packets this peer wants to send now, as (destination, bytes).
    fn drain(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (&h, conn) in self.conns.iter_mut() {
            while let Some(ev) = conn.poll_endpoint_events() {
                if let Some(cev) = self.endpoint.handle_event(h, ev) {
                    conn.handle_event(cev);
                }
            }
            while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                out.push((t.destination, buf[..t.size].to_vec()));
                buf.clear();
            }
            while let Some(ev) = conn.poll() {
                self.events.push(ev);
            }
        }
        out
    }

    fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = Vec::new();
        match self
            .endpoint
            .handle(now, from, None, None, BytesMut::from(data), &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                self.conns
                    .get_mut(&h)
                    .expect("known connection")
                    .handle_event(ev);
                Vec::new()
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((h, conn)) => {
                        self.conns.insert(h, conn);
                        Vec::new()
                    }
                    Err(e) => e
                        .response
                        .map(|t| vec![(t.destination, buf[..t.size].to_vec())])
                        .unwrap_or_default(),
                }
            }
            Some(DatagramEvent::Response(t)) => vec![(t.destination, buf[..t.size].to_vec())],
            None => Vec::new(),
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for conn in self.conns.values_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
        }
    }
}

/// Runs both peers until the network is quiet, advancing virtual time in 1 ms steps.
fn run(client: &mut Peer, server: &mut Peer, start: Instant, for_how_long: Duration) {
    let mut now = start;
    while now < start + for_how_long {
        client.fire_timers(now);
        server.fire_timers(now);
        let mut in_flight: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
        in_flight.extend(
            client
                .drain(now)
                .into_iter()
                .map(|(d, b)| (client.addr, d, b)),
        );
        in_flight.extend(
            server
                .drain(now)
                .into_iter()
                .map(|(d, b)| (server.addr, d, b)),
        );
        while let Some((from, to, bytes)) = in_flight.pop() {
            let peer = if to == server.addr {
                &mut *server
            } else {
                &mut *client
            };
            let replies = peer.receive(now, from, &bytes);
            let me = peer.addr;
            in_flight.extend(replies.into_iter().map(|(d, b)| (me, d, b)));
        }
        now += Duration::from_millis(1);
    }
}

fn cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    (ck.cert.der().clone(), key.into())
}

fn server_config(
    pq: PostQuantum,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> ServerConfig {
    let crypto = tls::server_config(vec![cert], key, pq).unwrap();
    let mut cfg = ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(QuicSettings::default().transport_config(true));
    cfg
}

/// A server offering only classical groups, like an edge without post-quantum support.
fn classical_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> ServerConfig {
    use rustls::crypto::aws_lc_rs;
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
        ..aws_lc_rs::default_provider()
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    ServerConfig::with_crypto(Arc::new(crypto))
}

fn connect(
    server_cfg: ServerConfig,
    roots_cert: CertificateDer<'static>,
    pq: PostQuantum,
) -> (Peer, Peer) {
    let now = Instant::now();
    let mut server = Peer::new("127.0.0.1:7844", Some(server_cfg));
    let mut client = Peer::new("127.0.0.1:50000", None);
    let mut roots = RootCertStore::empty();
    roots.add(roots_cert).unwrap();
    let mut cfg = ClientConfig::new(Arc::new(tls::client_config(roots, pq).unwrap()));
    cfg.transport_config(QuicSettings::default().transport_config(true));
    let (h, conn) = client
        .endpoint
        .connect(now, cfg, server.addr, SERVER_NAME)
        .unwrap();
    client.conns.insert(h, conn);
    run(&mut client, &mut server, now, Duration::from_millis(200));
    (client, server)
}

fn handshake_data(conn: &Connection) -> Box<HandshakeData> {
    conn.crypto_session()
        .handshake_data()
        .expect("handshake done")
        .downcast::<HandshakeData>()
        .unwrap()
}

#[test]
fn prefer_mode_connects_with_alpn_and_sni() {
    let (c, k) = cert();
    let (client, server) = connect(
        server_config(PostQuantum::Prefer, c.clone(), k),
        c,
        PostQuantum::Prefer,
    );
    assert!(client.events.iter().any(|e| matches!(e, Event::Connected)));
    let server_conn = server.conns.values().next().expect("server accepted");
    let hd = handshake_data(server_conn);
    assert_eq!(hd.protocol.as_deref(), Some(ALPN));
    assert_eq!(hd.server_name.as_deref(), Some(SERVER_NAME));
}

#[test]
fn strict_mode_connects_to_a_post_quantum_server() {
    let (c, k) = cert();
    let (client, _) = connect(
        server_config(PostQuantum::Strict, c.clone(), k),
        c,
        PostQuantum::Strict,
    );
    assert!(client.events.iter().any(|e| matches!(e, Event::Connected)));
}

#[test]
fn strict_mode_refuses_a_classical_only_server() {
    let (c, k) = cert();
    let (client, _) = connect(
        classical_server_config(c.clone(), k),
        c,
        PostQuantum::Strict,
    );
    let reason = lost_reason(&client);
    assert!(reason.contains("NoKxGroupsInCommon"), "{reason}");
}

/// Why the client's connection was lost, as text (it must not have connected).
fn lost_reason(client: &Peer) -> String {
    assert!(!client.events.iter().any(|e| matches!(e, Event::Connected)));
    client
        .events
        .iter()
        .find_map(|e| match e {
            Event::ConnectionLost { reason } => Some(reason.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("connection not lost: {:?}", client.events))
}

#[test]
fn prefer_mode_falls_back_to_classical() {
    let (c, k) = cert();
    let (client, _) = connect(
        classical_server_config(c.clone(), k),
        c,
        PostQuantum::Prefer,
    );
    assert!(client.events.iter().any(|e| matches!(e, Event::Connected)));
}

#[test]
fn untrusted_edge_certificate_is_refused() {
    let (c, k) = cert();
    let (other, _) = cert();
    let (client, _) = connect(
        server_config(PostQuantum::Prefer, c, k),
        other,
        PostQuantum::Prefer,
    );
    let reason = lost_reason(&client);
    assert!(reason.contains("invalid peer certificate"), "{reason}");
}

#[test]
fn empty_ca_file_is_an_error_not_a_fallback() {
    assert!(matches!(
        tls::roots_from_pem(b"", "ca.pem"),
        Err(tls::TlsError::NoCertificates("ca.pem"))
    ));
    assert!(tls::roots_from_pem(
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        "ca.pem"
    )
    .is_err());
}
