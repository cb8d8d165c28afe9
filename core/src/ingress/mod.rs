//! cloudflared's ingress rules (PROTOCOL.md C§5): which origin service answers an eyeball
//! request, by hostname (exact or `*.example.com`) and path regex, first match wins, the last
//! rule catches everything.
//!
//! Rules come from `config.yml` ([`ConfigFile::from_yaml`]), from the edge's remote
//! configuration JSON ([`RemoteConfig::from_json`]) or from `--url` ([`Ingress::single`]).
//! Validation errors carry cloudflared's texts. Parsing is pure: files are read by the driver.

pub mod access;
pub mod bastion;
mod config;
mod duration;
pub mod local_config;
pub use duration::{parse as parse_duration, Dur};
pub mod no_tls_verify;
#[cfg(test)]
mod tests;

pub use config::{
    ConfigFile, IpRuleConfig, OriginFlagKeys, OriginRequestConfig, RawRule, RemoteConfig,
    WarpRoutingConfig, CONFIG_FILE_KEYS,
};

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::stream::http1::RequestOptions;
use crate::stream::proxy::FlowKind;

use thiserror::Error;

/// A configuration that cloudflared would refuse, with cloudflared's words where it has them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IngressError {
    /// `ingress:` is empty.
    #[error("The config file doesn't contain any ingress rules")]
    NoRules,
    /// The last rule has a hostname or path.
    #[error("The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)")]
    LastRuleNotCatchAll,
    /// A catch-all rule before the last.
    #[error("Rule #{index} is matching the hostname '{hostname}', but this will match every hostname, meaning the rules which follow it will never be triggered.")]
    RuleShouldNotBeCatchAll {
        /// 1-based rule number.
        index: usize,
        /// Its hostname.
        hostname: String,
    },
    /// `*` anywhere but first.
    #[error("Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\"")]
    BadWildcard,
    /// `host:port` as a hostname.
    #[error("Hostname cannot contain a port")]
    HostnameContainsPort,
    /// The path regex does not compile.
    #[error("Rule #{index} has an invalid regex: {reason}")]
    InvalidRegex {
        /// 1-based rule number.
        index: usize,
        /// The regex crate's complaint.
        reason: String,
    },
    /// `http_status:` with no number or one out of range.
    #[error("invalid HTTP status: {0}")]
    InvalidStatus(String),
    /// A URL service without scheme or host.
    #[error("{0} is an invalid address, please make sure it has a scheme and a hostname")]
    InvalidAddress(String),
    /// A URL service with a path.
    #[error("{0} is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path")]
    ServiceHasPath(String),
    /// A service kind burrow does not run (yet).
    #[error("service {0} is not supported by burrow yet")]
    Unsupported(String),
    /// An `ipRules` entry cloudflared refuses.
    #[error("unable to create ip rule for socks-proxy: {0}")]
    IpRule(String),
    /// `originRequest.access` that cloudflared refuses.
    #[error("{0}")]
    Access(String),
    /// A duration value that does not parse.
    #[error("invalid duration {0:?}")]
    Duration(String),
    /// The YAML or JSON itself does not parse.
    #[error("cannot parse the configuration: {0}")]
    Syntax(String),
}

/// The page the `hello_world` service serves (both drivers serve it in process).
pub const HELLO_PAGE: &str = "<!DOCTYPE html><html><head><title>burrow</title></head><body><h1>Congrats! You created a tunnel!</h1><p>This page is served by burrow's built-in hello_world origin, through the tunnel.</p></body></html>\n";

