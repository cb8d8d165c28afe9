//! The configuration a locally managed tunnel's connection 0 sends in
//! `updateLocalConfiguration` (PROTOCOL.md A§2), byte for byte as cloudflared 2026.8.2's
//! `Orchestrator.GetConfigJSON` writes it: `__configuration_flags` (the set flags among a fixed
//! list, as their Go values), then each ingress rule as cloudflared normalised it (service
//! re-printed, every option resolved against the global block and cloudflared's defaults, then
//! only the options that differ from the defaults), then the non-default `warp-routing` keys.
//! The global `originRequest` block is folded into the rules and not sent.
//!
//! Go's `encoding/json` is mimicked where serde_json differs: struct field order, sorted map
//! keys, `<`, `>`, `&`, U+2028 and U+2029 escaped, floats as Go prints them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Deserialize;

use super::duration::Dur;
use super::IngressError;

/// cloudflared's `configFlags`: the flags whose set values are sent, in no particular order
/// (they are a JSON object with sorted keys).
pub const CONFIGURATION_FLAGS: &[&str] = &[
    "autoupdate-freq",
    "no-autoupdate",
    "retries",
    "protocol",
    "loglevel",
    "transport-loglevel",
    "origincert",
    "metrics",
    "metrics-update-freq",
    "edge-ip-version",
    "edge-bind-address",
    "max-active-flows",
];

/// `access` as written (cloudflared's `config.AccessConfig`): `audTag` absent is `null`, an
/// empty list `[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RawAccess {
    /// `required`.
    pub required: bool,
    /// `teamName`.
    pub team_name: String,
    /// `audTag`.
    pub aud_tag: Option<Vec<String>>,
    /// `environment`.
    pub environment: String,
}

/// Every `originRequest` key cloudflared serialises, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RawOrigin {
    connect_timeout: Option<Dur>,
    tls_timeout: Option<Dur>,
    tcp_keep_alive: Option<Dur>,
    no_happy_eyeballs: Option<bool>,
    keep_alive_connections: Option<i64>,
    keep_alive_timeout: Option<Dur>,
    http_host_header: Option<String>,
    origin_server_name: Option<String>,
    #[serde(rename = "matchSNItoHost")]
    match_sni_to_host: Option<bool>,
    ca_pool: Option<String>,
    #[serde(rename = "noTLSVerify")]
    no_tls_verify: Option<bool>,
    disable_chunked_encoding: Option<bool>,
    bastion_mode: Option<bool>,
    proxy_address: Option<String>,
    proxy_port: Option<u64>,
    proxy_type: Option<String>,
    http2_origin: Option<bool>,
    access: Option<RawAccess>,
}

impl RawOrigin {
    /// The `--url`-mode origin flags burrow takes (`originRequestFromSingleRule`).
    pub fn from_flags(c: &super::OriginRequestConfig) -> Self {
        Self {
            http_host_header: c.http_host_header.clone(),
            origin_server_name: c.origin_server_name.clone(),
            ca_pool: c.ca_pool.clone(),
            no_tls_verify: c.no_tls_verify,
            disable_chunked_encoding: c.disable_chunked_encoding,
            match_sni_to_host: c.match_sni_to_host,
            bastion_mode: c.bastion_mode,
            proxy_address: c.proxy_address.clone(),
            proxy_port: c.proxy_port,
            proxy_type: c.proxy_type.clone(),
            http2_origin: c.http2_origin,
            ..Self::default()
        }
    }
}

/// cloudflared's resolved `ingress.OriginRequestConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    connect_timeout: Duration,
    tls_timeout: Duration,
    tcp_keep_alive: Duration,
    no_happy_eyeballs: bool,
    keep_alive_connections: i64,
    keep_alive_timeout: Duration,
    http_host_header: String,
    origin_server_name: String,
    match_sni_to_host: bool,
    ca_pool: String,
    no_tls_verify: bool,
    disable_chunked_encoding: bool,
    bastion_mode: bool,
    proxy_address: String,
    proxy_port: u64,
    proxy_type: String,
    http2_origin: bool,
    access: RawAccess,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(90);
