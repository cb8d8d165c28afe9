//! Both HTTP/2 machines against an independent HTTP/2 implementation, PyPI's sans-IO `h2`, over
//! real loopback TCP sockets with real TLS (Python's `ssl` on one side, rustls in the machine):
//! tests/http2_peer.py plays the edge against our connector, tests/http2_connector_peer.py plays
//! cloudflared against our edge. Skips, saying why, where python3 or `h2` is missing.

use std::io::{BufRead, BufReader, ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::net::TcpListener;

use burrow_core::http2::{
    tls, ConnectorConnection, EdgeConnection, Event, Input, Limits, Output, Read, RequestKind,
    ResponseMeta, StreamEvent, StreamId,
};
use burrow_core::quic::tls::PostQuantum;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

fn python_with_h2() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import h2"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("python3")
}

/// What the origin side of this test does with each stream.
#[derive(Default)]
struct Origin {
    control: Option<StreamId>,
    echo: Option<StreamId>,
}

#[test]
fn connector_serves_pythons_h2_edge() {
    let Some(python) = python_with_h2() else {
        eprintln!("SKIP connector_serves_pythons_h2_edge: python3 with the `h2` package not found (pip install h2)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("burrow-h2-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![tls::SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http2_peer.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut port = String::new();
    stdout.read_line(&mut port).expect("port line");
    let port: u16 = port.trim().parse().expect("port");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let config = tls::client_config(roots, PostQuantum::Prefer).expect("tls");
    let outcome = serve(Arc::clone(&config), port);

    let status = child.wait().expect("python exit");
    let mut out = String::new();
    let mut err = String::new();
    stdout.read_to_string(&mut out).ok();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success() && out.trim() == "OK",
        "python peer failed ({status}): {out}\n{err}"
    );
    outcome.expect("connector side");
}

/// Drives the connector machine over a blocking socket until the peer closes.
fn serve(config: Arc<rustls::ClientConfig>, port: u16) -> Result<(), String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let mut m =
        ConnectorConnection::new(Instant::now(), config, tls::SERVER_NAME, Limits::default())
            .map_err(|e| e.to_string())?;
    let mut origin = Origin::default();
    let mut inbox: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut echo_pending: Vec<Bytes> = Vec::new();
    let mut echo_done = false;
    // A guard against hanging, not a timed assertion.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > give_up {
            return Err("no end after 60 s".into());
        }
        let now = Instant::now();
        loop {
            match m.poll_output(now) {
                Output::Transmit => {
                    let n = m.transmit(&mut buf);
                    sock.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                }
                Output::Event(Event::Closed(error)) => {
                    while let Output::Transmit = m.poll_output(now) {
                        let n = m.transmit(&mut buf);
                        let _ = sock.write_all(&buf[..n]);
                    }
                    return match error {
                        None => Ok(()),
                        Some(e) => Err(format!("closed with {e}")),
                    };
                }
                Output::Event(event) => on_event(
                    &mut m,
                    &mut origin,
                    event,
                    &mut echo_pending,
                    &mut echo_done,
                )?,
                Output::Timeout(_) => break,
            }
        }
        // Push echoed bytes as the send queue allows.
        if let Some(id) = origin.echo {
            while let Some(chunk) = echo_pending.first_mut() {
                let n = m.send_data(id, chunk.clone()).map_err(|e| e.to_string())?;
                let _ = chunk.split_to(n);
                if !chunk.is_empty() {
                    break;
                }
                echo_pending.remove(0);
            }
            if echo_done && echo_pending.is_empty() {
                m.finish(id, None).map_err(|e| e.to_string())?;
                origin.echo = None;
            }
        }
        if !inbox.is_empty() {
            let n = m.handle_input(now, Input::Received(&inbox));
            inbox.drain(..n);
            continue;
        }
        match sock.read(&mut buf) {
            Ok(0) => {
                m.handle_input(now, Input::PeerClosed);
            }
            Ok(n) => inbox.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn on_event(
    m: &mut ConnectorConnection,
    origin: &mut Origin,
    event: Event,
    echo_pending: &mut Vec<Bytes>,
    echo_done: &mut bool,
) -> Result<(), String> {
    let e = |e: burrow_core::http2::ApiError| e.to_string();
    match event {
        Event::Connected => {}
        Event::Request(r) => match (r.kind, r.head.uri.path()) {
            (RequestKind::ControlStream, _) => {
                m.respond_implicit(r.stream).map_err(e)?;
                origin.control = Some(r.stream);
            }
            (RequestKind::Http, "/hello") => {
                assert_eq!(r.head.headers["x-eyeball"], "1");
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static("text/plain"));
                h.insert("content-length", HeaderValue::from_static("2"));
                h.insert("x-origin", HeaderValue::from_static("yes"));
                h.insert("cf-int-secret", HeaderValue::from_static("no"));
                m.respond(r.stream, StatusCode::OK, &h).map_err(e)?;
                m.send_data(r.stream, Bytes::from_static(b"ok"))
                    .map_err(e)?;
                m.finish(r.stream, None).map_err(e)?;
            }
            (RequestKind::Http, "/echo") => {
                m.respond(r.stream, StatusCode::OK, &HeaderMap::new())
                    .map_err(e)?;
                origin.echo = Some(r.stream);
            }
            other => return Err(format!("unexpected request {other:?}")),
        },
        Event::Stream(StreamEvent::Readable(id)) => loop {
            match m.read(id).map_err(e)? {
                Read::Data(d) if Some(id) == origin.control => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(&d);
                    m.send_data(id, Bytes::from(echo)).map_err(e)?;
                }
                Read::Data(d) => echo_pending.push(d),
                Read::Finished => {
                    if Some(id) == origin.echo {
                        *echo_done = true;
                    }
                    break;
                }
                Read::Blocked => break,
            }
        },
        Event::Stream(StreamEvent::Writable(_)) => {}
        other => return Err(format!("unexpected event {other:?}")),
    }
    Ok(())
}

