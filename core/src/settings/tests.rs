//! Settings: flags over file over defaults, and the checks.

use std::collections::HashMap;

use clap::{Parser, Subcommand};
use proptest::strategy::Strategy;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    Tunnel(Box<TunnelArgs>),
    Service(service::ServiceArgs),
}

/// Settings from a `burrow tunnel ...` command line and config.yml text.
fn settings(args: &[&str], yaml: &str) -> Result<Settings, SetupError> {
    let t = tunnel_args(args);
    let TunnelCommand::Run(run) = t.command;
    let file = ConfigFile::from_yaml(yaml).expect("file parses");
    Settings::merge(&t.common, &run, &file)
}

/// What the supervisor starts with for `rc`: no edge CA, a nil connector id, default ICMP, and
/// `percentage` as the protocol percentage record.
fn supervisor_config(
    rc: &RunConfig,
    percentage: Option<&str>,
) -> crate::tunnel::supervisor::SupervisorConfig {
    served_supervisor_config(rc, percentage, false)
}

/// [`supervisor_config`] for a driver that serves the management service when `management`.
fn served_supervisor_config(
    rc: &RunConfig,
    percentage: Option<&str>,
    management: bool,
) -> crate::tunnel::supervisor::SupervisorConfig {
    rc.supervisor_config(
        rustls::RootCertStore::empty(),
        uuid::Uuid::nil(),
        crate::icmp::RouterConfig::default(),
        percentage,
        management,
    )
    .unwrap()
}

const FILE: &str = "
tunnel: from-file
edge: [192.0.2.1:7844, 192.0.2.2:7844]
ha-connections: 2
grace-period: 10s
edge-ip-version: '6'
metrics: 127.0.0.1:2000
loglevel: debug
features: [a, b]
max-active-flows: 7
icmpv4-src: 192.0.2.9
url: http://localhost:3000
no-autoupdate: true
";

#[test]
fn without_flags_the_file_beats_the_defaults() {
    let s = settings(&["run"], FILE).unwrap();
    assert_eq!(s.edge, ["192.0.2.1:7844", "192.0.2.2:7844"]);
    assert_eq!(s.ha_connections, 2);
    assert_eq!(s.grace_period, Duration::from_secs(10));
    assert_eq!(s.ip_version, IpVersion::V6);
    assert_eq!(s.metrics, "127.0.0.1:2000");
    assert_eq!(s.loglevel, "debug");
    assert_eq!(s.features, ["a", "b"]);
    assert_eq!(s.max_active_flows, Some(7));
    assert_eq!(s.icmpv4_src, Some("192.0.2.9".parse().unwrap()));
    assert_eq!(s.url.as_deref(), Some("http://localhost:3000"));
    assert_eq!(s.tunnel.as_deref(), Some("from-file"));
}

#[test]
fn without_either_the_defaults_hold() {
    let s = settings(&["run"], "").unwrap();
    assert!(s.edge.is_empty(), "DNS SRV");
    assert_eq!(s.ha_connections, 4);
    assert_eq!(s.grace_period, Duration::from_secs(30));
    assert_eq!(s.ip_version, IpVersion::Auto);
    assert_eq!(s.metrics, "localhost:0");
    assert_eq!(s.loglevel, "info");
    assert!(s.features.is_empty());
    assert_eq!(s.max_active_flows, None);
    assert!(!s.post_quantum);
}

#[test]
fn flags_beat_the_file_before_or_after_run() {
    let s = settings(
        &[
            "--ha-connections",
            "3",
            "--grace-period",
            "1m",
            "--edge",
            "198.51.100.1:7844",
            "run",
            "--metrics",
            "127.0.0.1:3000",
            "--edge-ip-version",
            "4",
            "--loglevel",
            "warn",
            "-F",
            "c",
            "--max-active-flows",
            "0",
            "--url",
            "http://localhost:4000",
            "from-flag",
        ],
        FILE,
    )
    .unwrap();
    assert_eq!(
        s.edge,
        ["198.51.100.1:7844"],
        "a list flag replaces the file's"
    );
    assert_eq!(s.ha_connections, 3);
    assert_eq!(
        s.grace_period,
        Duration::from_secs(60),
        "an explicit --grace-period is not overridden by the file"
    );
    assert_eq!(s.ip_version, IpVersion::V4);
    assert_eq!(s.metrics, "127.0.0.1:3000");
    assert_eq!(s.loglevel, "warn");
    assert_eq!(s.features, ["c"]);
    assert_eq!(s.max_active_flows, Some(0));
    assert_eq!(s.url.as_deref(), Some("http://localhost:4000"));
    assert_eq!(s.tunnel.as_deref(), Some("from-flag"));
    // Flags equal to the defaults still count as given.
    let s = settings(
        &["--grace-period", "30s", "--ha-connections", "4", "run"],
        FILE,
    )
    .unwrap();
    assert_eq!(s.grace_period, Duration::from_secs(30));
    assert_eq!(s.ha_connections, 4);
}

#[test]
fn merged_values_are_checked_wherever_they_came_from() {
    let e = |args: &[&str], yaml: &str| settings(args, yaml).unwrap_err().to_string();
    assert!(e(&["run"], "grace-period: 4m\n").contains("too long"));
    assert!(e(&["--grace-period", "4m", "run"], "").contains("too long"));
    // The file's too-long value does not matter when the flag overrides it.
    assert!(settings(&["--grace-period", "1s", "run"], "grace-period: 4m\n").is_ok());
    assert!(e(&["run"], "protocol: h3\n").contains("unknown protocol h3"));
    assert_eq!(
        settings(&["run"], "protocol: http2\n").unwrap().protocol,
        ProtocolFlag::Fixed(crate::tunnel::protocol::Protocol::Http2)
    );
    assert!(e(&["run"], "edge-ip-version: '5'\n").contains("edge-ip-version 5"));
    assert!(settings(&["run", "-p", "quic"], "protocol: http2\n").is_ok());
}

#[test]
fn post_quantum_from_flag_or_file() {
    assert!(
        settings(&["run"], "post-quantum: true\n")
            .unwrap()
            .post_quantum
    );
    assert!(
        settings(&["run", "--pq"], "post-quantum: false\n")
            .unwrap()
            .post_quantum
    );
    assert!(
        !settings(&["run"], "post-quantum: false\n")
            .unwrap()
            .post_quantum
    );
}

