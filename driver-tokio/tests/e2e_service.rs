//! `burrow service install|uninstall` as cloudflared's systemd installer, with every path
//! moved into a temp dir (`BURROW_SYSTEMD_UNIT_DIR`, `BURROW_SERVICE_CONFIG_DIR`,
//! `BURROW_SYSTEMD_RUN_DIR`) and `systemctl` replaced by a script that logs its arguments
//! (`BURROW_SYSTEMCTL`): the real /etc and systemd are never touched. The unit's `ExecStart`
//! is then run as systemd would, and must register with `burrow edge`, tell
//! `$NOTIFY_SOCKET` it is ready (the unit is `Type=notify`) and serve a request.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use burrow_core::settings::Credentials;
use burrow_tokio::testbed::{EdgeOpts, Proc, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const UNIT: &str = "cloudflared.service";

/// A fake host: unit dir, service config dir, systemd's run dir and a logging systemctl.
struct Host {
    root: PathBuf,
}

impl Host {
    fn new(label: &str, systemd: bool) -> Self {
        let root = std::env::temp_dir().join(format!("burrow-svc-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home")).expect("home");
        if systemd {
            std::fs::create_dir_all(root.join("run")).expect("run dir");
        }
        let h = Self { root };
        h.systemctl_script("echo \"$@\" >> \"$(dirname \"$0\")/systemctl.log\"");
        h
    }
    fn systemctl_script(&self, body: &str) {
        let path = self.root.join("systemctl");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fn unit(&self) -> PathBuf {
        self.root.join("units").join(UNIT)
    }
    fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.root.join("systemctl.log")).unwrap_or_default()
    }
    fn service(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        for (k, v) in [
            ("BURROW_SYSTEMD_UNIT_DIR", self.root.join("units")),
            ("BURROW_SERVICE_CONFIG_DIR", self.etc()),
            ("BURROW_SYSTEMD_RUN_DIR", self.root.join("run")),
            ("BURROW_SYSTEMCTL", self.root.join("systemctl")),
            ("HOME", self.root.join("home")),
        ] {
            cmd.env(k, v);
        }
        cmd.args(args).output().expect("run burrow service")
    }
    /// The unit's `ExecStart` words.
    fn exec_start(&self) -> Vec<String> {
        let unit = std::fs::read_to_string(self.unit()).expect("unit");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart line");
        line.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn exe() -> String {
    std::fs::canonicalize(BIN)
        .expect("binary path")
        .display()
        .to_string()
}

#[test]
fn token_install_runs_the_tunnel_and_uninstall_removes_it() {
    let bed = Testbed::create(Path::new(BIN), "e2e-svc", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let token = Credentials::from_file_json(
        "credentials",
        &std::fs::read(bed.credentials()).expect("credentials file"),
    )
    .expect("credentials")
    .to_token();
    let host = Host::new("token", true);
    let out = host.service(&["service", "install", &token]);
    assert!(out.status.success(), "{}", stderr(&out));

    let token_path = host.etc().join("token");
    let unit = std::fs::read_to_string(host.unit()).expect("unit");
    assert_eq!(
        unit,
        format!(
            "[Unit]\nDescription=Cloudflare Tunnel client\nAfter=network-online.target\n\
             Wants=network-online.target\n\n[Service]\nTimeoutStartSec=15\nType=notify\n\
             ExecStart={} --no-autoupdate tunnel run --token-file {}\nRestart=on-failure\n\
             RestartSec=5s\n\n[Install]\nWantedBy=multi-user.target\n",
            exe(),
            token_path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), token);
    let mode = std::fs::metadata(&token_path)
        .expect("token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        host.calls(),
        "enable cloudflared.service\ndaemon-reload\nstart cloudflared.service\n"
    );

    // A second install is refused before anything is touched.
    let again = host.service(&["service", "install", "another"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already installed at"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), token);
    assert_eq!(host.calls().lines().count(), 3);

    // What systemd would start: the unit's command line, with the test edge's address.
    let origin = common::origins::origin();
    let notify_path = host.root.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let words = host.exec_start();
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("TUNNEL_EDGE", eo.quic.to_string())
        .env("TUNNEL_CACERT", bed.ca())
        .env("TUNNEL_METRICS", "127.0.0.1:0")
        .env("TUNNEL_URL", format!("http://127.0.0.1:{origin}"));
    let mut daemon = Proc::spawn("service", cmd, bed.dir().join("service.log")).expect("spawn");
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        panic!("no READY=1 ({e}): {}", daemon.log_tail(2000));
    });
    assert_eq!(&buf[..n], b"READY=1");
    let (status, body) = common::client::request(
        eo.http.port(),
        "GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    daemon.check_alive().expect("service still running");
    drop(daemon);

    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!host.unit().exists() && !token_path.exists());
    assert_eq!(
        host.calls().lines().skip(3).collect::<Vec<_>>(),
        [
            "disable cloudflared.service",
            "stop cloudflared.service",
            "daemon-reload"
        ]
    );
    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not installed, skipping its uninstall"));
    // Nothing to disable the second time; systemd still reloads, as cloudflared does.
    assert_eq!(
        host.calls().lines().skip(6).collect::<Vec<_>>(),
        ["daemon-reload"]
    );
}

#[test]
fn config_install_copies_the_found_file_and_refuses_incomplete_or_conflicting_ones() {
    let host = Host::new("config", true);
    let home_cfg = host.root.join("home/.cloudflared/config.yml");
    std::fs::create_dir_all(home_cfg.parent().expect("dir")).expect("mkdir");

    // Found in cloudflared's default place (~/.cloudflared), but without credentials.
    std::fs::write(&home_cfg, "tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef\n").expect("write");
    let out = host.service(&["service", "install"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("must contain entries for the tunnel to run and its associated credentials"),
        "{}",
        stderr(&out)
    );
    assert!(!host.unit().exists() && host.calls().is_empty());

    let text = "tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef\ncredentials-file: /x/c.json\nurl: http://localhost:8080\n";
    std::fs::write(&home_cfg, text).expect("write");
    let out = host.service(&["service", "install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let service_cfg = host.etc().join("config.yml");
    assert_eq!(std::fs::read_to_string(&service_cfg).expect("copied"), text);
    assert_eq!(
        host.exec_start(),
        [
            exe(),
            "--no-autoupdate".into(),
            "--config".into(),
            service_cfg.display().to_string(),
            "tunnel".into(),
            "run".into()
        ]
    );
    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // cloudflared keeps the copied configuration.
    assert!(service_cfg.exists() && !host.unit().exists());

    // Now the home file would shadow the service's own: refused, as cloudflared.
    let out = host.service(&["service", "install"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("possible conflicting configuration"),
        "{}",
        stderr(&out)
    );
    // Installing the service's own file is no conflict.
    let own = service_cfg.display().to_string();
    let out = host.service(&["--config", &own, "service", "install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(host.unit().exists());
}

#[test]
fn without_systemd_the_unit_is_written_and_not_enabled_and_systemctl_errors_are_reported() {
    let host = Host::new("nosystemd", false);
    let bad = host.service(&["service", "install", "not-a-token"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("Provided Tunnel token is not valid"),
        "{}",
        stderr(&bad)
    );
    assert!(!host.unit().exists() && !host.etc().join("token").exists());

    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(
        r#"{"a":"acc","t":"6ff42ae2-765d-4adf-8112-31c55c1551ef","s":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="}"#,
    );
    let out = host.service(&["service", "install", &token]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("systemd is not running on this host"),
        "{}",
        stderr(&out)
    );
    assert!(host.unit().exists());
    assert!(host.calls().is_empty(), "systemctl ran: {}", host.calls());
    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!host.unit().exists() && host.calls().is_empty());

    // With systemd, a failing systemctl fails the install with its own words.
    std::fs::create_dir_all(host.root.join("run")).expect("run dir");
    host.systemctl_script("echo 'Failed to connect to bus' >&2; exit 1");
    let out = host.service(&["service", "install", &token]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enable cloudflared.service")
            && stderr(&out).contains("Failed to connect to bus"),
        "{}",
        stderr(&out)
    );
}