const KEEP_ALIVE_CONNECTIONS: i64 = 100;
const PROXY_ADDRESS: &str = "127.0.0.1";
const WARP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolved {
    /// cloudflared's defaults (`originRequestFromConfig` of nothing).
    fn defaults() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            tls_timeout: TLS_TIMEOUT,
            tcp_keep_alive: TCP_KEEP_ALIVE,
            keep_alive_connections: KEEP_ALIVE_CONNECTIONS,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
            proxy_address: PROXY_ADDRESS.into(),
            ..Self::zero()
        }
    }

    /// Go's zero value: what cloudflared's no-rules 503 rule carries.
    fn zero() -> Self {
        Self {
            connect_timeout: Duration::ZERO,
            tls_timeout: Duration::ZERO,
            tcp_keep_alive: Duration::ZERO,
            no_happy_eyeballs: false,
            keep_alive_connections: 0,
            keep_alive_timeout: Duration::ZERO,
            http_host_header: String::new(),
            origin_server_name: String::new(),
            match_sni_to_host: false,
            ca_pool: String::new(),
            no_tls_verify: false,
            disable_chunked_encoding: false,
            bastion_mode: false,
            proxy_address: String::new(),
            proxy_port: 0,
            proxy_type: String::new(),
            http2_origin: false,
            access: RawAccess::default(),
        }
    }

    /// cloudflared's `setConfig`: each key written in `o` replaces the value here.
    fn overlay(&self, o: &RawOrigin) -> Self {
        let mut r = self.clone();
        fn set<T: Clone>(into: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *into = v.clone();
            }
        }
        let dur = |into: &mut Duration, v: &Option<Dur>| {
            if let Some(v) = v {
                *into = v.0;
            }
        };
        dur(&mut r.connect_timeout, &o.connect_timeout);
        dur(&mut r.tls_timeout, &o.tls_timeout);
        dur(&mut r.tcp_keep_alive, &o.tcp_keep_alive);
        dur(&mut r.keep_alive_timeout, &o.keep_alive_timeout);
        set(&mut r.no_happy_eyeballs, &o.no_happy_eyeballs);
        set(&mut r.keep_alive_connections, &o.keep_alive_connections);
        set(&mut r.http_host_header, &o.http_host_header);
        set(&mut r.origin_server_name, &o.origin_server_name);
        set(&mut r.match_sni_to_host, &o.match_sni_to_host);
        set(&mut r.ca_pool, &o.ca_pool);
        set(&mut r.no_tls_verify, &o.no_tls_verify);
        set(&mut r.disable_chunked_encoding, &o.disable_chunked_encoding);
        set(&mut r.bastion_mode, &o.bastion_mode);
        set(&mut r.proxy_address, &o.proxy_address);
        set(&mut r.proxy_port, &o.proxy_port);
        set(&mut r.proxy_type, &o.proxy_type);
        set(&mut r.http2_origin, &o.http2_origin);
        set(&mut r.access, &o.access);
        r
    }

    /// cloudflared's `ConvertToRawOriginConfig` then `json.Marshal`: only what differs from
    /// the defaults, in `config.OriginRequestConfig`'s field order.
    fn write_json(&self, out: &mut String) {
        let mut obj = Obj::new(out);
        if self.connect_timeout != CONNECT_TIMEOUT {
            obj.raw("connectTimeout", &go_seconds(self.connect_timeout));
        }
        if self.tls_timeout != TLS_TIMEOUT {
            obj.raw("tlsTimeout", &go_seconds(self.tls_timeout));
        }
        if self.tcp_keep_alive != TCP_KEEP_ALIVE {
            obj.raw("tcpKeepAlive", &go_seconds(self.tcp_keep_alive));
        }
        obj.flag("noHappyEyeballs", self.no_happy_eyeballs);
        if self.keep_alive_connections != KEEP_ALIVE_CONNECTIONS {
            obj.raw(
                "keepAliveConnections",
                &self.keep_alive_connections.to_string(),
            );
        }
        if self.keep_alive_timeout != KEEP_ALIVE_TIMEOUT {
            obj.raw("keepAliveTimeout", &go_seconds(self.keep_alive_timeout));
        }
        obj.nonempty("httpHostHeader", &self.http_host_header);
        obj.nonempty("originServerName", &self.origin_server_name);
        obj.flag("matchSNItoHost", self.match_sni_to_host);
        obj.nonempty("caPool", &self.ca_pool);
        obj.flag("noTLSVerify", self.no_tls_verify);
        obj.flag("disableChunkedEncoding", self.disable_chunked_encoding);
        obj.flag("bastionMode", self.bastion_mode);
        if self.proxy_address != PROXY_ADDRESS {
            obj.string("proxyAddress", &self.proxy_address);
        }
        if self.proxy_port != 0 {
            obj.raw("proxyPort", &self.proxy_port.to_string());
        }
        obj.nonempty("proxyType", &self.proxy_type);
        obj.flag("http2Origin", self.http2_origin);
        if self.access.required {
            let a = &self.access;
            let mut s = String::new();
            let mut inner = Obj::new(&mut s);
            inner.raw("required", "true");
            inner.string("teamName", &a.team_name);
            match &a.aud_tag {
                None => inner.raw("audTag", "null"),
                Some(tags) => {
                    let list: Vec<String> = tags.iter().map(|t| go_string(t)).collect();
                    inner.raw("audTag", &format!("[{}]", list.join(",")));
                }
            }
            inner.nonempty("environment", &a.environment);
            inner.end();
            obj.raw("access", &s);
        }
        obj.end();
    }
}

