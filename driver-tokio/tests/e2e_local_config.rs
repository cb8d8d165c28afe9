//! `updateLocalConfiguration` as the edge receives it: `burrow edge --local-config-dir` records
//! what connection 0 sends, and the bytes are checked against what cloudflared 2026.8.2 writes
//! for the same command line (its `__configuration_flags`, its normalised rules, its
//! warp-routing), for `--url` without a config file, a config file with rules, and neither.
//! With `BURROW_CLOUDFLARED` set, stock cloudflared runs the same command line against the
//! same edge and its bytes must be identical to burrow's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// An edge recording local configurations, and a clean `$HOME` so neither connector finds a
/// config.yml of its own.
struct Bed {
    bed: Testbed,
    _edge: Proc,
    edge: std::net::SocketAddr,
    records: PathBuf,
    home: PathBuf,
}

impl Bed {
    fn new(label: &str) -> Self {
        let bed = Testbed::create(Path::new(BIN), label, "app", &["app.test"]).expect("tunnel");
        let records = bed.dir().join("records");
        let home = bed.dir().join("home");
        std::fs::create_dir_all(&records).expect("records dir");
        std::fs::create_dir_all(&home).expect("home dir");
        let mut o = EdgeOpts::loopback().expect("ports");
        o.extra = vec!["--local-config-dir".into(), records.display().to_string()];
        let edge_proc = bed.edge(&o).expect("edge");
        Self {
            edge: o.quic,
            _edge: edge_proc,
            bed,
            records,
            home,
        }
    }

    /// Runs `bin` with `args` (`{edge}`, `{ca}`, `{creds}`, `{id}`, `{dir}` replaced) and
    /// returns the configuration the edge recorded from it.
    fn record(
        &self,
        name: &'static str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> String {
        let record = self.records.join(format!("{}.json", self.bed.id));
        let _ = std::fs::remove_file(&record);
        let mut cmd = Command::new(bin);
        for a in args {
            cmd.arg(
                a.replace("{edge}", &self.edge.to_string())
                    .replace("{ca}", &self.bed.ca().display().to_string())
                    .replace("{creds}", &self.bed.credentials().display().to_string())
                    .replace("{id}", &self.bed.id)
                    .replace("{dir}", &self.bed.dir().display().to_string()),
            );
        }
        cmd.env("HOME", &self.home);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = self
            .bed
            .dir()
            .join(format!("{}.log", name.replace(' ', "-")));
        let mut p = Proc::spawn(name, cmd, log).expect("spawn");
        testbed::wait_for(
            Duration::from_secs(30),
            "the recorded configuration",
            || {
                p.check_alive()?;
                Ok(record.exists())
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::read_to_string(&record).expect("record")
    }

    /// burrow's bytes, and the same from cloudflared when `BURROW_CLOUDFLARED` is set.
    fn check(&self, args: &[&str], env: &[(&str, &str)], want: &str) {
        let burrow = self.record("burrow tunnel run", Path::new(BIN), args, env);
        assert_eq!(burrow, want, "burrow's local configuration");
        if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
            let mut cfd_args = args.to_vec();
            // cloudflared's own DNS lookups would pick datagram v2: make it quiet and fixed.
            let run = cfd_args.iter().position(|a| *a == "run").expect("run");
            cfd_args.insert(run + 1, "support_datagram_v3_2");
            cfd_args.insert(run + 1, "--features");
            let stock = self.record("cloudflared tunnel run", Path::new(&cfd), &cfd_args, env);
            eprintln!("cloudflared sent {} bytes", stock.len());
            assert_eq!(burrow, stock, "burrow and cloudflared send the same bytes");
        }
    }
}

#[test]
fn url_without_a_config_file() {
    let bed = Bed::new("lc-url");
    let origin = testbed::free_tcp().expect("port").port();
    let url = format!("localhost:{origin}/base");
    let want = format!(
        concat!(
            r#"{{"__configuration_flags":{{"autoupdate-freq":"24h0m0s","edge-ip-version":"4","loglevel":"debug","#,
            r#""metrics":"127.0.0.1:0","no-autoupdate":"true","protocol":"quic","retries":"3"}},"#,
            r#""ingress":[{{"service":"http://localhost:{}/base","originRequest":{{"httpHostHeader":"in.test","noTLSVerify":true}}}}],"#,
            r#""warp-routing":{{}}}}"#
        ),
        origin
    );
    bed.check(
        &[
            "tunnel",
            "--edge",
            "{edge}",
            "--cacert",
            "{ca}",
            "--no-autoupdate",
            "--autoupdate-freq",
            "24h",
            "--metrics",
            "127.0.0.1:0",
            "--loglevel",
            "debug",
            "--retries",
            "3",
            "--edge-ip-version",
            "4",
            "run",
            "--protocol",
            "quic",
            "--url",
            &url,
            "--no-tls-verify",
            "--http-host-header",
            "in.test",
            "--credentials-file",
            "{creds}",
            "{id}",
        ],
        &[],
        &want,
    );
}

#[test]
fn config_file_rules_normalised() {
    let bed = Bed::new("lc-file");
    let origin = testbed::free_tcp().expect("port").port();
    let config = bed.bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\nloglevel: info\ntransport-loglevel: warn\n\
             originRequest:\n  connectTimeout: 1m30s\n  noTLSVerify: true\n  keepAliveConnections: 10\n\
             ingress:\n\
             \x20 - hostname: a.test\n    path: \"^/api<v1>&\"\n    service: HTTP://127.0.0.1:{origin}\n\
             \x20   originRequest:\n      httpHostHeader: inner.test\n      tlsTimeout: 1500ms\n\
             \x20     access:\n        required: true\n        teamName: team\n        audTag: []\n\
             \x20 - hostname: \"*.wild.test\"\n    service: ssh://127.0.0.1\n\
             \x20 - hostname: h.test\n    service: hello-world\n    originRequest:\n\
             \x20     http2Origin: true\n      proxyAddress: 0.0.0.0\n      proxyPort: 8000\n\
             \x20     connectTimeout: 30s\n\
             \x20 - service: http_status:404\n\
             warp-routing:\n  maxActiveFlows: 7\n  connectTimeout: 10s\n",
            id = bed.bed.id,
            creds = bed.bed.credentials().display(),
        ),
    )
    .expect("config");
    let want = format!(
        concat!(
            r#"{{"__configuration_flags":{{"loglevel":"info","protocol":"quic","transport-loglevel":"warn"}},"ingress":["#,
            r#"{{"hostname":"a.test","path":"^/api\u003cv1\u003e\u0026","service":"http://127.0.0.1:{}","originRequest":{{"#,
            r#""connectTimeout":90,"tlsTimeout":1.5,"keepAliveConnections":10,"httpHostHeader":"inner.test","noTLSVerify":true,"#,
            r#""access":{{"required":true,"teamName":"team","audTag":[]}}}}}},"#,
            r#"{{"hostname":"*.wild.test","service":"ssh://127.0.0.1:22","originRequest":{{"connectTimeout":90,"keepAliveConnections":10,"noTLSVerify":true}}}},"#,
            r#"{{"hostname":"h.test","service":"hello_world","originRequest":{{"keepAliveConnections":10,"noTLSVerify":true,"#,
            r#""proxyAddress":"0.0.0.0","proxyPort":8000,"http2Origin":true}}}},"#,
            r#"{{"service":"http_status:404","originRequest":{{"connectTimeout":90,"keepAliveConnections":10,"noTLSVerify":true}}}}],"#,
            r#""warp-routing":{{"connectTimeout":10,"maxActiveFlows":7}}}}"#
        ),
        origin
    );
    let config = config.display().to_string();
    bed.check(
        &[
            "tunnel",
            "--config",
            &config,
            "--edge",
            "{edge}",
            "--cacert",
            "{ca}",
            "run",
            "--protocol",
            "quic",
        ],
        &[],
        &want,
    );
}

