//! `originRequest.access` checks run against either connector: the team's key set served by a
//! local HTTP server (the debug builds' `BURROW_TEST_ACCESS_CERTS_BASE`; `Host` names the
//! team), an origin that counts what reaches it, tokens signed with the test keys, and the
//! expectations: no token or another audience 403, tokens that do not verify and teams whose
//! keys cannot be fetched the error response (502 at the edge); only a good token reaches the
//! origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

const JWKS: &str = include_str!("../../../core/tests/data/access/jwks.json");
const TEAM_KEY: &str = include_str!("../../../core/tests/data/access/team_key.pem");
const OTHER_KEY: &str = include_str!("../../../core/tests/data/access/other_key.pem");

/// The environment variable that points a debug build's key fetches at [`key_server`].
pub const CERTS_BASE: &str = "BURROW_TEST_ACCESS_CERTS_BASE";

/// Serves `JWKS` for `team.cloudflareaccess.com` and 500 for any other team; counts requests.
pub fn key_server(hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            hits.fetch_add(1, Ordering::Relaxed);
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut host = String::new();
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                }
                if let Some(h) = line.to_ascii_lowercase().strip_prefix("host:") {
                    host = h.trim().to_owned();
                }
            }
            let mut w = s;
            let ok = host == "team.cloudflareaccess.com" && path == "/cdn-cgi/access/certs";
            let (status, body) = if ok {
                ("200 OK", JWKS)
            } else {
                ("500 Internal Server Error", "no")
            };
            let _ = write!(
                w,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// An origin answering 200 "origin saw <token>" and counting requests.
pub fn origin(hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let hits = hits.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut w = s;
                loop {
                    let mut token = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("cf-access-jwt-assertion") {
                                token = v.trim().to_owned();
                            }
                        }
                    }
                    hits.fetch_add(1, Ordering::Relaxed);
                    let body = format!("origin saw {}", token.len());
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    addr
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &str, iss: &str, aud: &str, exp: u64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": iss, "aud": [aud], "exp": exp, "sub": "someone"});
    jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// GET `/` for `host` through the edge, with `token` if any: (status, body).
fn get(http: SocketAddr, host: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Cf-Access-Jwt-Assertion: {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = super::client::status_of(&out);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The ingress (YAML under `ingress:`): `app.test` requires team `team`'s Access, `down.test`
/// team `down`'s (whose keys cannot be had), anything else is open; all go to `origin`.
pub fn access_ingress(origin: SocketAddr) -> String {
    format!(
        "- hostname: app.test\n  service: http://{origin}\n  originRequest:\n    access:\n      required: true\n      teamName: team\n      audTag: [aud-app]\n\
         - hostname: down.test\n  service: http://{origin}\n  originRequest:\n    access:\n      required: true\n      teamName: down\n      audTag: [aud-app]\n\
         - service: http://{origin}\n"
    )
}

/// The config.yml of tunnel `id` (credentials file `creds`) serving [`access_ingress`].
pub fn access_config(id: &str, creds: &Path, origin: SocketAddr) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "tunnel: {id}\ncredentials-file: {creds}\ningress:\n{ingress}",
        id = q(id),
        creds = q(&creds.to_string_lossy()),
        ingress = access_ingress(origin),
    )
}

/// `bin tunnel --config config run` on one connection to the edge at `edge` (trusting `ca`),
/// with its key fetches pointed at [`key_server`] `keys`.
pub fn access_connector(
    bin: &Path,
    config: &Path,
    (edge, ca): (SocketAddr, &Path),
    metrics: SocketAddr,
    keys: SocketAddr,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env(CERTS_BASE, format!("http://{keys}"))
        .args(["tunnel", "--config"])
        .arg(config)
        .args(["--edge", &edge.to_string(), "--cacert"])
        .arg(ca)
        .args([
            "--metrics",
            &metrics.to_string(),
            "--ha-connections",
            "1",
            "--loglevel",
            "debug",
            "run",
        ]);
    cmd
}

/// The checks, through the edge's HTTP listener `http`, of a connector serving
/// [`access_ingress`] with its key fetches pointed at [`key_server`].
pub fn check_access(
    http: SocketAddr,
    origin_hits: &AtomicUsize,
    key_hits: &AtomicUsize,
    log_tail: &dyn Fn() -> String,
) {
    let team = "https://team.cloudflareaccess.com";
    let good = token(TEAM_KEY, team, "aud-app", now() + 600);
    // The keys are fetched in the background after start: until then, refusal.
    let mut passed = None;
    for _ in 0..100 {
        let r = get(http, "app.test", Some(&good));
        if r.0 == 200 {
            passed = Some(r);
            break;
        }
        assert_eq!(
            r.0, 502,
            "before the keys arrive a token is refused, never passed: {r:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = passed.unwrap_or_else(|| panic!("never passed\n{}", log_tail()));
    assert_eq!(
        (status, body),
        (200, format!("origin saw {}", good.len())),
        "the token reaches the origin"
    );
    let served = origin_hits.load(Ordering::Relaxed);

    assert_eq!(get(http, "app.test", None).0, 403, "no token");
    assert_eq!(
        get(
            http,
            "app.test",
            Some(&token(TEAM_KEY, team, "aud-other", now() + 600))
        )
        .0,
        403,
        "another audience"
    );
    let (status, body) = get(
        http,
        "app.test",
        Some(&token(OTHER_KEY, team, "aud-app", now() + 600)),
    );
    assert_eq!(status, 502, "a forged signature: {body}");
    assert!(body.contains("AccessJWTValidator"), "{body}");
    assert_eq!(
        get(
            http,
            "app.test",
            Some(&token(TEAM_KEY, team, "aud-app", now() - 5))
        )
        .0,
        502,
        "expired"
    );
    assert_eq!(
        get(
            http,
            "app.test",
            Some(&token(
                TEAM_KEY,
                "https://evil.cloudflareaccess.com",
                "aud-app",
                now() + 600
            ))
        )
        .0,
        502,
        "another issuer"
    );
    // Team "down" has no keys to be had: even a well-formed token for it is refused.
    let down = token(
        TEAM_KEY,
        "https://down.cloudflareaccess.com",
        "aud-app",
        now() + 600,
    );
    assert_eq!(
        get(http, "down.test", Some(&down)).0,
        502,
        "keys that cannot be fetched mean refusal"
    );
    assert_eq!(get(http, "down.test", None).0, 403);
    assert_eq!(
        origin_hits.load(Ordering::Relaxed),
        served,
        "no refused request reached the origin"
    );
    // The unprotected rule is unaffected.
    assert_eq!(get(http, "open.test", None).0, 200);
    assert!(
        key_hits.load(Ordering::Relaxed) >= 2,
        "both teams' keys were asked for"
    );
}