#[test]
fn flags_before_tunnel_move_after_it_and_nothing_else_moves() {
    let argv = |a: &[&str]| -> Vec<String> {
        cloudflared_argv(a.iter().map(Into::into).collect())
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        argv(&[
            "burrow",
            "--no-autoupdate",
            "--metrics",
            "x",
            "tunnel",
            "run",
            "id"
        ]),
        [
            "burrow",
            "tunnel",
            "--no-autoupdate",
            "--metrics",
            "x",
            "run",
            "id"
        ]
    );
    assert_eq!(
        argv(&["burrow", "--config", "c.yml", "service", "install"]),
        ["burrow", "service", "--config", "c.yml", "install"]
    );
    // `run`'s flags that cloudflared's `tunnel` also takes move after `run`, with values.
    assert_eq!(
        argv(&[
            "burrow",
            "--no-autoupdate",
            "tunnel",
            "--url",
            "http://x",
            "--metrics",
            "m",
            "--no-tls-verify",
            "--protocol=http2",
            "--credentials-file",
            "c.json",
            "run",
            "id"
        ]),
        [
            "burrow",
            "tunnel",
            "--no-autoupdate",
            "--metrics",
            "m",
            "run",
            "--url",
            "http://x",
            "--no-tls-verify",
            "--protocol=http2",
            "--credentials-file",
            "c.json",
            "id"
        ]
    );
    // Go's single-dash long names (`-no-autoupdate=true`, `-url x`, `-pq`), before `tunnel`
    // too; not short flags, unknown names, values after `--`, or outside tunnel and service.
    assert_eq!(
        argv(&[
            "burrow",
            "-no-autoupdate=true",
            "tunnel",
            "-config",
            "c.yml",
            "-post-quantum=false",
            "run",
            "-url",
            "http://x",
            "-p",
            "quic",
            "-pq",
            "-nope",
            "id",
            "--",
            "-url"
        ]),
        [
            "burrow",
            "tunnel",
            "--no-autoupdate=true",
            "--config",
            "c.yml",
            "run",
            "--post-quantum=false",
            "--url",
            "http://x",
            "-p",
            "quic",
            "--pq",
            "-nope",
            "id",
            "--",
            "-url"
        ]
    );
    assert_eq!(
        argv(&["burrow", "service", "install", "-no-update-service=1"]),
        ["burrow", "service", "install", "--no-update-service=1"]
    );
    for same in [
        &["burrow", "tunnel", "--no-autoupdate", "run"][..],
        &["burrow", "edge", "-url", "x"],
        &["burrow", "edge", "--dir", "tunnel"],
        &["burrow", "edge", "--url", "x", "tunnel", "run"],
        &["burrow", "--version"],
    ] {
        assert_eq!(argv(same), same);
    }
}

#[test]
fn single_origin_flags_and_keys_shape_the_one_rule() {
    let s = settings(
        &[
            "run",
            "--url",
            "https://localhost:8443",
            "--http-host-header",
            "internal.test",
            "--no-tls-verify",
        ],
        "origin-ca-pool: /etc/ca.pem\nhttp-host-header: from-file\nno-chunked-encoding: true\n",
    )
    .unwrap();
    let service = single_origin(&s).unwrap().unwrap();
    let ingress = Ingress::single_with(service, &s.origin).unwrap();
    let o = &ingress.rules()[0].origin.origin_request;
    assert_eq!(
        o.http_host_header.as_deref(),
        Some("internal.test"),
        "flag over file"
    );
    assert!(o.no_tls_verify);
    assert_eq!(o.ca_pool.as_deref(), Some("/etc/ca.pem"), "the file's key");
    assert!(o.disable_chunked_encoding);
    let order = settings(
        &[
            "run",
            "--url",
            "http://a:1",
            "--unix-socket",
            "/s",
            "--hello-world",
        ],
        "",
    )
    .unwrap();
    assert_eq!(single_origin(&order).unwrap(), Some(Service::HelloWorld));
    let order = settings(&["run", "--url", "http://a:1", "--unix-socket", "/s"], "").unwrap();
    assert_eq!(
        single_origin(&order).unwrap(),
        Some(url_service("http://a:1").unwrap())
    );
}

#[test]
fn bastion_socks5_http2_origin_and_proxy_flags_shape_the_one_rule() {
    // --bastion comes after --hello-world and before --url, and sets bastionMode.
    let s = settings(
        &[
            "run",
            "--url",
            "tcp://127.0.0.1:22",
            "--bastion",
            "--http2-origin",
        ],
        "",
    )
    .unwrap();
    let service = single_origin(&s).unwrap().unwrap();
    assert_eq!(service, Service::Bastion);
    let ingress = Ingress::single_with(service, &s.origin).unwrap();
    let o = &ingress.rules()[0].origin.origin_request;
    assert!(o.bastion_mode && o.http2_origin && !o.socks);
    let s = settings(&["run", "--hello-world", "--bastion"], "").unwrap();
    assert_eq!(single_origin(&s).unwrap(), Some(Service::HelloWorld));

    // --socks5 is proxyType socks, which only TCP origins act on.
    let s = settings(
        &["run", "--url", "ssh://127.0.0.1:2222", "--socks5"],
        "proxy-address: 0.0.0.0\nproxy-port: 1080\n",
    )
    .unwrap();
    assert_eq!(s.origin.proxy_type.as_deref(), Some("socks"));
    assert_eq!(s.origin.proxy_address.as_deref(), Some("0.0.0.0"));
    assert_eq!(s.origin.proxy_port, Some(1080));
    let ingress = Ingress::single_with(single_origin(&s).unwrap().unwrap(), &s.origin).unwrap();
    assert!(ingress.rules()[0].origin.socks_over_tcp());
    let s = settings(&["run", "--url", "http://127.0.0.1:1", "--socks5"], "").unwrap();
    let ingress = Ingress::single_with(single_origin(&s).unwrap().unwrap(), &s.origin).unwrap();
    assert!(!ingress.rules()[0].origin.socks_over_tcp());

    // The file's keys, and nothing set without them.
    let s = settings(
        &["run"],
        "bastion: true\nsocks5: true\nhttp2-origin: true\n",
    )
    .unwrap();
    assert_eq!(single_origin(&s).unwrap(), Some(Service::Bastion));
    assert_eq!(s.origin.http2_origin, Some(true));
    assert_eq!(s.origin.proxy_type.as_deref(), Some("socks"));
    let s = settings(&["run", "--url", "http://a:1"], "bastion: false\n").unwrap();
    assert_eq!(
        (
            s.origin.bastion_mode,
            s.origin.proxy_type,
            s.origin.http2_origin
        ),
        (None, None, None)
    );

    // cloudflared's `tunnel` takes them too: given before `run` they move after it.
    let argv: Vec<String> = cloudflared_argv(
        [
            "burrow",
            "tunnel",
            "--bastion",
            "--proxy-port",
            "9",
            "--socks5",
            "run",
        ]
        .iter()
        .map(Into::into)
        .collect(),
    )
    .into_iter()
    .map(|s| s.to_string_lossy().into_owned())
    .collect();
    assert_eq!(
        argv,
        [
            "burrow",
            "tunnel",
            "run",
            "--bastion",
            "--proxy-port",
            "9",
            "--socks5"
        ]
    );
}

/// Files and `$HOME` from a map.
struct MapHost(HashMap<&'static str, &'static str>);

impl Host for MapHost {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        self.0
            .get(path)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn is_file(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }
    fn home(&self) -> String {
        "/home/u".into()
    }
    /// Variables are the map's `$NAME` keys.
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k.strip_prefix('$') == Some(name))
            .map(|(_, v)| (*v).to_owned())
    }
}

const ID: &str = "11111111-2222-3333-4444-555555555555";
const OTHER: &str = "99999999-2222-3333-4444-555555555555";
const CREDS: &str = r#"{"AccountTag":"acc","TunnelSecret":"AQID","TunnelID":"11111111-2222-3333-4444-555555555555"}"#;

