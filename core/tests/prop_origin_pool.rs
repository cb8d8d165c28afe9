//! Issue 11: pooled origin connections never carry a request past its ingress rule. Random rule
//! sets and request sequences run through our connector and our edge over real in-process QUIC;
//! the test plays the driver, answering each origin connection with the origin it was opened
//! for. Every response must name the origin a plain model of cloudflared's matching picks
//! (first rule whose hostname and path take the request, else the last).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::control::{ConnectionDetails, Registration};
use burrow_core::ingress::{ConfigFile, Origin, Service};
use burrow_core::stream::connect::{key, ConnectRequest, ConnectionType, Metadata};
use burrow_core::tunnel::connector::{ConnectorConfig, ConnectorConnection, ConnectorEvent};
use burrow_core::tunnel::data::{FlowId, OriginAction};
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use proptest::prelude::*;
use uuid::Uuid;

const HOSTS: [&str; 4] = ["a.test", "b.test", "x.a.test", "other.example"];
const PATHS: [&str; 6] = ["/", "/admin", "/admin/x", "/api/v1", "/box", "/index.html"];
/// What a path filter means, written without regex so the model is independent.
type PathTest = fn(&str) -> bool;
/// Path filters and their meanings.
const FILTERS: [(&str, PathTest); 3] = [
    ("^/admin", |p| p.starts_with("/admin")),
    ("^/api", |p| p.starts_with("/api")),
    ("x$", |p| p.ends_with('x')),
];
const SERVICES: [&str; 5] = [
    "http_status:403",
    "http_status:404",
    "http://127.0.0.1:8001",
    "http://127.0.0.1:8002",
    "hello_world",
];

/// One generated rule: indexes into the tables above; `header` sets `httpHostHeader`, so
/// equal services with different settings are different origins.
#[derive(Debug, Clone)]
struct ModelRule {
    host: Option<usize>,
    wildcard: bool,
    path: Option<usize>,
    service: usize,
    header: bool,
}

impl ModelRule {
    fn takes(&self, host: &str, path: &str) -> bool {
        let host_ok = match self.host {
            None => true,
            Some(h) if self.wildcard => {
                let suffix = &HOSTS[h][HOSTS[h].find('.').unwrap_or(0)..];
                host.len() > suffix.len() && host.ends_with(suffix)
            }
            Some(h) => HOSTS[h] == host,
        };
        host_ok && self.path.is_none_or(|f| (FILTERS[f].1)(path))
    }

    /// What the fake origin says for this rule's origin.
    fn label(&self) -> String {
        let service = Service::parse(SERVICES[self.service]).unwrap();
        label(&service, self.header.then_some("rewritten.test"))
    }

    fn yaml(&self) -> String {
        let mut y = String::from("  - ");
        if let Some(h) = self.host {
            let name = if self.wildcard {
                format!("*{}", &HOSTS[h][HOSTS[h].find('.').unwrap_or(0)..])
            } else {
                HOSTS[h].to_owned()
            };
            y.push_str(&format!("hostname: {name:?}\n    "));
        }
        if let Some(f) = self.path {
            y.push_str(&format!("path: {:?}\n    ", FILTERS[f].0));
        }
        y.push_str(&format!("service: {:?}\n", SERVICES[self.service]));
        if self.header {
            y.push_str("    originRequest:\n      httpHostHeader: rewritten.test\n");
        }
        y
    }
}

fn label(service: &Service, header: Option<&str>) -> String {
    format!("{service} host-header={header:?}")
}

fn origin_label(o: &Origin) -> String {
    label(&o.service, o.origin_request.http_host_header.as_deref())
}

fn rule() -> impl Strategy<Value = ModelRule> {
    (
        proptest::option::of(0..HOSTS.len()),
        any::<bool>(),
        proptest::option::of(0..FILTERS.len()),
        0..SERVICES.len(),
        any::<bool>(),
    )
        .prop_map(|(host, wildcard, path, service, header)| ModelRule {
            host,
            wildcard,
            path,
            service,
            header,
        })
        // Only the last rule may catch everything.
        .prop_filter("not a catch-all", |r| r.host.is_some() || r.path.is_some())
}

fn catch_all() -> impl Strategy<Value = ModelRule> {
    (0..SERVICES.len(), any::<bool>()).prop_map(|(service, header)| ModelRule {
        host: None,
        wildcard: false,
        path: None,
        service,
        header,
    })
}