#[test]
fn edge_drives_pythons_h2_connector() {
    let Some(python) = python_with_h2() else {
        eprintln!("SKIP edge_drives_pythons_h2_connector: python3 with the `h2` package not found (pip install h2)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("burrow-h2-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![tls::SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http2_connector_peer.py");
    let child = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let chain = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    ));
    let config = tls::server_config(chain, key, PostQuantum::Prefer).expect("tls");
    let (sock, _) = listener.accept().expect("accept");
    let outcome = drive_edge(config, sock);
    let out = child.wait_with_output().expect("python exit");
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "python peer failed ({}): {stdout}\n{stderr}",
        out.status
    );
    outcome.expect("edge side");
}

/// Drives the edge machine: opens a control, an HTTP and a TCP stream, checks the answers,
/// ends the streams, shuts down cleanly.
fn drive_edge(config: Arc<rustls::ServerConfig>, mut sock: TcpStream) -> Result<(), String> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let mut m = EdgeConnection::new(Instant::now(), config, Limits::default())
        .map_err(|e| e.to_string())?;
    let e = |e: burrow_core::http2::ApiError| e.to_string();
    let mut names: HashMap<StreamId, &str> = HashMap::new();
    let mut bodies: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut ended: Vec<&str> = Vec::new();
    let mut closing = false;
    let mut inbox: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > give_up {
            return Err(format!("no end after 60 s; bodies {bodies:?}"));
        }
        let now = Instant::now();
        loop {
            match m.poll_output(now) {
                Output::Transmit => {
                    let n = m.transmit(&mut buf);
                    sock.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                }
                Output::Event(Event::Connected) => {
                    let control = m.open_control_stream().map_err(e)?;
                    m.send_data(control, Bytes::from_static(b"hello"))
                        .map_err(e)?;
                    let get = http::Request::get("http://app.test/page")
                        .header("x-eyeball", "1")
                        .body(())
                        .unwrap();
                    let http = m.open(RequestKind::Http, get, true).map_err(e)?;
                    let tcp = http::Request::get("http://192.0.2.7:5432/")
                        .body(())
                        .unwrap();
                    let tcp = m.open(RequestKind::Tcp, tcp, false).map_err(e)?;
                    m.send_data(tcp, Bytes::from_static(b"tcp")).map_err(e)?;
                    names.extend([(control, "control"), (http, "http"), (tcp, "tcp")]);
                }
                Output::Event(Event::Response { stream, response }) => {
                    let r = response.map_err(|e| e.to_string())?;
                    match names[&stream] {
                        "control" => assert_eq!((r.status, r.meta), (StatusCode::OK, None)),
                        "tcp" => assert_eq!(
                            (r.status, r.meta),
                            (StatusCode::OK, Some(ResponseMeta::Origin))
                        ),
                        _ => {
                            assert_eq!(
                                (r.status, r.meta),
                                (StatusCode::NOT_FOUND, Some(ResponseMeta::Origin))
                            );
                            let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
                            assert_eq!(cookies, ["a=1", "b=2"]);
                            assert_eq!(r.headers["content-type"], "text/html");
                            assert_eq!(r.headers["x-empty"], "");
                            assert_eq!(r.transport_headers["content-length"], "4");
                        }
                    }
                }
                Output::Event(Event::Stream(StreamEvent::Readable(id))) => loop {
                    let name = names[&id];
                    match m.read(id).map_err(e)? {
                        Read::Data(d) => bodies.entry(name).or_default().extend_from_slice(&d),
                        Read::Finished => {
                            ended.push(name);
                            break;
                        }
                        Read::Blocked => break,
                    }
                },
                Output::Event(Event::Closed(error)) => {
                    while let Output::Transmit = m.poll_output(now) {
                        let n = m.transmit(&mut buf);
                        let _ = sock.write_all(&buf[..n]);
                    }
                    assert_eq!(ended.len(), 3, "{ended:?}");
                    return error.map_or(Ok(()), |e| Err(format!("closed with {e}")));
                }
                Output::Event(other) => return Err(format!("unexpected {other:?}")),
                Output::Timeout(_) => break,
            }
        }
        let echoed = |name| bodies.get(name).map(Vec::as_slice);
        if !closing
            && echoed("control") == Some(b"echo:hello")
            && echoed("tcp") == Some(b"echo:tcp")
            && ended == ["http"]
        {
            for (&id, &name) in &names {
                if name != "http" {
                    m.finish(id, None).map_err(e)?;
                }
            }
            m.shutdown();
            closing = true;
        }
        if !inbox.is_empty() {
            let n = m.handle_input(now, Input::Received(&inbox));
            inbox.drain(..n);
            continue;
        }
        match sock.read(&mut buf) {
            Ok(0) => {
                m.handle_input(now, Input::PeerClosed);
            }
            Ok(n) => inbox.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