/// Where a rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// An HTTP(S) origin at `host:port` (`ws://`/`wss://` are the same as `http://`/`https://`).
    Http {
        /// TLS to the origin.
        tls: bool,
        /// Origin host.
        host: String,
        /// Origin port (scheme default when absent).
        port: u16,
    },
    /// HTTP over a unix socket (`unix:`), or HTTPS (`unix+tls:`).
    Unix {
        /// Socket path.
        path: String,
        /// TLS over the socket.
        tls: bool,
    },
    /// A fixed status, empty body (`http_status:N`).
    HttpStatus(u16),
    /// The built-in hello-world page.
    HelloWorld,
    /// The connector's own management service ([`crate::management`]): an internal rule
    /// only, never written in a configuration.
    Management,
    /// cloudflared's SOCKS5 proxy over WebSocket (`socks-proxy`), limited by `ipRules`.
    SocksProxy,
    /// cloudflared's bastion (`service: bastion` or `bastionMode`): TCP over WebSocket to the
    /// destination each request names ([`bastion::destination`]).
    Bastion,
    /// Any other `scheme://host[:port]`: a raw TCP stream (cloudflared carries it over
    /// WebSocket; ssh 22, rdp 3389, smb 445, tcp 7864 by default).
    Tcp {
        /// Origin host.
        host: String,
        /// Origin port, when known.
        port: Option<u16>,
    },
}

impl Service {
    /// Parses a `service:` value the way cloudflared checks it, in its order.
    pub fn parse(raw: &str) -> Result<Self, IngressError> {
        if let Some(path) = raw.strip_prefix("unix:") {
            return Ok(Service::Unix {
                path: path.into(),
                tls: false,
            });
        }
        if let Some(path) = raw.strip_prefix("unix+tls:") {
            return Ok(Service::Unix {
                path: path.into(),
                tls: true,
            });
        }
        if let Some(code) = raw.strip_prefix("http_status:") {
            let status: u16 = code
                .parse()
                .map_err(|_| IngressError::InvalidStatus(code.into()))?;
            if !(100..=999).contains(&status) {
                return Err(IngressError::InvalidStatus(code.into()));
            }
            return Ok(Service::HttpStatus(status));
        }
        if matches!(raw, "hello_world" | "hello-world" | "helloworld") {
            return Ok(Service::HelloWorld);
        }
        if raw == "bastion" {
            return Ok(Service::Bastion);
        }
        if raw == "socks-proxy" {
            return Ok(Service::SocksProxy);
        }
        let uri: http::Uri = raw
            .parse()
            .map_err(|_| IngressError::InvalidAddress(raw.into()))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(IngressError::InvalidAddress(raw.into()));
        };
        if host.is_empty() {
            return Err(IngressError::InvalidAddress(raw.into()));
        }
        // http::Uri reports "/" for an absent path; cloudflared refuses even an explicit "/".
        let after_authority = raw
            .split_once("://")
            .map(|(_, rest)| rest.find(['/', '?']).map_or("", |i| &rest[i..]))
            .unwrap_or("");
        if !after_authority.is_empty() {
            return Err(IngressError::ServiceHasPath(raw.into()));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16();
        Ok(match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => Service::Http {
                tls: false,
                host,
                port: port.unwrap_or(80),
            },
            "https" | "wss" => Service::Http {
                tls: true,
                host,
                port: port.unwrap_or(443),
            },
            other => Service::Tcp {
                host,
                port: port.or(match other {
                    "ssh" => Some(22),
                    "rdp" => Some(3389),
                    "smb" => Some(445),
                    "tcp" => Some(7864),
                    _ => None,
                }),
            },
        })
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Service::Http { tls, host, port } => {
                let scheme = if *tls { "https" } else { "http" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            Service::Unix { path, tls: false } => write!(f, "unix:{path}"),
            Service::Unix { path, tls: true } => write!(f, "unix+tls:{path}"),
            Service::HttpStatus(s) => write!(f, "http_status:{s}"),
            Service::HelloWorld => f.write_str("hello_world"),
            Service::Management => f.write_str("management"),
            Service::Bastion => f.write_str("bastion"),
            Service::SocksProxy => f.write_str("socks-proxy"),
            Service::Tcp { host, port } => match port {
                Some(p) => write!(f, "tcp://{host}:{p}"),
                None => write!(f, "tcp://{host}"),
            },
        }
    }
}