/// Our connector and our edge on one in-process QUIC connection; the test is the driver.
struct Pair {
    now: Instant,
    edge: EdgeEndpoint,
    conn: ConnectorConnection,
    edge_addr: SocketAddr,
    conn_addr: SocketAddr,
    edge_conn: Option<ConnId>,
    registered: bool,
    buf: Vec<u8>,
}

impl Pair {
    fn new(rules: &[ModelRule]) -> Self {
        let yaml: String = std::iter::once("ingress:\n".to_owned())
            .chain(rules.iter().map(ModelRule::yaml))
            .collect();
        let ingress = ConfigFile::from_yaml(&yaml)
            .unwrap()
            .ingress()
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .unwrap();
        let (server, client) = common::tls_pair();
        let registration = Registration::new(
            "acct",
            vec![7; 32],
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            vec![],
        );
        let mut config = ConnectorConfig::new(registration, client);
        config.data.ingress = Some(Arc::new(ingress));
        let now = Instant::now();
        let edge_addr: SocketAddr = "198.51.100.1:7844".parse().unwrap();
        Pair {
            now,
            edge: EdgeEndpoint::new(server, [1; 32]),
            conn: ConnectorConnection::connect(now, config, edge_addr, [2; 32]).unwrap(),
            edge_addr,
            conn_addr: "192.0.2.10:40000".parse().unwrap(),
            edge_conn: None,
            registered: false,
            buf: Vec::new(),
        }
    }

    /// Moves datagrams and events until both sides are quiet; origin actions are returned.
    fn shuttle(&mut self, actions: &mut Vec<OriginAction>) {
        loop {
            let mut moved = false;
            while let Some(t) = self.conn.poll_transmit(self.now, 1, &mut self.buf) {
                let d = self.buf[..t.size].to_vec();
                self.edge.handle_datagram(self.now, self.conn_addr, &d);
                moved = true;
            }
            while let Some(t) = self.edge.poll_transmit(self.now, 1, &mut self.buf) {
                let d = self.buf[..t.size].to_vec();
                self.conn.handle_datagram(self.now, self.edge_addr, &d);
                moved = true;
            }
            while let Some(e) = self.edge.poll_event() {
                moved = true;
                match e {
                    EdgeEvent::RegisterRequested { conn, .. } => {
                        self.edge_conn = Some(conn);
                        let details = ConnectionDetails {
                            uuid: Uuid::from_u128(3),
                            location: "TST".into(),
                            remotely_managed: false,
                        };
                        self.edge
                            .respond_registration(self.now, conn, Ok(details))
                            .unwrap();
                    }
                    EdgeEvent::Response { stream, error, .. } => {
                        assert_eq!(error, "", "stream {stream} failed");
                    }
                    _ => {}
                }
            }
            while let Some(e) = self.conn.poll_event() {
                moved = true;
                self.registered |= matches!(e, ConnectorEvent::Registered(_));
            }
            while let Some(a) = self.conn.poll_origin_action() {
                moved = true;
                actions.push(a);
            }
            if !moved {
                return;
            }
        }
    }

    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        if self.edge.poll_timeout().is_some_and(|t| t <= self.now) {
            self.edge.handle_timeout(self.now);
        }
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            self.conn.handle_timeout(self.now);
        }
    }
}

/// Plays the driver: every origin connection answers each request with the origin it was
/// opened for, keep-alive, so that connections are pooled and reused.
#[derive(Default)]
struct Origins {
    /// Open flows and the origin each was dialled for.
    flows: BTreeMap<FlowId, String>,
}

impl Origins {
    fn serve(&mut self, p: &mut Pair, actions: Vec<OriginAction>) {
        for a in actions {
            match a {
                OriginAction::Open { flow, origin, .. } => {
                    let origin = origin.expect("rules resolve every HTTP request");
                    self.flows.insert(flow, origin_label(&origin));
                    p.conn.handle_flow_connected(p.now, flow);
                }
                OriginAction::Write { flow, data } => {
                    let label = self.flows.get(&flow).expect("write to an open flow");
                    assert!(data.ends_with(b"\r\n\r\n"), "a GET has no body");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{label}",
                        label.len()
                    );
                    p.conn.handle_flow_written(p.now, flow);
                    let n = p.conn.handle_flow_data(
                        p.now,
                        flow,
                        &bytes::Bytes::copy_from_slice(response.as_bytes()),
                    );
                    assert_eq!(n, response.len(), "a small response fits the window");
                }
                OriginAction::Close { flow } => {
                    self.flows.remove(&flow);
                }
                OriginAction::Resume { .. }
                | OriginAction::ShutdownWrite { .. }
                | OriginAction::AbortDial { .. } => {}
            }
        }
    }
}