#[test]
fn credentials_are_found_where_cloudflared_looks_and_the_named_tunnel_wins() {
    let host = MapHost(HashMap::from([
        (
            "/home/u/.cloudflared/config.yml",
            "tunnel: 99999999-2222-3333-4444-555555555555
",
        ),
        (
            "/etc/cloudflared/99999999-2222-3333-4444-555555555555.json",
            CREDS,
        ),
        ("/home/u/creds.json", CREDS),
        ("/tok", "  bad token \n"),
    ]));
    let loaded = load_config(&CommonArgs::default(), &host).unwrap();
    assert_eq!(
        loaded.path.as_deref(),
        Some("/home/u/.cloudflared/config.yml")
    );
    let s = settings(&["run"], loaded.text.as_deref().unwrap()).unwrap();
    let c = credentials(&s, &host).unwrap();
    assert_eq!(c.account_tag, "acc");
    assert_eq!(c.secret, [1, 2, 3]);
    assert_eq!(c.tunnel_id.to_string(), OTHER, "the file's tunnel wins");
    let s = settings(&["run", "--credentials-file", "~/creds.json"], "").unwrap();
    assert_eq!(credentials(&s, &host).unwrap().tunnel_id.to_string(), ID);
    let s = settings(&["run", "--token-file", "/tok"], "").unwrap();
    assert!(matches!(
        credentials(&s, &host),
        Err(SetupError::Creds(CredsError::BadToken))
    ));
    let s = settings(&["run", "--token-file", "/missing"], "").unwrap();
    assert!(credentials(&s, &host)
        .unwrap_err()
        .to_string()
        .contains("token file"));
    let s = settings(&["run"], "").unwrap();
    assert!(credentials(&s, &host)
        .unwrap_err()
        .to_string()
        .contains("no credentials"));
}

#[test]
fn run_config_applies_the_region_rule_and_reads_the_cacert() {
    let host = MapHost(HashMap::from([("/ca.pem", "PEM"), ("/c.json", CREDS)]));
    let loaded = LoadedConfig::default();
    let s = settings(
        &[
            "run",
            "--credentials-file",
            "/c.json",
            "--cacert",
            "/ca.pem",
            "--url",
            "http://127.0.0.1:1",
        ],
        "",
    )
    .unwrap();
    let (rc, notices) = run_config(&s, &loaded, &host).unwrap();
    assert_eq!(rc.cacert.as_deref(), Some(&b"PEM"[..]));
    assert_eq!(rc.edges, Edges::Srv { region: None });
    assert!(notices.is_empty());
    let s = settings(
        &["run", "--credentials-file", "/c.json", "--cacert", "/nope"],
        "",
    )
    .unwrap();
    assert!(run_config(&s, &loaded, &host)
        .unwrap_err()
        .to_string()
        .contains("cacert /nope"));
    let s = settings(&["run", "--credentials-file", "/c.json"], "").unwrap();
    assert_eq!(
        run_config(&s, &loaded, &host).unwrap().1,
        [Notice::NoIngress]
    );
}

/// `--protocol auto` against Cloudflare's edge follows the percentage record, except for a
/// `--token` tunnel (flag or `TUNNEL_TOKEN`), which starts on QUIC as cloudflared's selector
/// for token tunnels does; `--token-file` counts as no token there.
#[test]
fn a_token_tunnel_on_auto_starts_on_quic_whatever_the_percentage_record_says() {
    use crate::tunnel::protocol::Protocol;
    let creds = Credentials {
        account_tag: "acc".into(),
        secret: vec![1, 2, 3],
        tunnel_id: ID.parse().unwrap(),
        endpoint: String::new(),
    };
    let token = creds.to_token();
    // MapHost holds static text; one small string for the test's life.
    let token_file: &'static str = Box::leak(token.clone().into_boxed_str());
    let host = MapHost(HashMap::from([("/c.json", CREDS), ("/tok", token_file)]));
    // Only HTTP/2 is above every threshold: the remote selector picks it.
    let http2_only =
        r#"[{"protocol":"quic","percentage":0},{"protocol":"http2","percentage":100}]"#;
    let auto_start = |args: &[&str]| {
        let s = settings(args, "").unwrap();
        let (rc, _) = run_config(&s, &LoadedConfig::default(), &host).unwrap();
        let config = supervisor_config(&rc, Some(http2_only));
        (rc.wants_percentage_record(), config.auto_initial)
    };
    assert_eq!(
        auto_start(&["run", "--protocol", "auto", "--token", &token]),
        (false, Protocol::Quic)
    );
    assert_eq!(
        auto_start(&["run", "--protocol", "auto", "--credentials-file", "/c.json"]),
        (true, Protocol::Http2)
    );
    assert_eq!(
        auto_start(&["run", "--protocol", "auto", "--token-file", "/tok"]),
        (true, Protocol::Http2)
    );
    // An edge given with --edge: the record says nothing of it.
    assert_eq!(
        auto_start(&["run", "--token", &token, "--edge", "127.0.0.1:7844"]),
        (false, Protocol::Quic)
    );
}

fn tunnel_args(args: &[&str]) -> TunnelArgs {
    match Cli::try_parse_from([&["burrow", "tunnel"], args].concat())
        .expect("flags parse")
        .command
    {
        Top::Tunnel(t) => *t,
        Top::Service(_) => unreachable!("parsed `tunnel`"),
    }
}