/// One rule as cloudflared keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    hostname: String,
    path: String,
    service: String,
    config: Resolved,
}

/// `warp-routing`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Warp {
    connect_timeout: Duration,
    max_active_flows: u64,
    tcp_keep_alive: Duration,
}

impl Default for Warp {
    fn default() -> Self {
        Self {
            connect_timeout: WARP_CONNECT_TIMEOUT,
            max_active_flows: 0,
            tcp_keep_alive: TCP_KEEP_ALIVE,
        }
    }
}

/// The keys of config.yml that shape the local configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileKeys {
    ingress: Vec<FileRule>,
    #[serde(rename = "originRequest")]
    origin_request: RawOrigin,
    #[serde(rename = "warp-routing")]
    warp_routing: FileWarp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FileRule {
    hostname: String,
    path: String,
    service: String,
    origin_request: RawOrigin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FileWarp {
    connect_timeout: Option<Dur>,
    max_active_flows: Option<u64>,
    tcp_keep_alive: Option<Dur>,
}

/// What connection 0 of a locally managed tunnel tells the edge about its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    flags: BTreeMap<String, String>,
    rules: Vec<Rule>,
    warp: Warp,
}

impl LocalConfig {
    /// From config.yml's text: its rules (`None` when it has none), its warp-routing.
    pub fn from_file(yaml: &str) -> Result<Option<Self>, IngressError> {
        let keys = file_keys(yaml)?;
        if keys.ingress.is_empty() {
            return Ok(None);
        }
        let defaults = Resolved::defaults().overlay(&keys.origin_request);
        let rules = keys
            .ingress
            .iter()
            .map(|r| Rule {
                hostname: r.hostname.clone(),
                path: r.path.clone(),
                service: normalise_service(&r.service),
                config: defaults.overlay(&r.origin_request),
            })
            .collect();
        Ok(Some(Self {
            flags: BTreeMap::new(),
            rules,
            warp: warp(&keys.warp_routing),
        }))
    }

    /// One rule for every request: `--url` (`service` as cloudflared validated it, see
    /// [`url_service_string`]), `--hello-world` or `--unix-socket`, with the origin flags.
    pub fn single(service: String, origin: &RawOrigin) -> Self {
        Self {
            flags: BTreeMap::new(),
            rules: vec![Rule {
                hostname: String::new(),
                path: String::new(),
                service,
                config: Resolved::defaults().overlay(origin),
            }],
            warp: Warp::default(),
        }
    }