/// Runs `requests` one after another; returns what each response named, and how many origin
/// connections were opened.
fn run(rules: &[ModelRule], requests: &[(usize, usize)]) -> (Vec<String>, usize) {
    let mut p = Pair::new(rules);
    let mut origins = Origins::default();
    let mut actions = Vec::new();
    for _ in 0..2000 {
        p.shuttle(&mut actions);
        if p.registered {
            break;
        }
        p.tick();
    }
    assert!(p.registered, "registers");
    let conn = p.edge_conn.expect("edge saw the registration");
    let mut opened = 0;
    let mut seen = Vec::new();
    for &(h, path) in requests {
        let host = HOSTS[h];
        let dest = format!("http://{host}{}", PATHS[path]);
        let metadata = [
            Metadata {
                key: key::HTTP_METHOD,
                val: "GET",
            },
            Metadata {
                key: key::HTTP_HOST,
                val: host,
            },
        ];
        let request = ConnectRequest {
            dest: &dest,
            connection_type: ConnectionType::Http,
            metadata: &metadata,
        };
        let stream = p.edge.open_request(p.now, conn, &request).unwrap();
        p.edge.finish_request(p.now, conn, stream).unwrap();
        let mut body = Vec::new();
        let mut done = false;
        for _ in 0..2000 {
            p.shuttle(&mut actions);
            opened += actions
                .iter()
                .filter(|a| matches!(a, OriginAction::Open { .. }))
                .count();
            origins.serve(&mut p, std::mem::take(&mut actions));
            p.shuttle(&mut actions);
            if let Ok(finished) = p
                .edge
                .read_response(p.now, conn, stream, 1 << 16, &mut body)
            {
                done = finished;
            }
            if done {
                break;
            }
            p.tick();
        }
        assert!(done, "{dest} answered");
        seen.push(String::from_utf8_lossy(&body).into_owned());
    }
    (seen, opened)
}

fn model(rules: &[ModelRule], host: &str, path: &str) -> String {
    rules
        .iter()
        .find(|r| r.takes(host, path))
        .unwrap_or_else(|| rules.last().unwrap())
        .label()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_request_reaches_only_its_own_rules_origin(
        mut rules in proptest::collection::vec(rule(), 0..4),
        last in catch_all(),
        requests in proptest::collection::vec((0..HOSTS.len(), 0..PATHS.len()), 1..10),
    ) {
        rules.push(last);
        let (seen, opened) = run(&rules, &requests);
        let want: Vec<String> = requests
            .iter()
            .map(|&(h, p)| model(&rules, HOSTS[h], PATHS[p]))
            .collect();
        prop_assert_eq!(seen, want);
        // Reuse still happens: one origin connection per distinct (origin, host) at most.
        let distinct: std::collections::BTreeSet<(String, usize)> = requests
            .iter()
            .map(|&(h, p)| (model(&rules, HOSTS[h], PATHS[p]), h))
            .collect();
        prop_assert!(opened <= distinct.len(), "{} opened for {} distinct", opened, distinct.len());
    }
}

/// The case, pinned: `^/admin` → 403 before a catch-all origin, `/` then `/admin` then
/// `/` on one connection.
#[test]
fn admin_path_rule_is_not_bypassed_by_a_pooled_connection() {
    let admin = ModelRule {
        host: None,
        wildcard: false,
        path: Some(0),
        service: 0,
        header: false,
    };
    let web = ModelRule {
        host: None,
        wildcard: false,
        path: None,
        service: 2,
        header: false,
    };
    let (seen, opened) = run(
        &[admin.clone(), web.clone()],
        &[(0, 0), (0, 1), (0, 0), (0, 1)],
    );
    assert_eq!(
        seen,
        [web.label(), admin.label(), web.label(), admin.label()]
    );
    assert_eq!(opened, 2, "each origin's connection is reused");
}