#[test]
fn flags_burrow_cannot_honour_stop_it_with_the_reason() {
    let host = MapHost(HashMap::new());
    for (args, flag) in [
        (&["--lb-pool", "p", "run", "id"][..], "lb-pool"),
        (&["run", "--hostname", "a.example.com", "id"], "hostname"),
        (&["--api-url", "https://api.example", "run"], "api-url"),
    ] {
        match start(&mut tunnel_args(args), &host) {
            Err(SetupError::Refused(r)) => {
                assert_eq!(r.flag, flag);
                let text = r.to_string();
                assert!(
                    text.starts_with(&format!(
                        "--{flag} is a cloudflared flag burrow does not support: "
                    )),
                    "{text}"
                );
            }
            other => panic!("{args:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn flags_cloudflared_itself_ignores_are_taken_and_named() {
    let t = tunnel_args(&[
        "--proxy-dns",
        "--proxy-dns-upstream",
        "https://1.1.1.1/dns-query",
        "--ui",
        "--use-reconnect-token",
        "run",
        "--ssh-server",
        "--proxy-connection-timeout",
        "90s",
        "id",
    ]);
    assert!(t.common.refused.given().is_none());
    let named = t.common.ignored.given();
    for flag in [
        "proxy-dns",
        "proxy-dns-upstream",
        "ui",
        "use-reconnect-token",
        "ssh-server",
        "proxy-connection-timeout",
    ] {
        assert!(named.contains(&flag), "{flag} in {named:?}");
    }
}

/// Every flag of the ignored table is taken, a value either as `--flag value` or `--flag=value`,
/// before `run` or after it, and named alone with its value.
#[test]
fn every_ignored_flag_is_taken_and_named_with_its_value() {
    use super::flag_table::Takes;
    for flag in super::ignored::IGNORED {
        let long = format!("--{}", flag.long);
        let with_equals = format!("--{}=v", flag.long);
        let off = format!("--{}=false", flag.long);
        let spellings: Vec<(Vec<&str>, &str)> = match flag.takes {
            Takes::Switch | Takes::Presence => vec![
                (vec![&long, "run"], "true"),
                (vec!["run", &long], "true"),
                (vec![&off, "run"], "false"),
                (vec!["run", &long, &off], "false"),
            ],
            Takes::Value | Takes::Values => vec![
                (vec![&long, "v", "run"], "v"),
                (vec!["run", &long, "v"], "v"),
                (vec![&with_equals, "run"], "v"),
                (vec!["run", &with_equals], "v"),
            ],
        };
        for (args, want) in spellings {
            let t = tunnel_args(&args);
            assert_eq!(t.common.ignored.given(), [flag.long], "{args:?}");
            assert!(t.common.refused.given().is_none(), "{args:?}");
            let value = t.common.ignored.configuration_flag(flag.long);
            assert_eq!(value, Some(Some(want.to_owned())), "{args:?}");
        }
    }
    // Repeatable ones keep their first value; `--proto-loglevel` is `--transport-loglevel`.
    let t = tunnel_args(&["run", "--proxy-dns-upstream", "a", "--proxy-dns-upstream=b"]);
    assert_eq!(t.common.ignored.given(), ["proxy-dns-upstream"]);
    let t = tunnel_args(&["--proto-loglevel=warn", "run"]);
    assert_eq!(
        t.common.ignored.configuration_flag("transport-loglevel"),
        Some(Some("warn".into()))
    );
    assert!(tunnel_args(&["run"]).common.ignored.given().is_empty());
}

/// `--output` and `--transport-loglevel` are also read from a second variable, as urfave/cli
/// reads a flag's variables: the first set wins, so the second counts only when neither the
/// flag nor the first (which clap reads) is given.
#[test]
fn a_second_environment_variable_counts_when_the_flag_is_not_given() {
    let host = MapHost(HashMap::from([
        ("$TUNNEL_LOG_OUTPUT", "json"),
        ("$TUNNEL_TRANSPORT_LOGLEVEL", "debug"),
    ]));
    let started = |args: &[&str]| {
        let mut t = tunnel_args(args);
        let (_, s) = start(&mut t, &host).expect("starts");
        (s, t.common.ignored.given())
    };
    let (s, ignored) = started(&["run", "--url", "http://x"]);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(
        s.configuration_flags
            .get("transport-loglevel")
            .map(String::as_str),
        Some("debug")
    );
    assert_eq!(ignored, ["transport-loglevel"]);
    let (s, _) = started(&[
        "--output",
        "default",
        "--proto-loglevel",
        "warn",
        "run",
        "--url",
        "http://x",
    ]);
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(
        s.configuration_flags
            .get("transport-loglevel")
            .map(String::as_str),
        Some("warn")
    );
    let quiet = MapHost(HashMap::new());
    let mut t = tunnel_args(&["run", "--url", "http://x"]);
    let (_, s) = start(&mut t, &quiet).expect("starts");
    assert_eq!(s.log_format, LogFormat::Text);
    assert!(!s.configuration_flags.contains_key("transport-loglevel"));
}

/// Every flag of the refused table stops `tunnel run` naming itself, either spelling.
#[test]
fn every_refused_flag_stops_run_naming_itself() {
    use super::flag_table::Takes;
    let host = MapHost(HashMap::new());
    for (flag, why) in super::refused::REFUSED {
        let long = format!("--{}", flag.long);
        let with_equals = format!("--{}=v", flag.long);
        let on = format!("--{}=1", flag.long);
        let spellings: Vec<Vec<&str>> = match flag.takes {
            Takes::Switch | Takes::Presence => {
                vec![vec![&long, "run"], vec!["run", &long], vec!["run", &on]]
            }
            Takes::Value | Takes::Values => {
                vec![vec![&long, "v", "run"], vec!["run", &with_equals]]
            }
        };
        for args in spellings {
            match start(&mut tunnel_args(&args), &host) {
                Err(SetupError::Refused(r)) => {
                    assert_eq!(
                        r,
                        RefusedFlag {
                            flag: flag.long,
                            why
                        },
                        "{args:?}"
                    )
                }
                other => panic!("{args:?}: {:?}", other.map(|_| ())),
            }
        }
    }
}

/// Outside the tables clap still refuses: an unknown flag (without a tip, as cloudflared),
/// a table flag without its value, a value a switch cannot take, a single-value flag twice.
#[test]
fn bad_table_flags_are_refused_by_clap() {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let parse = |args: &[&str]| {
        Cli::try_parse_from([&["burrow", "tunnel"], args].concat())
            .expect_err(&format!("{args:?} refused"))
    };
    let e = parse(&["run", "--no-autoupdat"]);
    assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    assert_eq!(
        e.get(ContextKind::InvalidArg),
        Some(&ContextValue::String("--no-autoupdat".into()))
    );
    // No "did you mean": cloudflared's urfave/cli suggests nothing either.
    assert_eq!(e.get(ContextKind::SuggestedArg), None);
    let e = parse(&["run", "--label"]);
    assert_eq!(e.kind(), ErrorKind::InvalidValue);
    assert_eq!(
        e.get(ContextKind::InvalidArg),
        Some(&ContextValue::String("--label <LABEL>".into()))
    );
    let e = parse(&["run", "--hostname"]);
    assert_eq!(e.kind(), ErrorKind::InvalidValue);
    // A switch takes only `strconv.ParseBool`'s spellings after `=` (cloudflared: `invalid
    // boolean value "yes" for -ui: parse error`), and the error lists true and false.
    let e = parse(&["run", "--ui=yes"]);
    assert_eq!(e.kind(), ErrorKind::InvalidValue);
    assert_eq!(
        e.get(ContextKind::InvalidValue),
        Some(&ContextValue::String("yes".into()))
    );
    assert_eq!(
        e.get(ContextKind::ValidValue),
        Some(&ContextValue::Strings(vec!["true".into(), "false".into()]))
    );
    let e = parse(&["--label", "a", "run", "--label", "b", "--label", "c"]);
    assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
}

/// Private-network TCP flows dial with config.yml's `warp-routing.connectTimeout`, else
/// cloudflared's default (a remote configuration replaces it later, in the supervisor).
#[test]
fn warp_routing_connect_timeout_reaches_the_tcp_dials() {
    let host = MapHost(HashMap::from([("/c.json", CREDS)]));
    let timeout = |yaml: &str| {
        let s = settings(
            &[
                "run",
                "--credentials-file",
                "/c.json",
                "--url",
                "http://127.0.0.1:1",
            ],
            "",
        )
        .unwrap();
        let loaded = LoadedConfig {
            path: Some("/config.yml".into()),
            text: Some(yaml.into()),
            file: ConfigFile::from_yaml(yaml).expect("file parses"),
        };
        let (rc, _) = run_config(&s, &loaded, &host).unwrap();
        supervisor_config(&rc, None)
            .connector
            .data
            .tcp_connect_timeout
    };
    assert_eq!(timeout(""), crate::tunnel::dial::TCP_DIAL_TIMEOUT);
    assert_eq!(
        timeout("warp-routing:\n  connectTimeout: 2s\n"),
        std::time::Duration::from_secs(2)
    );
}

/// `strconv.ParseBool`'s spellings after `=`, as Go's `flag` takes them for a switch; what a
/// bare `--x` means; and spellings cloudflared refuses (`invalid boolean value "yes" for
/// -no-autoupdate: parse error`, `/work/cfd/cloudflared tunnel --no-autoupdate=yes run`).
const SWITCH_SPELLINGS: &[(&str, Option<Switch>)] = &[
    ("", Some(Switch::On)),
    ("=true", Some(Switch::On)),
    ("=True", Some(Switch::On)),
    ("=TRUE", Some(Switch::On)),
    ("=t", Some(Switch::On)),
    ("=T", Some(Switch::On)),
    ("=1", Some(Switch::On)),
    ("=false", Some(Switch::Off)),
    ("=False", Some(Switch::Off)),
    ("=FALSE", Some(Switch::Off)),
    ("=f", Some(Switch::Off)),
    ("=F", Some(Switch::Off)),
    ("=0", Some(Switch::Off)),
    ("=yes", None),
    ("=no", None),
    ("=on", None),
    ("=tRUE", None),
    ("=2", None),
    ("= true", None),
    ("=true ", None),
    ("=-1", None),
];

/// The environment variable of flag `--long` of the subcommand at `path` (`["tunnel"]`,
/// `["tunnel", "run"]`).
fn flag_env(path: &[&str], long: &str) -> Option<String> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let cmd = path.iter().fold(&cli, |cmd, name| {
        cmd.find_subcommand(name).expect("subcommand")
    });
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .unwrap_or_else(|| panic!("no --{long} in {path:?}"));
    arg.get_env().map(|v| v.to_string_lossy().into_owned())
}

/// Every switch of `tunnel`, `tunnel run` and `service install` (table or derived): the ones
/// of the command tree whose values are [`Switch`]es, by their long names.
fn switches() -> Vec<(Vec<&'static str>, String, clap::Id)> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let is_switch =
        |a: &clap::Arg| a.get_value_parser().type_id() == std::any::TypeId::of::<Switch>();
    let mut out = Vec::new();
    let mut add = |path: Vec<&'static str>, cmd: &clap::Command| {
        for a in cmd.get_arguments().filter(|a| is_switch(a)) {
            let long = a.get_long().expect("switches are long flags").to_owned();
            out.push((path.clone(), long, a.get_id().clone()));
        }
    };
    let tunnel = cli.find_subcommand("tunnel").expect("tunnel");
    add(vec!["tunnel"], tunnel);
    add(
        vec!["tunnel", "run"],
        tunnel.find_subcommand("run").expect("run"),
    );
    let service = cli.find_subcommand("service").expect("service");
    add(
        vec!["service", "install"],
        service.find_subcommand("install").expect("install"),
    );
    out
}

/// Every switch takes every spelling cloudflared takes, with its meaning, before or after
/// `run`; the ones cloudflared refuses are refused with the value named; a value after a
/// space is the next argument, not the switch's.
#[test]
fn every_switch_takes_cloudflareds_spellings() {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    let all = switches();
    // The derived ones, the table's and `service install`'s; no clap `SetTrue` is left.
    for name in [
        "no-tls-verify",
        "no-chunked-encoding",
        "bastion",
        "socks5",
        "http2-origin",
        "proxy-no-happy-eyeballs",
        "quic-disable-pmtu-discovery",
        "hello-world",
        "post-quantum",
        "no-autoupdate",
        "ui",
        "stdin-control",
        "no-update-service",
    ] {
        assert!(all.iter().any(|(_, l, _)| l == name), "{name} is a switch");
    }
    let cli = Cli::command();
    let tunnel = cli.find_subcommand("tunnel").expect("tunnel");
    for cmd in [tunnel, tunnel.find_subcommand("run").expect("run")] {
        for a in cmd.get_arguments() {
            assert!(
                !matches!(a.get_action(), clap::ArgAction::SetTrue),
                "{a} is a SetTrue flag"
            );
        }
    }
    fn deepest(m: &clap::ArgMatches) -> &clap::ArgMatches {
        m.subcommand().map_or(m, |(_, sub)| deepest(sub))
    }
    for (path, long, id) in &all {
        // `tunnel`'s switches are global: after `run`, and before it.
        let full: &[&str] = if path == &["tunnel"] {
            &["tunnel", "run"]
        } else {
            path
        };
        for (spelling, want) in SWITCH_SPELLINGS {
            let flag = format!("--{long}{spelling}");
            let mut argvs = vec![[&["burrow"], full, &[flag.as_str()]].concat()];
            if path == &["tunnel"] {
                argvs.push(vec!["burrow", "tunnel", &flag, "run"]);
            }
            for argv in argvs {
                match (want, Cli::command().try_get_matches_from(&argv)) {
                    (Some(want), Ok(m)) => {
                        let got = deepest(&m).get_one::<Switch>(id.as_str());
                        assert_eq!(got, Some(want), "{argv:?}");
                    }
                    (None, Err(e)) => {
                        assert_eq!(e.kind(), ErrorKind::InvalidValue, "{argv:?}");
                        let value = spelling.strip_prefix('=').expect("a value");
                        assert_eq!(
                            e.get(ContextKind::InvalidValue),
                            Some(&ContextValue::String(value.into())),
                            "{argv:?}"
                        );
                    }
                    (want, got) => panic!("{argv:?}: want {want:?}, got {got:?}"),
                }
            }
        }
        // Given twice, the last counts (Go's `flag`).
        let (on, off) = (format!("--{long}"), format!("--{long}=false"));
        let twice = [&["burrow"], full, &[on.as_str(), off.as_str()]].concat();
        let m = Cli::command().try_get_matches_from(&twice).expect("twice");
        assert_eq!(
            deepest(&m).get_one::<Switch>(id.as_str()),
            Some(&Switch::Off),
            "{twice:?}"
        );
    }
    // `--x false`: the switch is on and `false` is the next argument (here the tunnel).
    let t = tunnel_args(&["run", "--post-quantum", "false"]);
    let TunnelCommand::Run(run) = t.command;
    assert_eq!(run.post_quantum, Some(Switch::On));
    assert_eq!(run.tunnel.as_deref(), Some("false"));
    // The alias too.
    let TunnelCommand::Run(run) = tunnel_args(&["run", "--pq=0"]).command;
    assert_eq!(run.post_quantum, Some(Switch::Off));
}

/// The `--url`-mode origin timeouts and pool flags are the one rule's `originRequest`
/// options, as cloudflared's `originRequestFromSingleRule` reads them: the flag, else the
/// config file's key of the same name, else the option's default (left to ingress).
#[test]
fn proxy_timeout_flags_shape_the_one_origin() {
    use crate::ingress::Dur;
    let secs = |s| Some(Dur(Duration::from_secs(s)));
    let origin = |args: &[&str], yaml: &str| settings(args, yaml).expect("settings").origin;
    let o = origin(
        &[
            "run",
            "--url",
            "http://x",
            "--proxy-connect-timeout",
            "3s",
            "--proxy-tls-timeout=1m",
            "--proxy-tcp-keepalive",
            "0",
            "--proxy-keepalive-connections",
            "7",
            "--proxy-keepalive-timeout",
            "1m30s",
        ],
        "",
    );
    assert_eq!(o.connect_timeout, secs(3));
    assert_eq!(o.tls_timeout, secs(60));
    assert_eq!(o.tcp_keep_alive, secs(0));
    assert_eq!(o.keep_alive_connections, Some(7));
    assert_eq!(o.keep_alive_timeout, secs(90));
    // The file's keys, and a flag over its key.
    let yaml = "proxy-connect-timeout: 4s\nproxy-keepalive-connections: 2\nproxy-tls-timeout: 5s\n";
    let o = origin(&["run", "--proxy-tls-timeout", "6s"], yaml);
    assert_eq!(o.connect_timeout, secs(4));
    assert_eq!(o.keep_alive_connections, Some(2));
    assert_eq!(o.tls_timeout, secs(6));
    assert_eq!(o.keep_alive_timeout, None);
    // Between `tunnel` and `run` they move after `run` with their value, as the other
    // origin flags.
    let argv = cloudflared_argv(
        [
            "burrow",
            "tunnel",
            "--proxy-connect-timeout",
            "2s",
            "run",
            "id",
        ]
        .map(std::ffi::OsString::from)
        .to_vec(),
    );
    assert_eq!(
        argv,
        [
            "burrow",
            "tunnel",
            "run",
            "--proxy-connect-timeout",
            "2s",
            "id"
        ]
        .map(std::ffi::OsString::from)
        .to_vec()
    );
    // Not a duration: clap's error names the value.
    let bad = Cli::try_parse_from(["burrow", "tunnel", "run", "--proxy-connect-timeout", "soon"]);
    assert!(bad.is_err_and(|e| e.to_string().contains("soon")));
}

/// What the supervisor starts with for `tunnel ARGS` with `yaml` as config.yml, a
/// credentials file and `--url` added.
fn supervised(
    args: &[&str],
    yaml: &str,
) -> Result<crate::tunnel::supervisor::SupervisorConfig, SetupError> {
    supervised_serving(args, yaml, false)
}

/// [`supervised`] for a driver that serves the management service when `management`.
fn supervised_serving(
    args: &[&str],
    yaml: &str,
    management: bool,
) -> Result<crate::tunnel::supervisor::SupervisorConfig, SetupError> {
    let host = MapHost(HashMap::from([("/c.json", CREDS)]));
    let args = [
        args,
        &[
            "--credentials-file",
            "/c.json",
            "--url",
            "http://127.0.0.1:1",
        ],
    ]
    .concat();
    let s = settings(&args, yaml)?;
    let loaded = LoadedConfig {
        path: Some("/config.yml".into()),
        text: Some(yaml.into()),
        file: ConfigFile::from_yaml(yaml).expect("file parses"),
    };
    let (rc, _) = run_config(&s, &loaded, &host)?;
    Ok(served_supervisor_config(&rc, None, management))
}

/// cloudflared's hidden QUIC flags set the transport: by flag, variable or config-file key;
/// 0 is quic-go's own ceiling, as quic-go reads it; the switch by value.
#[test]
fn quic_flags_set_the_transport() {
    let quic = |args: &[&str], yaml: &str| {
        let q = supervised(args, yaml).expect("settings").quic;
        (
            q.mtu_discovery,
            q.connection_receive_window,
            q.stream_receive_window,
        )
    };
    assert_eq!(quic(&["run"], ""), (true, 30 << 20, 6 << 20));
    assert_eq!(
        quic(
            &[
                "--quic-disable-pmtu-discovery",
                "--quic-connection-level-flow-control-limit",
                "1048576",
                "run",
                "--quic-stream-level-flow-control-limit=65536",
            ],
            "",
        ),
        (false, 1 << 20, 1 << 16)
    );
    let yaml = "quic-disable-pmtu-discovery: true\nquic-connection-level-flow-control-limit: 0\n\
                quic-stream-level-flow-control-limit: 99999999999\n";
    assert_eq!(quic(&["run"], yaml), (false, 15 << 20, u32::MAX));
    assert!(quic(&["run", "--quic-disable-pmtu-discovery=false"], yaml).0);
    // cloudflared's variables (not the flags' names).
    for (long, var) in [
        ("quic-disable-pmtu-discovery", "TUNNEL_DISABLE_QUIC_PMTU"),
        (
            "quic-connection-level-flow-control-limit",
            "TUNNEL_QUIC_CONN_LEVEL_FLOW_CONTROL_LIMIT",
        ),
        (
            "quic-stream-level-flow-control-limit",
            "TUNNEL_QUIC_STREAM_LEVEL_FLOW_CONTROL_LIMIT",
        ),
    ] {
        assert_eq!(flag_env(&["tunnel"], long).as_deref(), Some(var), "{long}");
    }
}

/// `--write-stream-timeout` (`TUNNEL_STREAM_WRITE_TIMEOUT`, or the file's key) bounds the
/// connector's writes; 0, its default, is no bound.
#[test]
fn write_stream_timeout_bounds_the_connectors_writes() {
    let timeout = |args: &[&str], yaml: &str| {
        supervised(args, yaml)
            .expect("settings")
            .connector
            .data
            .write_timeout
    };
    let secs = |n| Some(Duration::from_secs(n));
    assert_eq!(timeout(&["run"], ""), None);
    assert_eq!(
        timeout(&["run", "--write-stream-timeout", "5s"], ""),
        secs(5)
    );
    assert_eq!(
        timeout(&["--write-stream-timeout=1m30s", "run"], ""),
        secs(90)
    );
    assert_eq!(timeout(&["run", "--write-stream-timeout", "0"], ""), None);
    assert_eq!(timeout(&["run"], "write-stream-timeout: 2s\n"), secs(2));
    assert_eq!(
        timeout(
            &["run", "--write-stream-timeout", "0s"],
            "write-stream-timeout: 2s\n"
        ),
        None,
        "the flag over the file"
    );
    let bad = Cli::try_parse_from(["burrow", "tunnel", "run", "--write-stream-timeout", "5"]);
    assert!(bad.is_err_and(|e| e.to_string().contains("invalid duration")));
    assert_eq!(
        flag_env(&["tunnel"], "write-stream-timeout").as_deref(),
        Some("TUNNEL_STREAM_WRITE_TIMEOUT")
    );
}

/// `--rpc-timeout` and `--max-edge-addr-retries` (hidden, no variables, config-file keys) set
/// the connector's RPC deadline and the dial failures before a protocol fallback; the count
/// wraps as cloudflared's `uint8` conversion wraps it, and a zero timeout is refused.
#[test]
fn rpc_timeout_and_max_edge_addr_retries_tune_the_supervisor() {
    let tuned = |args: &[&str], yaml: &str| {
        supervised(args, yaml).map(|c| (c.connector.rpc_timeout, c.max_edge_addr_retries))
    };
    let secs = Duration::from_secs;
    assert_eq!(tuned(&["run"], "").unwrap(), (secs(5), 8));
    assert_eq!(
        tuned(
            &["--rpc-timeout", "2s", "run", "--max-edge-addr-retries", "3"],
            ""
        )
        .unwrap(),
        (secs(2), 3)
    );
    let yaml = "rpc-timeout: 1m\nmax-edge-addr-retries: 0\n";
    assert_eq!(tuned(&["run"], yaml).unwrap(), (secs(60), 0));
    assert_eq!(
        tuned(&["run", "--rpc-timeout=7s"], yaml).unwrap(),
        (secs(7), 0),
        "the flag over the file"
    );
    assert_eq!(
        tuned(&["run", "--max-edge-addr-retries", "257"], "")
            .unwrap()
            .1,
        1
    );
    assert_eq!(
        tuned(&["run", "--max-edge-addr-retries", "-1"], "")
            .unwrap()
            .1,
        255
    );
    let zero = tuned(&["run", "--rpc-timeout", "0s"], "");
    assert!(zero.is_err_and(|e| e.to_string().contains("rpc-timeout")));
}

/// `--dns-resolver-addrs` (a `run` flag; cloudflared reads it from no file): `ip:port`
/// addresses, repeated or comma-separated, at most 10, refused as cloudflared refuses them.
#[test]
fn dns_resolver_addrs_fix_the_virtual_dns_services_resolvers() {
    let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let host = MapHost(HashMap::from([("/c.json", CREDS)]));
    let resolvers = |args: &[&str]| {
        let args = [
            &[
                "run",
                "--credentials-file",
                "/c.json",
                "--url",
                "http://127.0.0.1:1",
            ],
            args,
        ]
        .concat();
        let s = settings(&args, "")?;
        let (rc, _) = run_config(&s, &LoadedConfig::default(), &host).unwrap();
        Ok::<_, SetupError>(supervisor_config(&rc, None).dns_resolvers)
    };
    assert_eq!(resolvers(&[]).unwrap(), None);
    assert_eq!(
        resolvers(&[
            "--dns-resolver-addrs",
            "10.0.0.1:53",
            "--dns-resolver-addrs=[fd00::1]:5353,10.0.0.2:53",
        ])
        .unwrap(),
        Some(vec![
            a("10.0.0.1:53"),
            a("[fd00::1]:5353"),
            a("10.0.0.2:53")
        ])
    );
    let err = |args: &[&str]| match resolvers(args) {
        Err(SetupError::Config(text)) => text,
        other => panic!("{args:?}: {other:?}"),
    };
    assert_eq!(
        err(&["--dns-resolver-addrs", "10.0.0.1"]),
        "invalid dns-resolver-addrs provided: \"10.0.0.1\" is not an ip:port"
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("10.0.0.{i}:53")).collect();
    let eleven = format!("--dns-resolver-addrs={}", eleven.join(","));
    assert_eq!(
        err(&[&eleven]),
        "invalid dns-resolver-addrs provided: too many addresses provided, max: 10"
    );
    assert_eq!(
        flag_env(&["tunnel", "run"], "dns-resolver-addrs").as_deref(),
        Some("TUNNEL_DNS_RESOLVER_ADDRS")
    );
}

/// What a switch means, as cloudflared reads it (seen with /work/cfd/cloudflared's `Settings:`
/// line and its hello-world server): read by value, given `=false` it is off over the file's
/// `true`; read by presence, given at all it is on; its variable set but empty leaves it off
/// and the file unread.
#[test]
fn switches_mean_what_cloudflared_reads_from_them() {
    let s = |args: &[&str], yaml: &str| settings(args, yaml).expect("settings");
    // By value.
    assert!(s(&["run"], "post-quantum: true\n").post_quantum);
    assert!(!s(&["run", "--post-quantum=false"], "post-quantum: true\n").post_quantum);
    assert!(!s(&["run", "--pq=0"], "post-quantum: true\n").post_quantum);
    assert!(s(&["run", "--post-quantum=T"], "post-quantum: false\n").post_quantum);
    assert!(!s(&["run", "--post-quantum", "--post-quantum=F"], "").post_quantum);
    let origin = |args: &[&str], yaml: &str| s(args, yaml).origin;
    let o = origin(
        &[
            "run",
            "--no-tls-verify=false",
            "--no-chunked-encoding=FALSE",
        ],
        "no-tls-verify: true\nno-chunked-encoding: true\n",
    );
    assert_eq!(o.no_tls_verify, Some(false));
    assert_eq!(o.disable_chunked_encoding, Some(false));
    let o = origin(&["run"], "no-tls-verify: true\nno-chunked-encoding: true\n");
    assert_eq!(o.no_tls_verify, Some(true));
    assert_eq!(o.disable_chunked_encoding, Some(true));
    assert_eq!(
        origin(&["run", "--http2-origin=0"], "http2-origin: true\n").http2_origin,
        Some(false)
    );
    assert_eq!(origin(&["run"], "http2-origin: false\n").http2_origin, None);
    // `--proxy-no-happy-eyeballs` too is read only when set, then by value.
    let happy = |args: &[&str], file| origin(args, file).no_happy_eyeballs;
    assert_eq!(happy(&["run", "--proxy-no-happy-eyeballs"], ""), Some(true));
    let off = happy(
        &["run", "--proxy-no-happy-eyeballs=false"],
        "proxy-no-happy-eyeballs: true\n",
    );
    assert_eq!(off, Some(false));
    assert_eq!(
        happy(&["run"], "proxy-no-happy-eyeballs: true\n"),
        Some(true)
    );
    assert_eq!(happy(&["run"], ""), None);
    // By presence: `--hello-world=false` still serves the page, `--bastion=false` still makes
    // the one origin the bastion (with bastionMode false), `--socks5=false` still asks SOCKS.
    assert!(s(&["run", "--hello-world=false"], "").hello_world);
    assert!(!s(&["run"], "hello-world: false\n").hello_world);
    assert!(s(&["run"], "hello-world: true\n").hello_world);
    let b = s(&["run", "--bastion=false", "--url", "http://x"], "");
    assert_eq!(b.origin.bastion_mode, Some(false));
    assert_eq!(single_origin(&b).unwrap(), Some(Service::Bastion));
    let b = s(&["run", "--url", "http://x"], "bastion: false\n");
    assert_eq!(b.origin.bastion_mode, None);
    assert!(matches!(
        single_origin(&b).unwrap(),
        Some(Service::Http { .. })
    ));
    assert_eq!(
        origin(&["run", "--socks5=f"], "").proxy_type.as_deref(),
        Some("socks")
    );
    // A variable set but empty (clap hands the switch `""`): off, and the file is not read.
    let mut t = tunnel_args(&["run"]);
    let TunnelCommand::Run(run) = &mut t.command;
    run.post_quantum = Some(Switch::Blank);
    run.hello_world = Some(Switch::Blank);
    run.origin.no_tls_verify = Some(Switch::Blank);
    let file =
        ConfigFile::from_yaml("post-quantum: true\nhello-world: true\nno-tls-verify: true\n")
            .expect("file");
    let b = Settings::merge(&t.common, run, &file).expect("merge");
    assert!(!b.post_quantum);
    assert!(!b.hello_world);
    assert_eq!(b.origin.no_tls_verify, Some(false));
    // `__configuration_flags` prints no-autoupdate as Go's `c.String`; the file only ever
    // sets it to true.
    let flag = |args: &[&str], yaml: &str| {
        s(args, yaml)
            .configuration_flags
            .get("no-autoupdate")
            .cloned()
    };
    assert_eq!(
        flag(&["--no-autoupdate=false", "run"], ""),
        Some("false".into())
    );
    assert_eq!(
        flag(&["--no-autoupdate=0", "run"], "no-autoupdate: true\n"),
        Some("false".into())
    );
    assert_eq!(flag(&["run", "--no-autoupdate=t"], ""), Some("true".into()));
    assert_eq!(flag(&["run"], "no-autoupdate: true\n"), Some("true".into()));
    assert_eq!(flag(&["run"], "no-autoupdate: false\n"), None);
    // A refused switch off asks for nothing burrow lacks, unless read by presence.
    let host = MapHost(HashMap::new());
    let mut args = tunnel_args(&["--quic-disable-pmtu-discovery=false", "run"]);
    assert!(start(&mut args, &host).is_ok());
    let mut args = tunnel_args(&["--stdin-control=false", "run"]);
    assert!(matches!(
        start(&mut args, &host),
        Err(SetupError::Refused(RefusedFlag {
            flag: "stdin-control",
            ..
        }))
    ));
}

proptest::proptest! {
    /// No command line panics the parser or the merge: words from cloudflared's flags and
    /// switch spellings, and arbitrary ones.
    #[test]
    fn no_argv_panics_the_parser(
        words in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(vec![
                    "tunnel", "run", "service", "install", "--no-autoupdate", "-no-autoupdate",
                    "--post-quantum", "--pq", "--hello-world", "--bastion", "--socks5",
                    "--no-tls-verify", "--ui", "--stdin-control", "--label", "--url",
                    "--config", "--protocol", "-p", "--edge", "--no-update-service", "--",
                    "=", "-", "true", "false",
                ]).prop_map(str::to_owned),
                (
                    proptest::sample::select(vec![
                        "--no-autoupdate", "--post-quantum", "--hello-world", "--bastion",
                        "--no-chunked-encoding", "--http2-origin", "--quic-disable-pmtu-discovery",
                        "--grace-period", "--ha-connections", "--edge-ip-version",
                    ]),
                    "\\PC{0,8}",
                ).prop_map(|(flag, value)| format!("{flag}={value}")),
                "\\PC{0,16}",
            ],
            0..8,
        )
    ) {
        let mut argv = vec!["burrow".to_owned()];
        argv.extend(words);
        let argv = cloudflared_argv(argv.into_iter().map(Into::into).collect());
        if let Ok(Cli { command: Top::Tunnel(mut t) }) = Cli::try_parse_from(argv) {
            let _ = start(&mut t, &MapHost(HashMap::new()));
        }
    }
}