/// The effective `originRequest` options of a rule (rule over global over default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRequest {
    /// TCP dial timeout (30 s).
    pub connect_timeout: Duration,
    /// TLS handshake timeout (10 s).
    pub tls_timeout: Duration,
    /// TCP keep-alive period (30 s).
    pub tcp_keep_alive: Duration,
    /// Skip verifying the origin's certificate.
    pub no_tls_verify: bool,
    /// Replaces `Host` toward the origin.
    pub http_host_header: Option<String>,
    /// TLS server name toward the origin.
    pub origin_server_name: Option<String>,
    /// Extra CA file for the origin's certificate.
    pub ca_pool: Option<String>,
    /// Idle keep-alive connections kept (100).
    pub keep_alive_connections: u32,
    /// How long an idle connection is kept (90 s).
    pub keep_alive_timeout: Duration,
    /// Never send chunked request bodies.
    pub disable_chunked_encoding: bool,
    /// SNI from the request's Host.
    pub match_sni_to_host: bool,
    /// The Access check requests must pass (`access.required`).
    pub access: Option<access::AccessPolicy>,
    /// `http2Origin`: offer HTTP/2 to TLS origins (see [`Origin::offers_http2`]).
    pub http2_origin: bool,
    /// `bastionMode`: the rule's URL service is replaced by [`Service::Bastion`].
    pub bastion_mode: bool,
    /// `ipRules`: where a `socks-proxy` rule may connect (first match decides; none: refused).
    pub ip_rules: Vec<IpRule>,
    /// `proxyType: socks`: a TCP service's WebSocket carries a SOCKS5 exchange before the
    /// bytes (see [`Origin::socks_over_tcp`]).
    pub socks: bool,
    /// `noHappyEyeballs`: an HTTP service's name is dialled address by address, the two
    /// families not raced (see [`Origin::races_families`]).
    pub no_happy_eyeballs: bool,
}

impl Default for OriginRequest {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            tls_timeout: Duration::from_secs(10),
            tcp_keep_alive: Duration::from_secs(30),
            no_tls_verify: false,
            http_host_header: None,
            origin_server_name: None,
            ca_pool: None,
            keep_alive_connections: 100,
            keep_alive_timeout: Duration::from_secs(90),
            disable_chunked_encoding: false,
            match_sni_to_host: false,
            access: None,
            http2_origin: false,
            bastion_mode: false,
            ip_rules: Vec::new(),
            socks: false,
            no_happy_eyeballs: false,
        }
    }
}