#[test]
fn no_rules_and_no_origin() {
    let bed = Bed::new("lc-none");
    let want = concat!(
        r#"{"__configuration_flags":{"metrics":"127.0.0.1:0"},"ingress":[{"service":"http_status:503","#,
        r#""originRequest":{"connectTimeout":0,"tlsTimeout":0,"tcpKeepAlive":0,"keepAliveConnections":0,"#,
        r#""keepAliveTimeout":0,"proxyAddress":""}}],"warp-routing":{}}"#
    );
    bed.check(
        &[
            "tunnel",
            "--edge",
            "{edge}",
            "--cacert",
            "{ca}",
            "run",
            "--credentials-file",
            "{creds}",
            "{id}",
        ],
        &[("TUNNEL_METRICS", "127.0.0.1:0")],
        want,
    );
}

#[test]
fn bastion_socks5_http2_origin_and_proxy_flags() {
    let bed = Bed::new("lc-flags");
    let want = concat!(
        r#"{"__configuration_flags":{"protocol":"quic"},"ingress":[{"service":"bastion","originRequest":{"#,
        r#""bastionMode":true,"proxyAddress":"0.0.0.0","proxyPort":1080,"proxyType":"socks","http2Origin":true}}],"#,
        r#""warp-routing":{}}"#
    );
    // --bastion wins over --url, as in cloudflared; the environment sets the others.
    bed.check(
        &[
            "tunnel",
            "--edge",
            "{edge}",
            "--cacert",
            "{ca}",
            "--bastion",
            "run",
            "--protocol",
            "quic",
            "--url",
            "tcp://127.0.0.1:1",
            "--socks5",
            "--proxy-address",
            "0.0.0.0",
            "--credentials-file",
            "{creds}",
            "{id}",
        ],
        &[
            ("TUNNEL_PROXY_PORT", "1080"),
            ("TUNNEL_ORIGIN_ENABLE_HTTP2", "true"),
        ],
        want,
    );
}
