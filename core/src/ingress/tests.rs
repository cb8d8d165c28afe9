use proptest::prelude::*;

use super::*;

const CONFIG: &str = r#"
tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
credentials-file: /root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json
originRequest:
  connectTimeout: 10s
  noTLSVerify: true
ingress:
  - hostname: app.example.com
    path: ^/api/
    service: http://localhost:8000
    originRequest:
      httpHostHeader: internal.app
      keepAliveConnections: 5
      keepAliveTimeout: 1m30s
  - hostname: app.example.com
    service: https://localhost:8443
    originRequest:
      originServerName: app.internal
      caPool: /etc/ca.pem
      noTLSVerify: false
      disableChunkedEncoding: true
  - hostname: "*.example.com"
    service: unix:/run/app.sock
  - hostname: ssh.example.org
    service: ssh://localhost
  - hostname: hello.example.org
    service: hello_world
  - service: http_status:404
"#;

#[test]
fn parses_cloudflared_config_yml() {
    let c = ConfigFile::from_yaml(CONFIG).expect("parses");
    assert_eq!(
        c.tunnel.as_deref(),
        Some("6ff42ae2-765d-4adf-8112-31c55c1551ef")
    );
    let ing = c.ingress().expect("valid").expect("rules");
    let rules = ing.rules();
    assert_eq!(rules.len(), 6);
    assert_eq!(
        rules[0].origin.service,
        Service::Http {
            tls: false,
            host: "localhost".into(),
            port: 8000
        }
    );
    let o = &rules[0].origin.origin_request;
    assert_eq!(o.connect_timeout, Duration::from_secs(10), "global applies");
    assert!(o.no_tls_verify, "global applies");
    assert_eq!(o.http_host_header.as_deref(), Some("internal.app"));
    assert_eq!(o.keep_alive_connections, 5);
    assert_eq!(o.keep_alive_timeout, Duration::from_secs(90));
    let o = &rules[1].origin.origin_request;
    assert!(!o.no_tls_verify, "rule overrides global");
    assert!(o.disable_chunked_encoding);
    assert_eq!(o.origin_server_name.as_deref(), Some("app.internal"));
    assert_eq!(o.ca_pool.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(
        rules[1].origin.origin_request.keep_alive_connections, 100,
        "default"
    );
    assert_eq!(
        rules[3].origin.service,
        Service::Tcp {
            host: "localhost".into(),
            port: Some(22)
        }
    );
    assert_eq!(rules[4].origin.service, Service::HelloWorld);
    assert_eq!(rules[5].origin.service, Service::HttpStatus(404));
}

#[test]
fn matching_follows_cloudflared() {
    let ing = ConfigFile::from_yaml(CONFIG)
        .expect("parses")
        .ingress()
        .expect("valid")
        .expect("rules");
    let idx = |host: &str, path: &str| ing.find(host, path).0;
    assert_eq!(idx("app.example.com", "/api/users"), 0);
    assert_eq!(idx("app.example.com:443", "/api/users"), 0, "port stripped");
    assert_eq!(
        idx("app.example.com", "/v2/api/"),
        1,
        "regex is anchored by ^"
    );
    assert_eq!(idx("app.example.com", "/"), 1);
    assert_eq!(idx("x.example.com", "/"), 2, "wildcard");
    assert_eq!(idx("a.b.example.com", "/"), 2, "wildcard, any depth");
    assert_eq!(idx("example.com", "/"), 5, "wildcard is not the apex");
    assert_eq!(
        idx("APP.example.com", "/api/"),
        2,
        "case-sensitive exact match"
    );
    assert_eq!(idx("other.net", "/"), 5, "catch-all");
    assert_eq!(
        ing.find_request("https://app.example.com/api/x?y=1", None)
            .0,
        0
    );
    assert_eq!(
        ing.find_request("http://ignored/api/x", Some("app.example.com"))
            .0,
        0,
        "Host header wins"
    );
    assert_eq!(ing.find_request("/api/x", Some("hello.example.org")).0, 4);
}

#[test]
fn unanchored_path_is_a_substring_match() {
    let raw = vec![
        RawRule {
            path: Some("static".into()),
            service: "http://a".into(),
            ..Default::default()
        },
        RawRule {
            service: "http://b".into(),
            ..Default::default()
        },
    ];
    let ing = Ingress::new(&raw, &OriginRequestConfig::default()).expect("valid");
    assert_eq!(ing.find("h", "/x/static/y").0, 0);
}

fn err(yaml: &str) -> String {
    ConfigFile::from_yaml(yaml)
        .and_then(|c| c.ingress())
        .expect_err("invalid")
        .to_string()
}

#[test]
fn validation_errors_have_cloudflared_texts() {
    assert_eq!(
        err("ingress:\n - hostname: a.com\n   service: http://x\n"),
        "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
    );
    assert_eq!(
        err("ingress:\n - service: http://x\n - service: http://y\n"),
        "Rule #1 is matching the hostname '', but this will match every hostname, meaning the rules which follow it will never be triggered."
    );
    assert_eq!(
        err("ingress:\n - hostname: a.*.com\n   service: http://x\n - service: http://y\n"),
        "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
    );
    assert_eq!(
        err("ingress:\n - hostname: a.com:80\n   service: http://x\n - service: http://y\n"),
        "Hostname cannot contain a port"
    );
    assert!(
        err("ingress:\n - hostname: a.com\n   path: \"(\"\n   service: http://x\n - service: http://y\n")
            .starts_with("Rule #1 has an invalid regex")
    );
    assert_eq!(
        err("ingress:\n - service: http://localhost:8080/\n"),
        "http://localhost:8080/ is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path"
    );
    assert_eq!(
        err("ingress:\n - service: localhost:8080\n"),
        "localhost:8080 is an invalid address, please make sure it has a scheme and a hostname"
    );
    assert!(err("ingress:\n - service: http_status:abc\n").starts_with("invalid HTTP status"));
    assert!(err("ingress:\n - service: http_status:42\n").starts_with("invalid HTTP status"));
    assert!(
        err("originRequest:\n  connectTimeout: soon\ningress:\n - service: http://x\n")
            .contains("invalid duration")
    );
}

#[test]
fn services() {
    assert_eq!(
        Service::parse("wss://[::1]:9000").expect("ok"),
        Service::Http {
            tls: true,
            host: "::1".into(),
            port: 9000
        }
    );
    assert_eq!(
        Service::parse("unix+tls:/s").expect("ok"),
        Service::Unix {
            path: "/s".into(),
            tls: true
        }
    );
    assert_eq!(
        Service::parse("tcp://db:5432").expect("ok"),
        Service::Tcp {
            host: "db".into(),
            port: Some(5432)
        }
    );
    assert_eq!(
        Service::parse("hello-world").expect("ok"),
        Service::HelloWorld
    );
    assert_eq!(Service::parse("bastion").expect("ok"), Service::Bastion);
    assert_eq!(
        Service::parse("socks-proxy").expect("ok"),
        Service::SocksProxy
    );
    assert_eq!(
        Service::parse("http://localhost").expect("ok").to_string(),
        "http://localhost:80"
    );
}

#[test]
fn remote_config_json_with_numeric_durations() {
    let json = br#"{"ingress":[{"hostname":"a.com","service":"http://localhost:1","originRequest":{"connectTimeout":5}},{"service":"http_status:503"}],"warp-routing":{"enabled":true},"originRequest":{"noTLSVerify":true,"keepAliveTimeout":"2m"}}"#;
    let (_, ing) = RemoteConfig::from_json(json).expect("valid");
    assert_eq!(
        ing.rules()[0].origin.origin_request.connect_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(
        ing.rules()[1].origin.origin_request.keep_alive_timeout,
        Duration::from_secs(120)
    );
    assert!(ing.rules()[1].origin.origin_request.no_tls_verify);
    assert!(RemoteConfig::from_json(b"{not json").is_err());
    assert!(RemoteConfig::from_json(br#"{"ingress":[]}"#).is_err());
}

#[test]
fn warp_routing_max_active_flows_from_yaml_and_json() {
    let c = ConfigFile::from_yaml(
        "warp-routing:\n  maxActiveFlows: 250\n  connectTimeout: 5s\ningress:\n  - service: http_status:404\n",
    )
    .expect("parses");
    assert_eq!(c.warp_routing.max_active_flows, Some(250));
    assert_eq!(
        ConfigFile::from_yaml("tunnel: x\n")
            .expect("parses")
            .warp_routing
            .max_active_flows,
        None,
        "absent: no limit from the file"
    );
    let (remote, _) = RemoteConfig::from_json(
        br#"{"ingress":[{"service":"http_status:404"}],"warp-routing":{"maxActiveFlows":3,"connectTimeout":10}}"#,
    )
    .expect("valid");
    assert_eq!(remote.warp_routing.max_active_flows, Some(3));
    let (remote, _) =
        RemoteConfig::from_json(br#"{"ingress":[{"service":"http_status:404"}]}"#).expect("valid");
    assert_eq!(remote.warp_routing.max_active_flows, None);
    assert!(
        RemoteConfig::from_json(
            br#"{"ingress":[{"service":"http_status:404"}],"warp-routing":{"maxActiveFlows":-1}}"#
        )
        .is_err(),
        "an unsigned count, as cloudflared's uint64"
    );
}

proptest! {
    #[test]
    fn arbitrary_yaml_never_panics(text in "\\PC{0,400}") {
        if let Ok(c) = ConfigFile::from_yaml(&text) {
            if let Ok(Some(ing)) = c.ingress() {
                let _ = ing.find("a.example.com", "/x");
            }
        }
    }

    #[test]
    fn arbitrary_rules_never_panic(
        rules in proptest::collection::vec(
            (proptest::option::of("[a-z*.:\\[\\]0-9]{0,20}"), proptest::option::of("\\PC{0,12}"), "\\PC{0,30}"),
            1..5),
        host in "\\PC{0,30}",
        path in "\\PC{0,30}",
    ) {
        let raw: Vec<RawRule> = rules.into_iter().map(|(hostname, path, service)| RawRule {
            hostname, path, service, origin_request: None,
        }).collect();
        if let Ok(ing) = Ingress::new(&raw, &OriginRequestConfig::default()) {
            let _ = ing.find(&host, &path);
            let _ = ing.find_request(&host, Some(&path));
        }
    }

    #[test]
    fn arbitrary_services_never_panic(s in "\\PC{0,60}") {
        if let Ok(service) = Service::parse(&s) {
            let _ = service.to_string();
        }
    }

    #[test]
    fn structured_yaml_never_panics(
        keys in proptest::collection::vec(
            prop_oneof![
                Just("hostname"), Just("path"), Just("service"), Just("originRequest"),
                Just("connectTimeout"), Just("noTLSVerify"), Just("keepAliveConnections")
            ],
            0..6),
        vals in proptest::collection::vec("[ -~]{0,12}", 6),
    ) {
        let mut text = String::from("ingress:\n");
        for (k, v) in keys.iter().zip(&vals) {
            text.push_str(&format!("  - {k}: {v}\n"));
        }
        text.push_str("  - service: http_status:404\n");
        let _ = ConfigFile::from_yaml(&text).and_then(|c| c.ingress());
    }
}

#[test]
fn request_options_follow_the_rule_and_its_service_kind() {
    let ingress = ConfigFile::from_yaml(CONFIG)
        .unwrap()
        .ingress()
        .unwrap()
        .unwrap();
    let api = ingress
        .find("app.example.com", "/api/x")
        .1
        .request_options();
    assert_eq!(api.host_header, Some("internal.app"));
    assert!(!api.disable_chunked_encoding);
    let site = ingress.find("app.example.com", "/").1.request_options();
    assert_eq!(site.host_header, None);
    assert!(site.disable_chunked_encoding);
    // cloudflared's unix-socket origins ignore httpHostHeader; chunking applies to them.
    let unix = Ingress::new(
        &[RawRule {
            service: "unix:/run/a.sock".into(),
            origin_request: Some(OriginRequestConfig {
                http_host_header: Some("h".into()),
                disable_chunked_encoding: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        &OriginRequestConfig::default(),
    )
    .unwrap();
    let o = unix.rules()[0].request_options();
    assert_eq!((o.host_header, o.disable_chunked_encoding), (None, true));
}

/// `noHappyEyeballs` stops the family race for HTTP services only, as cloudflared sets it on
/// its HTTP transport's dialer alone; a rule's value overrides the global one.
#[test]
fn no_happy_eyeballs_holds_for_http_services_only() {
    let yaml = "originRequest:\n  noHappyEyeballs: true\ningress:\n  - hostname: web.test\n    service: http://localhost:8000\n  - hostname: tls.test\n    service: https://localhost:8443\n  - hostname: again.test\n    service: http://localhost:8001\n    originRequest:\n      noHappyEyeballs: false\n  - hostname: ssh.test\n    service: ssh://localhost:22\n  - service: http_status:404\n";
    let ingress = ConfigFile::from_yaml(yaml)
        .unwrap()
        .ingress()
        .unwrap()
        .unwrap();
    let races = |host: &str| ingress.find(host, "/").1.origin.races_families();
    assert!(!races("web.test"));
    assert!(!races("tls.test"));
    assert!(races("again.test"), "the rule's false over the global true");
    assert!(races("ssh.test"), "TCP services always race");
    let plain = ConfigFile::from_yaml("ingress:\n  - service: http://localhost:8000\n").unwrap();
    assert!(plain.ingress().unwrap().unwrap().rules()[0]
        .origin
        .races_families());
}

/// Every `tunnel`/`tunnel run` flag burrow acts on, as cloudflared's config.yml writes it.
const FLAG_KEYS: &str = r#"
tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
token: eyJhIjoiYSJ9
credentials-file: /etc/cloudflared/t.json
url: http://localhost:3000
edge:
  - 127.0.0.1:7844
  - "[::1]:7844"
cacert: /etc/ca.pem
ha-connections: 2
grace-period: 10s
edge-ip-version: "6"
region: us
metrics: 127.0.0.1:2000
loglevel: debug
protocol: quic
features: [support_datagram_v3_2, x]
max-active-flows: 7
icmpv4-src: 192.0.2.1
icmpv6-src: "2001:db8::1"
post-quantum: true
no-autoupdate: true
autoupdate-freq: 24h
logfile: /var/log/cloudflared.log
retries: 3
warp-routing:
  maxActiveFlows: 5
"#;

#[test]
fn flag_keys_parse_with_cloudflared_names_and_types() {
    let c = ConfigFile::from_yaml(FLAG_KEYS).expect("parses");
    assert_eq!(c.token.as_deref(), Some("eyJhIjoiYSJ9"));
    assert_eq!(
        c.credentials_file.as_deref(),
        Some("/etc/cloudflared/t.json")
    );
    assert_eq!(c.url.as_deref(), Some("http://localhost:3000"));
    assert_eq!(
        c.edge,
        Some(vec!["127.0.0.1:7844".to_owned(), "[::1]:7844".to_owned()])
    );
    assert_eq!(c.cacert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(c.ha_connections, Some(2));
    assert_eq!(c.grace_period, Some(duration::Dur(Duration::from_secs(10))));
    assert_eq!(c.edge_ip_version.as_deref(), Some("6"));
    assert_eq!(c.region.as_deref(), Some("us"));
    assert_eq!(c.metrics.as_deref(), Some("127.0.0.1:2000"));
    assert_eq!(c.loglevel.as_deref(), Some("debug"));
    assert_eq!(c.protocol.as_deref(), Some("quic"));
    assert_eq!(
        c.features,
        Some(vec!["support_datagram_v3_2".to_owned(), "x".to_owned()])
    );
    assert_eq!(c.max_active_flows, Some(7));
    assert_eq!(c.icmpv4_src, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(c.icmpv6_src, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(c.post_quantum, Some(true));
    assert_eq!(c.warp_routing.max_active_flows, Some(5));
    assert!(c.logfile.is_some(), "logfile is read now");
    assert!(c.retries.is_some(), "retries is read now");
    assert_eq!(
        c.flag_values.get("no-autoupdate").map(String::as_str),
        Some("true"),
        "configuration flags keep their written value"
    );
    assert_eq!(
        c.ignored_keys,
        ["no-autoupdate", "autoupdate-freq"],
        "keys burrow does not act on are collected, in file order, not refused"
    );
}

#[test]
fn a_flag_key_of_the_wrong_type_is_an_error_naming_it() {
    for (yaml, key) in [
        ("ha-connections: two\n", "ha-connections"),
        ("ha-connections: 300\n", "ha-connections"),
        ("edge: 127.0.0.1:7844\n", "edge"),
        ("features: {a: b}\n", "features"),
        ("grace-period: soon\n", "grace-period"),
        ("max-active-flows: -1\n", "max-active-flows"),
        ("icmpv4-src: \"::1\"\n", "icmpv4-src"),
        ("post-quantum: [1]\n", "post-quantum"),
        ("tunnel: t\nmetrics: [a]\n", "metrics"),
    ] {
        let e = err(yaml);
        assert!(e.contains(key), "{yaml:?}: {e}");
    }
}

/// A YAML value of any shape, a few levels deep.
fn yaml_value() -> impl Strategy<Value = serde_yaml_ng::Value> {
    use serde_yaml_ng::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        "\\PC{0,16}".prop_map(Value::String),
        prop_oneof![
            Just("10s"),
            Just("127.0.0.1:7844"),
            Just("::1"),
            Just("quic")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml_ng::Value::Sequence),
            proptest::collection::vec(("[a-zA-Z-]{1,8}", inner), 0..4).prop_map(|kv| {
                serde_yaml_ng::Value::Mapping(
                    kv.into_iter()
                        .map(|(k, v)| (serde_yaml_ng::Value::String(k), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    /// Any top-level map, with cloudflared's flag names or others as keys and any values, parses
    /// or is refused, never panics; what parses names only unknown keys as ignored.
    #[test]
    fn arbitrary_yaml_maps_never_panic(
        entries in proptest::collection::vec(
            (
                prop_oneof![
                    proptest::sample::select(CONFIG_FILE_KEYS).prop_map(str::to_owned),
                    "[a-z-]{1,12}",
                ],
                yaml_value(),
            ),
            0..8,
        ),
    ) {
        let map: serde_yaml_ng::Mapping = entries
            .into_iter()
            .map(|(k, v)| (serde_yaml_ng::Value::String(k), v))
            .collect();
        let text = serde_yaml_ng::to_string(&map).expect("serializes");
        if let Ok(c) = ConfigFile::from_yaml(&text) {
            for k in &c.ignored_keys {
                prop_assert!(!CONFIG_FILE_KEYS.contains(&k.as_str()), "{k}");
                prop_assert!(map.contains_key(k.as_str()), "{k}");
            }
            let _ = c.ingress();
        }
    }
}

#[test]
fn tls_server_name_as_cloudflared_picks_it() {
    let ing = |yaml: &str| {
        ConfigFile::from_yaml(yaml)
            .unwrap()
            .ingress()
            .unwrap()
            .unwrap()
    };
    let i = ing("ingress:\n  - service: https://10.0.0.1:8443\n");
    assert_eq!(
        i.rules()[0].origin.tls_server_name(Some("a.test")),
        Some("10.0.0.1")
    );
    let i = ing("ingress:\n  - service: https://o.internal\n    originRequest:\n      originServerName: named.internal\n");
    assert_eq!(
        i.rules()[0].origin.tls_server_name(Some("a.test")),
        Some("named.internal")
    );
    let i = ing("ingress:\n  - service: https://o.internal\n    originRequest:\n      originServerName: named.internal\n      matchSNItoHost: true\n");
    let o = &i.rules()[0].origin;
    assert_eq!(
        o.tls_server_name(Some("a.test:8443")),
        Some("a.test"),
        "the request's Host wins, port stripped"
    );
    assert_eq!(o.tls_server_name(None), Some("named.internal"));
    let i = ing("ingress:\n  - service: https://o.internal\n    originRequest:\n      httpHostHeader: h.internal\n      matchSNItoHost: true\n");
    assert_eq!(
        i.rules()[0].origin.tls_server_name(Some("a.test")),
        Some("h.internal"),
        "the Host the origin is sent"
    );
    let i = ing("ingress:\n  - service: unix+tls:/run/s.sock\n");
    assert_eq!(i.rules()[0].origin.tls_server_name(Some("a.test")), None);
}

#[test]
fn http2_is_offered_only_for_http_requests_to_tls_origins_of_http2origin_rules() {
    let origins = ConfigFile::from_yaml(
        "originRequest:\n  http2Origin: true\ningress:\n  - hostname: a\n    service: https://o:8443\n  - hostname: b\n    service: unix+tls:/run/o.sock\n  - hostname: c\n    service: http://o:8080\n  - hostname: d\n    service: https://o\n    originRequest:\n      http2Origin: false\n  - service: http_status:404\n",
    )
    .unwrap()
    .ingress()
    .unwrap()
    .unwrap();
    let offers = |i: usize, kind| origins.rules()[i].origin.offers_http2(kind);
    assert!(offers(0, FlowKind::Http) && offers(1, FlowKind::Http));
    assert!(!offers(0, FlowKind::WebSocket), "upgrades stay on HTTP/1.1");
    assert!(!offers(2, FlowKind::Http), "no h2c to cleartext origins");
    assert!(!offers(3, FlowKind::Http), "the rule's own setting wins");
    assert!(!offers(4, FlowKind::Http));
}

#[test]
fn bastion_mode_turns_url_services_into_the_bastion_as_cloudflared() {
    let ing = ConfigFile::from_yaml(
        "ingress:\n  - hostname: a\n    service: bastion\n  - hostname: b\n    service: ssh://x:22\n    originRequest:\n      bastionMode: true\n  - hostname: c\n    service: hello_world\n    originRequest:\n      bastionMode: true\n  - service: http://x:1\n",
    )
    .unwrap()
    .ingress()
    .unwrap()
    .unwrap();
    let services: Vec<String> = ing
        .rules()
        .iter()
        .map(|r| r.origin.service.to_string())
        .collect();
    assert_eq!(
        services,
        ["bastion", "bastion", "hello_world", "http://x:1"]
    );
}

/// The flag keys the file reads (the single origin's, the QUIC and write tuning) are read,
/// not named as ignored.
#[test]
fn tuning_keys_are_read_not_called_ignored() {
    let default = format!("{:?}", ConfigFile::default());
    for (key, value) in [
        ("proxy-no-happy-eyeballs", "true"),
        ("proxy-connect-timeout", "3s"),
        ("proxy-tls-timeout", "3s"),
        ("proxy-tcp-keepalive", "3s"),
        ("proxy-keepalive-connections", "3"),
        ("proxy-keepalive-timeout", "3s"),
        ("quic-disable-pmtu-discovery", "true"),
        ("quic-connection-level-flow-control-limit", "3"),
        ("quic-stream-level-flow-control-limit", "3"),
        ("write-stream-timeout", "3s"),
        ("rpc-timeout", "3s"),
        ("max-edge-addr-retries", "3"),
    ] {
        let file = ConfigFile::from_yaml(&format!("{key}: {value}\n")).expect(key);
        assert!(
            file.ignored_keys.is_empty(),
            "{key}: {:?}",
            file.ignored_keys
        );
        assert_ne!(format!("{file:?}"), default, "{key} was not read");
        assert!(CONFIG_FILE_KEYS.contains(&key), "{key}");
    }
}

/// The management hostname's internal rule comes before every user rule, catch-all included,
/// and a pushed configuration keeps it.
#[test]
fn the_management_rule_comes_first_and_survives_a_push() {
    let ing = ConfigFile::from_yaml(CONFIG)
        .expect("parses")
        .ingress()
        .expect("valid")
        .expect("rules");
    let users = ing.rules().len();
    assert_ne!(
        ing.find("management.argotunnel.com", "/logs")
            .1
            .origin
            .service,
        Service::Management
    );
    let ing = ing.with_management("management.argotunnel.com");
    let (i, rule) = ing.find("management.argotunnel.com:443", "/logs");
    assert_eq!((i, &rule.origin.service), (users, &Service::Management));
    assert_ne!(
        ing.find("app.example.com", "/").1.origin.service,
        Service::Management
    );
    let pushed = Ingress::default_origin().keeping_internal_of(&ing);
    assert_eq!(
        pushed
            .find("management.argotunnel.com", "/")
            .1
            .origin
            .service,
        Service::Management
    );
    assert_eq!(
        pushed.find("other", "/").1.origin.service,
        Service::HttpStatus(503)
    );
}