impl OriginRequest {
    /// These options with `c`'s set values on top.
    pub fn overlay(&self, c: &OriginRequestConfig) -> Result<Self, IngressError> {
        let mut o = self.clone();
        let d = |v: &Option<duration::Dur>, into: &mut Duration| {
            if let Some(v) = v {
                *into = v.0;
            }
        };
        d(&c.connect_timeout, &mut o.connect_timeout);
        d(&c.tls_timeout, &mut o.tls_timeout);
        d(&c.tcp_keep_alive, &mut o.tcp_keep_alive);
        d(&c.keep_alive_timeout, &mut o.keep_alive_timeout);
        if let Some(v) = c.no_tls_verify {
            o.no_tls_verify = v;
        }
        if let Some(v) = &c.http_host_header {
            o.http_host_header = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &c.origin_server_name {
            o.origin_server_name = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &c.ca_pool {
            o.ca_pool = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = c.keep_alive_connections {
            o.keep_alive_connections = v;
        }
        if let Some(v) = c.disable_chunked_encoding {
            o.disable_chunked_encoding = v;
        }
        if let Some(v) = c.match_sni_to_host {
            o.match_sni_to_host = v;
        }
        if let Some(v) = c.http2_origin {
            o.http2_origin = v;
        }
        if let Some(v) = c.bastion_mode {
            o.bastion_mode = v;
        }
        if let Some(v) = c.no_happy_eyeballs {
            o.no_happy_eyeballs = v;
        }
        if let Some(v) = &c.proxy_type {
            o.socks = v == "socks";
        }
        if let Some(rules) = &c.ip_rules {
            o.ip_rules = rules
                .iter()
                .map(|r| IpRule::parse(r.prefix.as_deref(), &r.ports, r.allow))
                .collect::<Result<_, _>>()?;
        }
        // cloudflared checks only a rule's own `access`; burrow also lets a global one apply
        // (to every rule that does not set its own), so protection never silently fails open.
        if let Some(v) = &c.access {
            o.access = access::AccessPolicy::from_config(v)?;
        }
        Ok(o)
    }
}

/// One `ipRules` entry: a CIDR prefix, ports (none: all) and whether it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    /// The network's address, host bits cleared.
    pub network: std::net::IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
    /// Ports it applies to (empty: every port).
    pub ports: Vec<u16>,
    /// Allow or deny.
    pub allow: bool,
}

impl IpRule {
    /// cloudflared's `ipaccess.NewRuleByCIDR`: a prefix is required, ports are 1..=65535.
    pub fn parse(prefix: Option<&str>, ports: &[i64], allow: bool) -> Result<Self, IngressError> {
        let prefix = prefix
            .filter(|p| !p.is_empty())
            .ok_or_else(|| IngressError::IpRule("no prefix provided".into()))?;
        let bad = || IngressError::IpRule(format!("unable to parse cidr: {prefix}"));
        let (addr, len) = prefix.split_once('/').ok_or_else(bad)?;
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max && !len.starts_with('+'))
            .ok_or_else(bad)?;
        let ports = ports
            .iter()
            .map(|&p| {
                u16::try_from(p).ok().filter(|p| *p >= 1).ok_or_else(|| {
                    IngressError::IpRule(format!(
                        "invalid port {p}, needs to be between 1 and 65535"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            network: mask(addr, prefix_len),
            prefix_len,
            ports,
            allow,
        })
    }

    /// Whether `ip` is in the prefix (of the same family, as Go's `IPNet.Contains`).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix_len) == self.network
    }
}

fn mask(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::from((u32::from(a) & m).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::from((u128::from(a) & m).to_be_bytes())
        }
    }
}

/// A hostname filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// `""` or `"*"`.
    Any,
    /// Exact (case-sensitive, as cloudflared).
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
}

/// Where a rule sends requests and how they get there: all that decides which origin a request
/// reaches, so an origin connection may carry another request only if it resolved to an equal
/// `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Where it sends requests.
    pub service: Service,
    /// Its effective options.
    pub origin_request: OriginRequest,
}

impl Origin {
    /// Whether a flow of `kind` to this origin offers HTTP/2 (ALPN `h2`, then `http/1.1`), as
    /// cloudflared's `http2Origin` (Go's `ForceAttemptHTTP2`): only plain HTTP requests to a TLS
    /// origin; WebSocket upgrades stay on HTTP/1.1 and cleartext origins are never sent h2c.
    /// The origin's TLS answer decides: without `h2` negotiated the flow is HTTP/1.1.
    pub fn offers_http2(&self, kind: FlowKind) -> bool {
        let tls = matches!(
            self.service,
            Service::Http { tls: true, .. } | Service::Unix { tls: true, .. }
        );
        self.origin_request.http2_origin && tls && kind == FlowKind::Http
    }

    /// Whether a dial to this origin's name races its two address families
    /// ([`crate::tunnel::happy_eyeballs`]). cloudflared's `noHappyEyeballs` turns that off
    /// (Go's `FallbackDelay = -1`) in the dialer of its HTTP transport only, so HTTP services
    /// honour it and TCP services (`ssh://`, `tcp://`, ...) always race.
    pub fn races_families(&self) -> bool {
        !(matches!(self.service, Service::Http { .. }) && self.origin_request.no_happy_eyeballs)
    }

    /// Whether this TCP origin is reached through a SOCKS5 exchange inside the eyeball's
    /// WebSocket, as cloudflared's `proxyType: socks` (its `socks.StreamHandler` over a
    /// `ConnDialer`): the service (or the bastion's destination) is dialled first, then the
    /// client's CONNECT, whatever it names, is answered with that connection
    /// ([`crate::stream::socks::Server::over_dialled`]). Other services ignore `proxyType`.
    pub fn socks_over_tcp(&self) -> bool {
        matches!(self.service, Service::Tcp { .. }) && self.origin_request.socks
    }