/// `--features` decides the datagram version when it names one (no lookup then); otherwise the
/// feature record does, whatever the edge (cloudflared's `NewFeatureSelector` reads it for
/// every tunnel), and the list starts as v2's until it is read.
#[test]
fn features_flag_or_the_feature_record_chooses_the_datagram_version() {
    use crate::session::DatagramVersion;
    let host = MapHost(HashMap::from([("/c.json", CREDS)]));
    let chosen = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--credentials-file",
            "/c.json",
            "--edge",
            "127.0.0.1:7844",
        ];
        args.extend_from_slice(extra);
        let s = settings(&args, "").unwrap();
        let (rc, _) = run_config(&s, &LoadedConfig::default(), &host).unwrap();
        let config = supervisor_config(&rc, None);
        let features = &config.connector.registration.features;
        (
            DatagramVersion::from_features(features),
            config.features_selector.clone(),
        )
    };
    assert_eq!(
        chosen(&["--features", "support_datagram_v3_2"]),
        (DatagramVersion::V3, None)
    );
    assert_eq!(
        chosen(&["--features", "support_datagram_v2"]),
        (DatagramVersion::V2, None)
    );
    let tag = Some("acc".to_owned()); // CREDS's
    assert_eq!(chosen(&[]), (DatagramVersion::V2, tag.clone()));
    assert_eq!(
        chosen(&["--features", "custom"]),
        (DatagramVersion::V2, tag)
    );
}