    /// No rules and no origin: cloudflared's 503 rule, whose options are Go's zero values.
    pub fn no_rules() -> Self {
        Self {
            flags: BTreeMap::new(),
            rules: vec![Rule {
                hostname: String::new(),
                path: String::new(),
                service: "http_status:503".into(),
                config: Resolved::zero(),
            }],
            warp: Warp::default(),
        }
    }

    /// With config.yml's `warp-routing` (read whatever the rules came from).
    pub fn with_file_warp_routing(mut self, yaml: &str) -> Result<Self, IngressError> {
        self.warp = warp(&file_keys(yaml)?.warp_routing);
        Ok(self)
    }

    /// With the set configuration flags (name to Go-printed value); empty values are dropped,
    /// as cloudflared drops them.
    pub fn with_flags(mut self, flags: BTreeMap<String, String>) -> Self {
        self.flags = flags.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        self
    }

    /// The JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = String::new();
        let mut top = Obj::new(&mut out);
        if !self.flags.is_empty() {
            let mut s = String::new();
            let mut flags = Obj::new(&mut s);
            for (k, v) in &self.flags {
                flags.string(k, v);
            }
            flags.end();
            top.raw("__configuration_flags", &s);
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let mut s = String::new();
                let mut o = Obj::new(&mut s);
                o.nonempty("hostname", &r.hostname);
                o.nonempty("path", &r.path);
                o.nonempty("service", &r.service);
                let mut c = String::new();
                r.config.write_json(&mut c);
                o.raw("originRequest", &c);
                o.end();
                s
            })
            .collect();
        top.raw("ingress", &format!("[{}]", rules.join(",")));
        let mut w = String::new();
        let mut wo = Obj::new(&mut w);
        if self.warp.connect_timeout != WARP_CONNECT_TIMEOUT {
            wo.raw("connectTimeout", &go_seconds(self.warp.connect_timeout));
        }
        if self.warp.max_active_flows != 0 {
            wo.raw("maxActiveFlows", &self.warp.max_active_flows.to_string());
        }
        if self.warp.tcp_keep_alive != TCP_KEEP_ALIVE {
            wo.raw("tcpKeepAlive", &go_seconds(self.warp.tcp_keep_alive));
        }
        wo.end();
        top.raw("warp-routing", &w);
        top.end();
        out.into_bytes()
    }
}

fn file_keys(yaml: &str) -> Result<FileKeys, IngressError> {
    if yaml.trim().is_empty() {
        return Ok(FileKeys::default());
    }
    serde_yaml_ng::from_str(yaml).map_err(|e| IngressError::Syntax(e.to_string()))
}

fn warp(w: &FileWarp) -> Warp {
    let d = Warp::default();
    Warp {
        connect_timeout: w.connect_timeout.map_or(d.connect_timeout, |x| x.0),
        max_active_flows: w.max_active_flows.unwrap_or(d.max_active_flows),
        tcp_keep_alive: w.tcp_keep_alive.map_or(d.tcp_keep_alive, |x| x.0),
    }
}

/// A rule's `service` as cloudflared prints it back (`OriginService.String()`): URL schemes
/// lower-cased, `hello-world` as `hello_world`, the status re-printed, a port added to
/// `ssh`/`rdp`/`smb`/`tcp` services without one.
pub fn normalise_service(raw: &str) -> String {
    if raw.starts_with("unix:") || raw.starts_with("unix+tls:") {
        return raw.into();
    }
    if let Some(code) = raw.strip_prefix("http_status:") {
        return match code.parse::<i64>() {
            Ok(n) => format!("http_status:{n}"),
            Err(_) => raw.into(),
        };
    }
    if matches!(raw, "hello-world" | "hello_world") {
        return "hello_world".into();
    }
    if matches!(raw, "bastion" | "socks-proxy") {
        return raw.into();
    }
    let Some((scheme, authority)) = raw.split_once("://") else {
        return raw.into();
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "ssh" => Some(22),
        "rdp" => Some(3389),
        "smb" => Some(445),
        "tcp" => Some(7864),
        _ => None,
    };
    match default_port {
        Some(port) if !has_port(authority) => {
            // Go's url.Hostname() drops IPv6 brackets and addPortIfMissing does not put them
            // back.
            let host = authority.trim_start_matches('[').trim_end_matches(']');
            format!("{scheme}://{host}:{port}")
        }
        _ => format!("{scheme}://{authority}"),
    }
}

