//! `burrow service install|uninstall` as cloudflared's installer under systemd, OpenRC and
//! SysV, with every path moved into a temp dir (`BURROW_SYSTEMD_UNIT_DIR`,
//! `BURROW_SERVICE_CONFIG_DIR`, `BURROW_SYSTEMD_RUN_DIR`, `BURROW_SYSCONF_DIR`,
//! `BURROW_OPENRC_RUN`) and `systemctl`, `service`, `rc-update` and `rc-service` replaced by
//! scripts that log their arguments: the real /etc and init system are never touched. The
//! unit's `ExecStart` is then run as systemd would, and must register with `burrow edge`, tell
//! `$NOTIFY_SOCKET` it is ready (the unit is `Type=notify`) and serve a request; the SysV
//! script is run with `start`, `status` and `stop`, and must do the same.

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

/// A fake host: unit dir, service config dir, systemd's run dir, /etc for init scripts, and
/// logging `systemctl`, `service`, `rc-update` and `rc-service`.
struct Host {
    root: PathBuf,
}

/// The init system a fake host pretends to run.
#[derive(Clone, Copy, PartialEq)]
enum Init {
    Systemd,
    OpenRc,
    SysV,
}

impl Host {
    fn new(label: &str, init: Init) -> Self {
        let root = std::env::temp_dir().join(format!("burrow-svc-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home")).expect("home");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        if init == Init::Systemd {
            std::fs::create_dir_all(root.join("run")).expect("run dir");
        }
        if init == Init::OpenRc {
            std::fs::write(root.join("openrc-run"), "").expect("openrc-run");
        }
        let h = Self { root };
        h.systemctl_script("echo \"$@\" >> \"$(dirname \"$0\")/systemctl.log\"");
        for program in ["service", "rc-update", "rc-service"] {
            let path = h.root.join("bin").join(program);
            std::fs::write(
                &path,
                "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> \"$(dirname \"$0\")/../init.log\"\n",
            )
            .expect("script");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        h
    }
    /// What the fake `service`, `rc-update` and `rc-service` were asked, a line each.
    fn init_calls(&self) -> String {
        std::fs::read_to_string(self.root.join("init.log")).unwrap_or_default()
    }
    /// The fake host's /etc.
    fn sysconf(&self) -> PathBuf {
        self.root.join("sysconf")
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
            ("BURROW_SYSCONF_DIR", self.sysconf()),
            ("BURROW_OPENRC_RUN", self.root.join("openrc-run")),
            ("HOME", self.root.join("home")),
        ] {
            cmd.env(k, v);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.root.join("bin")];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
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

/// The tunnel token of `bed`'s credentials.
fn token_of(bed: &Testbed) -> String {
    Credentials::from_file_json(
        "credentials",
        &std::fs::read(bed.credentials()).expect("credentials file"),
    )
    .expect("credentials")
    .to_token()
}

#[test]
fn token_install_runs_the_tunnel_and_uninstall_removes_it() {
    let bed = Testbed::create(Path::new(BIN), "e2e-svc", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let token = token_of(&bed);
    let host = Host::new("token", Init::Systemd);
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
    let host = Host::new("config", Init::Systemd);
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

/// A token whose credentials no edge knows: enough for an install.
fn some_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(
        r#"{"a":"acc","t":"6ff42ae2-765d-4adf-8112-31c55c1551ef","s":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="}"#,
    )
}

#[test]
fn bad_tokens_and_systemctl_errors_are_reported() {
    let host = Host::new("errors", Init::Systemd);
    let bad = host.service(&["service", "install", "not-a-token"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("Provided Tunnel token is not valid"),
        "{}",
        stderr(&bad)
    );
    assert!(!host.unit().exists() && !host.etc().join("token").exists());

    // A failing systemctl fails the install with its own words.
    host.systemctl_script("echo 'Failed to connect to bus' >&2; exit 1");
    let out = host.service(&["service", "install", &some_token()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enable cloudflared.service")
            && stderr(&out).contains("Failed to connect to bus"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn openrc_install_writes_cloudflareds_script_and_adds_it_to_the_default_runlevel() {
    let host = Host::new("openrc", Init::OpenRc);
    let token = some_token();
    let out = host.service(&["service", "install", &token]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Using OpenRC"), "{}", stderr(&out));
    assert!(!host.unit().exists(), "no systemd unit under OpenRC");
    let script = host.sysconf().join("init.d/cloudflared");
    let mode = std::fs::metadata(&script)
        .expect("script")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let conf = std::fs::read_to_string(host.sysconf().join("conf.d/cloudflared")).expect("conf.d");
    assert!(conf.contains("#cloudflared_user="));
    assert_eq!(
        host.init_calls(),
        "rc-update add cloudflared default\nrc-service cloudflared start\n"
    );
    // The words openrc-run would start, read back by a shell as openrc-run reads them.
    let printed = Command::new("sh")
        .arg("-c")
        .arg(r#". "$1"; eval set -- $command $command_args; for w in "$@"; do echo "$w"; done"#)
        .arg("sh")
        .arg(&script)
        .output()
        .expect("sh");
    let token_path = host.etc().join("token");
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        format!(
            "{}\n--no-autoupdate\ntunnel\nrun\n--token-file\n{}\n",
            exe(),
            token_path.display()
        )
    );
    let again = host.service(&["service", "install", &token]);
    assert!(!again.status.success() && stderr(&again).contains("already installed at"));

    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!script.exists() && !host.sysconf().join("conf.d/cloudflared").exists());
    assert!(!token_path.exists());
    assert_eq!(
        host.init_calls().lines().skip(2).collect::<Vec<_>>(),
        [
            "rc-service cloudflared stop",
            "rc-update del cloudflared default"
        ]
    );
}

#[test]
fn sysv_install_writes_a_script_that_starts_checks_and_stops_the_tunnel() {
    let bed = Testbed::create(Path::new(BIN), "e2e-sysv", "app", &["app.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let token = token_of(&bed);
    let host = Host::new("sysv", Init::SysV);
    for level in ["rc0.d", "rc2.d", "rc3.d", "rc6.d"] {
        std::fs::create_dir_all(host.sysconf().join(level)).expect("rc dir");
    }
    let out = host.service(&["service", "install", &token]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Using SysV"), "{}", stderr(&out));
    let script = host.sysconf().join("init.d/cloudflared");
    assert_eq!(host.init_calls(), "service cloudflared start\n");
    for (level, link) in [
        ("rc2.d", "S50et"),
        ("rc3.d", "S50et"),
        ("rc0.d", "K02et"),
        ("rc6.d", "K02et"),
    ] {
        assert_eq!(
            std::fs::read_link(host.sysconf().join(level).join(link)).expect("link"),
            script,
            "{level}"
        );
    }

    // Run the script as init would, with its pid file and logs moved by sysconfig/cloudflared
    // (which it reads, as cloudflared's) and the test edge in the environment.
    let var = host.root.join("var");
    std::fs::create_dir_all(&var).expect("var");
    std::fs::create_dir_all(host.sysconf().join("sysconfig")).expect("sysconfig");
    std::fs::write(
        host.sysconf().join("sysconfig/cloudflared"),
        format!(
            "pid_file={v}/cloudflared.pid\nstdout_log={v}/cloudflared.log\nstderr_log={v}/cloudflared.err\n",
            v = var.display()
        ),
    )
    .expect("sysconfig");
    let origin = common::origins::origin();
    let run = |verb: &str| {
        Command::new("sh")
            .arg(&script)
            .arg(verb)
            .env("TUNNEL_EDGE", eo.quic.to_string())
            .env("TUNNEL_CACERT", bed.ca())
            .env("TUNNEL_METRICS", "127.0.0.1:0")
            .env("TUNNEL_URL", format!("http://127.0.0.1:{origin}"))
            .output()
            .expect("sh")
    };
    let started = run("start");
    assert!(started.status.success(), "{}", stderr(&started));
    let log = || std::fs::read_to_string(var.join("cloudflared.err")).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log().contains("Registered tunnel connection") {
        assert!(
            std::time::Instant::now() < deadline,
            "no registration:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = common::client::request(
        eo.http.port(),
        "GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let pid: u32 = std::fs::read_to_string(var.join("cloudflared.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(String::from_utf8_lossy(&run("status").stdout), "Running\n");
    assert_eq!(
        String::from_utf8_lossy(&run("start").stdout),
        "Already started\n"
    );
    let stopped = run("stop");
    assert!(
        String::from_utf8_lossy(&stopped.stdout).ends_with("Stopped\n"),
        "{}",
        String::from_utf8_lossy(&stopped.stdout)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the tunnel exited"
    );
    assert!(!var.join("cloudflared.pid").exists());
    let status = run("status");
    assert_eq!(status.status.code(), Some(1));

    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!script.exists() && !host.etc().join("token").exists());
    assert!(!host.sysconf().join("rc2.d/S50et").exists());
    assert_eq!(
        host.init_calls(),
        "service cloudflared start\nservice cloudflared stop\n"
    );
    let out = host.service(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not installed, skipping its uninstall"));
    assert_eq!(
        host.init_calls().lines().count(),
        2,
        "nothing to stop the second time"
    );
}