/// The management service's flags, keys and variables, and what a driver serving it adds: the
/// internal rule ahead of the user's, and `management_logs` among the features.
#[test]
fn management_flags_set_the_service_and_a_serving_driver_advertises_it() {
    let m = |args: &[&str], yaml: &str| settings(args, yaml).unwrap().management;
    let d = m(&["run"], "");
    assert_eq!(d.hostname, "management.argotunnel.com");
    assert!(d.diagnostics, "cloudflared's default is true");
    assert_eq!(d.label, None);
    assert_eq!(d.service_op_ip, "198.41.200.113:80");
    let given = m(
        &[
            "--management-hostname",
            "m.example",
            "--management-diagnostics=false",
            "--label",
            "box-1",
            "--service-op-ip",
            "192.0.2.9:80",
            "run",
        ],
        "",
    );
    assert_eq!(
        (
            given.hostname.as_str(),
            given.diagnostics,
            given.label.as_deref(),
            given.service_op_ip.as_str()
        ),
        ("m.example", false, Some("box-1"), "192.0.2.9:80")
    );
    let file = m(
        &["run"],
        "management-hostname: f.example\nmanagement-diagnostics: false\nlabel: l\nservice-op-ip: 192.0.2.1:1\n",
    );
    assert_eq!(
        (
            file.hostname.as_str(),
            file.diagnostics,
            file.label.as_deref()
        ),
        ("f.example", false, Some("l"))
    );
    assert_eq!(
        flag_env(&["tunnel"], "management-hostname").as_deref(),
        Some("TUNNEL_MANAGEMENT_HOSTNAME")
    );
    assert_eq!(
        flag_env(&["tunnel"], "management-diagnostics").as_deref(),
        Some("TUNNEL_MANAGEMENT_DIAGNOSTICS")
    );
    assert_eq!(
        flag_env(&["tunnel"], "service-op-ip").as_deref(),
        Some("TUNNEL_SERVICE_OP_IP")
    );
    assert_eq!(flag_env(&["tunnel"], "label"), None);

    for served in [false, true] {
        let c = supervised_serving(&["run"], "", served).unwrap();
        let ingress = c.connector.data.ingress.as_ref().unwrap();
        let rule = ingress.find("management.argotunnel.com:443", "/logs").1;
        assert_eq!(rule.origin.service == Service::Management, served);
        let user = ingress.find("app.example.com", "/logs").1;
        assert_ne!(user.origin.service, Service::Management);
        let features = &c.connector.registration.features;
        assert_eq!(features.iter().any(|f| f == "management_logs"), served);
    }
}