fn has_port(authority: &str) -> bool {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    }
}

/// `--url` as cloudflared's `validation.ValidateUrl` rewrites it: `host:port` and bare IPs get
/// `http://`; with a scheme, only `scheme://host[:port]` is kept (a path is dropped); without
/// one, what follows the port is kept (cloudflared's own comment: "This is why the path is
/// preserved when `originUrl` doesn't have a schema").
pub fn url_service_string(url: &str) -> String {
    if url.parse::<std::net::IpAddr>().is_ok() {
        return ip_url("http", url, "");
    }
    if let Some(inner) = url.strip_prefix('[').and_then(|u| u.strip_suffix(']')) {
        return ip_url("http", inner, "");
    }
    let split = split_host_port(url);
    if let Some((host, port)) = split {
        if host.parse::<std::net::IpAddr>().is_ok() {
            return ip_url("http", host, port);
        }
    }
    match url.split_once("://") {
        Some((scheme, rest)) if !rest.is_empty() => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = match authority.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':').unwrap_or("")),
                    None => (v6, ""),
                },
                None => authority.split_once(':').unwrap_or((authority, "")),
            };
            if host.parse::<std::net::IpAddr>().is_ok() {
                return ip_url(scheme, host, port);
            }
            if port.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}:{port}")
            }
        }
        _ => match split {
            Some((host, port)) => format!("http://{host}:{port}"),
            None => format!("http://{url}"),
        },
    }
}

/// Go's `net.SplitHostPort`, loosely: the last colon splits (brackets for IPv6).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

fn ip_url(scheme: &str, host: &str, port: &str) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// A JSON object written key by key, in the caller's order.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }
    fn raw(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(&go_string(key));
        self.out.push(':');
        self.out.push_str(value);
    }
    fn string(&mut self, key: &str, value: &str) {
        self.raw(key, &go_string(value));
    }
    /// `omitempty` on a string.
    fn nonempty(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.string(key, value);
        }
    }
    /// A `*bool` that cloudflared leaves nil when false.
    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.raw(key, "true");
        }
    }
    fn end(self) {
        self.out.push('}');
    }
}

/// A string as Go's `encoding/json` writes it (HTML-safe escaping on).
pub fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration as `CustomDuration` marshals it: `Seconds()` as a float64, which Go prints in
/// the shortest form, with an exponent below 1e-6 or from 1e21.
pub fn go_seconds(d: Duration) -> String {
    go_float(d.as_secs_f64())
}

fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust writes `1e-7` and `1e21` where Go writes `1e-07` cleaned to `1e-7` and `1e+21`.
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => {
                let e = if e.len() < 2 {
                    format!("0{e}")
                } else {
                    e.into()
                };
                format!("{m}e+{e}")
            }
            _ => s,
        }
    } else {
        format!("{f}")
    }
}