    /// The TLS server name for a request whose `Host` is `request_host`, as cloudflared picks
    /// it: with `matchSNItoHost` the `Host` the origin is sent (`httpHostHeader` if set, port
    /// stripped), else `originServerName`, else the service's host (None: the driver's default).
    pub fn tls_server_name<'a>(&'a self, request_host: Option<&'a str>) -> Option<&'a str> {
        let o = &self.origin_request;
        if o.match_sni_to_host {
            let host = match self.service {
                Service::Http { .. } => o.http_host_header.as_deref().or(request_host),
                _ => request_host,
            };
            if let Some(h) = host.map(strip_port).filter(|h| !h.is_empty()) {
                return Some(h.trim_start_matches('[').trim_end_matches(']'));
            }
        }
        if let Some(name) = o.origin_server_name.as_deref() {
            return Some(name);
        }
        match &self.service {
            Service::Http { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    host: Host,
    /// As written, for logs and `ingress rule`.
    pub hostname: String,
    path: Option<Regex>,
    /// Its service and options; shared with the requests it takes, so resolving a request
    /// allocates nothing.
    pub origin: Arc<Origin>,
}

impl Rule {
    /// Whether the rule takes a request for `host` (port already stripped) and `path`.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Exact(h) => h == host,
            Host::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        host_ok && self.path.as_ref().is_none_or(|r| r.is_match(path))
    }

    /// The path filter as written.
    pub fn path(&self) -> Option<&str> {
        self.path.as_ref().map(Regex::as_str)
    }

    /// What the rule changes in the HTTP requests it takes. cloudflared applies
    /// `httpHostHeader` in its URL origins' round trip only (unix sockets and built-in services
    /// ignore it), `disableChunkedEncoding` to every HTTP origin.
    pub fn request_options(&self) -> RequestOptions<'_> {
        let o = &self.origin.origin_request;
        RequestOptions {
            host_header: match self.origin.service {
                Service::Http { .. } => o.http_host_header.as_deref(),
                _ => None,
            },
            disable_chunked_encoding: o.disable_chunked_encoding,
            tags: &[],
        }
    }
}

/// Validated ingress rules: the last one catches everything.
#[derive(Debug, Clone)]
pub struct Ingress {
    rules: Vec<Rule>,
    /// Rules the connector adds ahead of the user's (cloudflared's `InternalRules`: the
    /// management hostname); a configuration push keeps them.
    internal: Vec<Rule>,
    /// Global options.
    pub defaults: OriginRequest,
}

impl Ingress {
    /// Validates raw rules with global options `defaults`.
    pub fn new(raw: &[RawRule], defaults: &OriginRequestConfig) -> Result<Self, IngressError> {
        if raw.is_empty() {
            return Err(IngressError::NoRules);
        }
        let defaults = OriginRequest::default().overlay(defaults)?;
        let total = raw.len();
        let mut rules = Vec::with_capacity(total);
        for (i, r) in raw.iter().enumerate() {
            let origin_request = match &r.origin_request {
                Some(c) => defaults.overlay(c)?,
                None => defaults.clone(),
            };
            // cloudflared: `bastionMode` turns any URL service (not unix sockets, statuses,
            // hello world or socks-proxy) into the bastion, before the URL is checked.
            let keeps_service = ["unix:", "unix+tls:", "http_status:"]
                .iter()
                .any(|p| r.service.starts_with(p))
                || matches!(
                    r.service.as_str(),
                    "hello_world" | "hello-world" | "helloworld" | "socks-proxy"
                );
            let service = if origin_request.bastion_mode && !keeps_service {
                Service::Bastion
            } else {
                Service::parse(&r.service)?
            };
            let hostname = r.hostname.clone().unwrap_or_default();
            let path = r.path.clone().unwrap_or_default();
            if hostname.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
            }) {
                return Err(IngressError::HostnameContainsPort);
            }
            if hostname.rfind('*').is_some_and(|at| at > 0) {
                return Err(IngressError::BadWildcard);
            }
            let catch_all = (hostname.is_empty() || hostname == "*") && path.is_empty();
            let last = i == total - 1;
            if last && !catch_all {
                return Err(IngressError::LastRuleNotCatchAll);
            }
            if !last && catch_all {
                return Err(IngressError::RuleShouldNotBeCatchAll {
                    index: i + 1,
                    hostname,
                });
            }
            let path = if path.is_empty() {
                None
            } else {
                Some(Regex::new(&path).map_err(|e| IngressError::InvalidRegex {
                    index: i + 1,
                    reason: e.to_string(),
                })?)
            };
            let host = if hostname.is_empty() || hostname == "*" {
                Host::Any
            } else if let Some(rest) = hostname.strip_prefix('*') {
                Host::Suffix(rest.to_owned())
            } else {
                Host::Exact(hostname.clone())
            };
            rules.push(Rule {
                host,
                hostname,
                path,
                origin: Arc::new(Origin {
                    service,
                    origin_request,
                }),
            });
        }
        Ok(Self {
            rules,
            internal: Vec::new(),
            defaults,
        })
    }

