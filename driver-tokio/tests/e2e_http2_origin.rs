//! `http2Origin: true` end to end (real `burrow edge` and `burrow tunnel run` on loopback): an
//! origin that speaks only HTTP/2 (TLS with ALPN `h2` and nothing else, self-signed, reached
//! with `noTLSVerify`) answers requests sent through the tunnel, bodies both ways, on one
//! HTTP/2 connection; the same origin under a rule without `http2Origin` fails (502).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Testbed};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// The HTTP/2-only origin: answers `version method authority path-and-query host=<Host>
/// len=<body length> sum=<byte sum>`. Returns its address and a count of its TLS connections.
fn h2_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    // A client that offers no h2 fails here or at the HTTP/2 preface.
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let head = format!(
                                "{:?} {} {} {} host={}",
                                req.version(),
                                req.method(),
                                req.uri().authority().map_or("-", |a| a.as_str()),
                                req.uri().path_and_query().map_or("-", |p| p.as_str()),
                                req.headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .unwrap_or("-"),
                            );
                            let body = req.into_body().collect().await?.to_bytes();
                            let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                            let text = format!("{head} len={} sum={sum}", body.len());
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                text,
                            ))))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (addr, conns)
}

/// One request through the edge: (status, body).
fn send(http: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = common::client::status_of(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        String::from_utf8_lossy(&common::client::dechunk(body.as_bytes())).into_owned()
    } else {
        body.to_owned()
    };
    (status, body)
}

#[test]
fn requests_reach_an_http2_only_origin() {
    let (origin, conns) = h2_origin();
    let bed =
        Testbed::create(Path::new(BIN), "e2e-h2o", "app", &["h1.test", "h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let service = format!("https://127.0.0.1:{}", origin.port());
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics: testbed::free_tcp().expect("port"),
        ingress: vec![
            (Some("h1.test".into()), service.clone()),
            (None, service.clone()),
        ],
        ha_connections: 1,
        extra: Vec::new(),
        // The last (catch-all) rule speaks HTTP/2; every rule skips verification.
        config_extra:
            "    originRequest:\n      http2Origin: true\noriginRequest:\n  noTLSVerify: true\n"
                .into(),
    };
    let mut conn = bed.connector(&co).expect("connector");
    testbed::wait_ready(&mut conn, co.metrics, 1, Duration::from_secs(30)).expect("ready");

    let (status, body) = send(
        eo.http,
        "GET /path?q=1 HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("HTTP/2.0 GET h2.test /path?q=1 host=- len=0 sum=0"),
        "{body}"
    );

    // A body both ways, streamed (chunked from the eyeball).
    let upload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    let (status, body) = send(
        eo.http,
        "POST /upload HTTP/1.1\r\nHost: h2.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        &common::client::chunked(&upload, 16 * 1024),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("HTTP/2.0 POST h2.test /upload host=- len=1000000 sum={sum}")
    );
    let (status, body) = send(
        eo.http,
        "GET /again HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/2.0 GET h2.test /again"), "{body}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "sequential requests share one HTTP/2 connection"
    );

    // Without http2Origin the origin is spoken to in HTTP/1.1, which it refuses.
    let (status, _) = send(
        eo.http,
        "GET / HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 502);
    conn.check_alive().expect("connector alive");
}

/// `--http2-origin` with `--url`: the one origin is spoken
/// to in HTTP/2; without it, in HTTP/1.1, which the HTTP/2-only origin refuses. The same from
/// stock cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn http2_origin_flag_with_url() {
    let (origin, _conns) = h2_origin();
    let bed = Testbed::create(Path::new(BIN), "e2e-h2o-flag", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let url = format!("https://127.0.0.1:{}", origin.port());
    let mut bins = vec![(std::path::PathBuf::from(BIN), Vec::new())];
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let flags = vec!["--features", "support_datagram_v3_2", "--protocol", "quic"];
        bins.push((cfd.into(), flags));
    }
    let get = "GET /flag HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n";
    for (bin, extra) in bins {
        let name = bin.display().to_string();
        let mut flags = vec!["--url", url.as_str(), "--no-tls-verify", "--http2-origin"];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        let (status, body) = send(eo.http, get, b"");
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body.starts_with("HTTP/2.0 GET h2.test /flag"),
            "{name}: {body}"
        );
        c.terminate(Duration::from_secs(30)).expect("stops");

        let mut flags = vec!["--url", url.as_str(), "--no-tls-verify"];
        flags.extend(&extra);
        let mut c = bed
            .connector_without_config(&bin, eo.quic, &flags)
            .expect("connector");
        assert_eq!(send(eo.http, get, b"").0, 502, "{name}: without the flag");
        c.terminate(Duration::from_secs(30)).expect("stops");
    }
}