/// A duration as Go's `time.Duration.String()` prints it (`24h0m0s`, `1.5s`, `500ms`), for
/// duration flags in `__configuration_flags`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        // Below a second Go picks ns, µs or ms with a fraction.
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, div));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = fraction(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `n / div` with the fraction's trailing zeros dropped.
fn fraction(n: u128, div: u128) -> String {
    let whole = n / div;
    let rest = n % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(l: &LocalConfig) -> String {
        String::from_utf8(l.to_json()).expect("utf8")
    }

    #[test]
    fn url_mode_with_flags() {
        let mut flags = BTreeMap::new();
        flags.insert("protocol".to_string(), "quic".to_string());
        flags.insert("no-autoupdate".to_string(), "true".to_string());
        flags.insert("retries".to_string(), String::new());
        let l = LocalConfig::single(
            url_service_string("http://127.0.0.1:3000"),
            &RawOrigin::default(),
        )
        .with_flags(flags);
        assert_eq!(
            json(&l),
            r#"{"__configuration_flags":{"no-autoupdate":"true","protocol":"quic"},"ingress":[{"service":"http://127.0.0.1:3000","originRequest":{}}],"warp-routing":{}}"#
        );
    }

    #[test]
    fn no_rules_sends_go_zero_values() {
        assert_eq!(
            json(&LocalConfig::no_rules()),
            r#"{"ingress":[{"service":"http_status:503","originRequest":{"connectTimeout":0,"tlsTimeout":0,"tcpKeepAlive":0,"keepAliveConnections":0,"keepAliveTimeout":0,"proxyAddress":""}}],"warp-routing":{}}"#
        );
    }

    #[test]
    fn file_rules_resolved_against_global_and_defaults() {
        let yaml = "originRequest:\n  connectTimeout: 1m30s\n  noTLSVerify: true\n\
            ingress:\n  - hostname: a.example.com\n    path: ^/x<y\n    service: HTTP://Origin:8080\n\
            \x20   originRequest:\n      connectTimeout: 30s\n      keepAliveConnections: 100\n\
            \x20     access:\n        required: true\n        teamName: t\n        audTag: []\n\
            \x20 - hostname: s.example.com\n    service: ssh://[::1]\n\
            \x20 - service: hello-world\n    originRequest:\n      tlsTimeout: 500ms\n\
            warp-routing:\n  maxActiveFlows: 7\n  tcpKeepAlive: 30s\n";
        let l = LocalConfig::from_file(yaml)
            .expect("parses")
            .expect("rules");
        assert_eq!(
            json(&l),
            concat!(
                r#"{"ingress":[{"hostname":"a.example.com","path":"^/x\u003cy","service":"http://Origin:8080","#,
                r#""originRequest":{"noTLSVerify":true,"access":{"required":true,"teamName":"t","audTag":[]}}},"#,
                r#"{"hostname":"s.example.com","service":"ssh://::1:22","originRequest":{"connectTimeout":90,"noTLSVerify":true}},"#,
                r#"{"service":"hello_world","originRequest":{"connectTimeout":90,"tlsTimeout":0.5,"noTLSVerify":true}}],"#,
                r#""warp-routing":{"maxActiveFlows":7}}"#
            )
        );
    }

    #[test]
    fn access_without_aud_tag_is_null_and_unrequired_access_is_dropped() {
        let yaml = "ingress:\n  - hostname: a\n    service: http://x:1\n    originRequest:\n      access:\n        required: true\n        teamName: t\n        environment: fed\n\
            \x20 - service: http_status:0404\n    originRequest:\n      access:\n        teamName: t\n";
        let l = LocalConfig::from_file(yaml)
            .expect("parses")
            .expect("rules");
        assert_eq!(
            json(&l),
            concat!(
                r#"{"ingress":[{"hostname":"a","service":"http://x:1","originRequest":{"access":{"required":true,"teamName":"t","audTag":null,"environment":"fed"}}},"#,
                r#"{"service":"http_status:404","originRequest":{}}],"warp-routing":{}}"#
            )
        );
    }

    #[test]
    fn url_strings_as_cloudflared_validates_them() {
        for (given, want) in [
            ("127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("127.0.0.1", "http://127.0.0.1"),
            ("::1", "http://[::1]"),
            ("[::1]:80", "http://[::1]:80"),
            ("localhost:3000", "http://localhost:3000"),
            ("localhost:3000/a/b", "http://localhost:3000/a/b"),
            ("http://localhost:3000/a/b", "http://localhost:3000"),
            ("https://[::1]:8443/x", "https://[::1]:8443"),
            ("ssh://host", "ssh://host"),
            ("example.com", "http://example.com"),
        ] {
            assert_eq!(url_service_string(given), want, "{given}");
        }
    }

    #[test]
    fn go_number_and_duration_forms() {
        assert_eq!(go_seconds(Duration::from_secs(45)), "45");
        assert_eq!(go_seconds(Duration::from_millis(100)), "0.1");
        assert_eq!(go_seconds(Duration::from_nanos(1)), "1e-9");
        assert_eq!(go_duration(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(
            go_string("a<b>&\u{2028}\"\\\n\u{1}"),
            r#""a\u003cb\u003e\u0026\u2028\"\\\n\u0001""#
        );
    }
}