    /// One catch-all rule to `service` (`--url`, `--hello-world`).
    pub fn single(service: Service) -> Self {
        Self::one_rule(service, OriginRequest::default())
    }

    /// One catch-all rule to `service` with the command line's origin options.
    pub fn single_with(
        service: Service,
        options: &OriginRequestConfig,
    ) -> Result<Self, IngressError> {
        Ok(Self::one_rule(
            service,
            OriginRequest::default().overlay(options)?,
        ))
    }

    fn one_rule(service: Service, origin_request: OriginRequest) -> Self {
        Self {
            internal: Vec::new(),
            rules: vec![Rule {
                host: Host::Any,
                hostname: String::new(),
                path: None,
                origin: Arc::new(Origin {
                    service,
                    origin_request: origin_request.clone(),
                }),
            }],
            defaults: origin_request,
        }
    }

    /// What cloudflared serves with no rules and no `--url`: 503 for everything.
    pub fn default_origin() -> Self {
        Self::single(Service::HttpStatus(503))
    }

    /// These rules with the management service's ahead of them, for requests to `hostname`.
    pub fn with_management(mut self, hostname: &str) -> Self {
        self.internal = vec![Rule {
            host: Host::Exact(hostname.to_owned()),
            hostname: hostname.to_owned(),
            path: None,
            origin: Arc::new(Origin {
                service: Service::Management,
                origin_request: OriginRequest::default(),
            }),
        }];
        self
    }

    /// These rules with `other`'s internal ones (a pushed configuration keeps the
    /// connector's).
    pub fn keeping_internal_of(mut self, other: &Ingress) -> Self {
        self.internal = other.internal.clone();
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The certs URLs of every team whose Access JWTs some rule checks.
    pub fn access_certs_urls(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| {
            r.origin
                .origin_request
                .access
                .as_ref()
                .map(|a| a.certs_url.as_str())
        })
    }

    /// The first rule taking `host` (a port is stripped) and `path`, with its index; the last
    /// rule when none does.
    /// Internal rules come first, numbered after the user's.
    pub fn find(&self, host: &str, path: &str) -> (usize, &Rule) {
        let host = strip_port(host);
        let last = self.rules.len() - 1;
        if let Some(i) = self.internal.iter().position(|r| r.matches(host, path)) {
            return (self.rules.len() + i, &self.internal[i]);
        }
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(host, path))
            .unwrap_or((last, &self.rules[last]))
    }

    /// Matches a data stream's request: the `Host` header, else the host of `dest`, and the
    /// path of `dest` (a URL, or a bare path).
    pub fn find_request(&self, dest: &str, host: Option<&str>) -> (usize, &Rule) {
        let uri: Option<http::Uri> = dest.parse().ok();
        let path = uri.as_ref().map_or("/", |u| u.path());
        let host = host
            .filter(|h| !h.is_empty())
            .or_else(|| uri.as_ref().and_then(|u| u.authority()).map(|a| a.as_str()))
            .unwrap_or("");
        self.find(host, path)
    }
}

/// `host:port` → `host`, `[v6]:port` → `v6`; anything else unchanged (Go's `SplitHostPort`).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, port)) = rest.split_once("]:") {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                return h;
            }
        }
        return host;
    }
    match host.split_once(':') {
        Some((h, port)) if !port.contains(':') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }
        _ => host,
    }
}
