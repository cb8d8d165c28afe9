//! cloudflared's virtual DNS service: WARP clients send their DNS for private networks to
//! [`SERVICE`], and the connector takes every UDP session and TCP flow to that address to a
//! local resolver instead (`ingress/origins/dns.go`). The resolver is `--dns-resolver-addrs`
//! when given (one of them per flow); else the name server that answered a lookup of
//! [`LOOKUP_HOST`] through the system's resolver, found again every [`REFRESH`]; else
//! [`DEFAULT_RESOLVER`], and a lookup that fails keeps the one before.
//!
//! cloudflared learns the server by watching which one Go's resolver dials; a driver here does
//! the lookup and hands over /etc/resolv.conf, whose first name server is the one the system's
//! resolver asks first ([`first_name_server`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where WARP clients send DNS: `[2606:4700:cf1:2000::1]:53`.
pub const SERVICE: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2606, 0x4700, 0x0cf1, 0x2000, 0, 0, 0, 1)),
    53,
);

/// The resolver until a lookup finds one (cloudflared's `defaultResolverAddr`).
pub const DEFAULT_RESOLVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

/// The name looked up to find the system's resolver: one Cloudflare keeps, outside the
/// customer's network, that cloudflared looks up anyway (`defaultLookupHost`).
pub const LOOKUP_HOST: &str = "region1.v2.argotunnel.com";

/// How often the resolver is found again (`refreshFreq`).
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

/// How long a lookup may take before it counts as failed (`refreshTimeout`).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Dial timeout of a TCP flow taken to the resolver (cloudflared's `NewDNSDialer`).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The file whose text answers a lookup that resolved ([`first_name_server`] reads it).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Most `--dns-resolver-addrs` (cloudflared refuses more).
pub const MAX_STATIC: usize = 10;

/// Why `--dns-resolver-addrs` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverAddrsError {
    /// More than [`MAX_STATIC`].
    #[error("too many addresses provided, max: {MAX_STATIC}")]
    TooMany,
    /// Not an `ip:port` (`[ip]:port` for IPv6).
    #[error("{0:?} is not an ip:port")]
    NotAnAddress(String),
}

/// `--dns-resolver-addrs` as cloudflared's `parseResolverAddrPorts` reads it: at most
/// [`MAX_STATIC`] `ip:port` addresses.
pub fn parse_static(list: &[String]) -> Result<Vec<SocketAddr>, ResolverAddrsError> {
    if list.len() > MAX_STATIC {
        return Err(ResolverAddrsError::TooMany);
    }
    list.iter()
        .map(|s| {
            s.parse()
                .map_err(|_| ResolverAddrsError::NotAnAddress(s.clone()))
        })
        .collect()
}

/// The first `nameserver` of a resolv.conf, on port 53; none if it names none (or does not
/// parse), as the system's resolver then asks the local host.
pub fn first_name_server(resolv_conf: &str) -> Option<SocketAddr> {
    let conf = resolv_conf::Config::parse(resolv_conf).ok()?;
    let ip: IpAddr = conf.nameservers.first()?.into();
    Some(SocketAddr::new(ip, 53))
}

/// Where a flow to `dest` goes: one of `resolvers` in turn (by `n`) if `dest` is
/// [`SERVICE`], else `dest`.
pub fn redirect(resolvers: &[SocketAddr], dest: SocketAddr, n: u64) -> Option<SocketAddr> {
    if dest != SERVICE {
        return None;
    }
    let i = usize::try_from(n % resolvers.len().max(1) as u64).unwrap_or(0);
    Some(resolvers.get(i).copied().unwrap_or(DEFAULT_RESOLVER))
}

/// Where the lookup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Fixed addresses: never looked up.
    Never,
    /// Due at this instant.
    At(Instant),
    /// Asked; given up at this instant.
    Asked(Instant),
}

/// The local resolver redirected flows go to, and when to look for it again.
#[derive(Debug, Clone)]
pub struct LocalResolver {
    addrs: Arc<[SocketAddr]>,
    lookup: Lookup,
}

impl LocalResolver {
    /// Found by lookups, the first one due at `now`; [`DEFAULT_RESOLVER`] until one answers.
    pub fn discovered(now: Instant) -> Self {
        Self {
            addrs: Arc::new([DEFAULT_RESOLVER]),
            lookup: Lookup::At(now),
        }
    }

    /// `--dns-resolver-addrs`: these, never looked up.
    pub fn fixed(addrs: &[SocketAddr]) -> Self {
        Self {
            addrs: addrs.into(),
            lookup: Lookup::Never,
        }
    }

    /// The resolvers now.
    pub fn addrs(&self) -> &Arc<[SocketAddr]> {
        &self.addrs
    }

    /// True when the driver must look up [`LOOKUP_HOST`] now and answer
    /// [`LocalResolver::looked_up`] (once per lookup).
    pub fn poll_lookup(&mut self, now: Instant) -> bool {
        match self.lookup {
            Lookup::At(t) if now >= t => {
                self.lookup = Lookup::Asked(now + LOOKUP_TIMEOUT);
                true
            }
            _ => false,
        }
    }

    /// When [`LocalResolver::handle_timeout`] or [`LocalResolver::poll_lookup`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.lookup {
            Lookup::Never => None,
            Lookup::At(t) | Lookup::Asked(t) => Some(t),
        }
    }

    /// A lookup not answered in time has failed: the resolver stays, the next is due after
    /// [`REFRESH`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.lookup, Lookup::Asked(t) if now >= t) {
            self.lookup = Lookup::At(now + REFRESH);
        }
    }

    /// The lookup ended: `resolv_conf` is the system's resolv.conf if it succeeded, none if it
    /// failed (the resolver then stays). True if the resolver changed. An answer after the
    /// lookup was given up on changes nothing.
    pub fn looked_up(&mut self, now: Instant, resolv_conf: Option<&str>) -> bool {
        if !matches!(self.lookup, Lookup::Asked(_)) {
            return false;
        }
        self.lookup = Lookup::At(now + REFRESH);
        let Some(text) = resolv_conf else {
            return false;
        };
        let found = first_name_server(text).unwrap_or(DEFAULT_RESOLVER);
        if *self.addrs == [found] {
            return false;
        }
        self.addrs = Arc::new([found]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_service_address_is_redirected_in_turn() {
        let two = [a("10.0.0.1:53"), a("[fd00::1]:5353")];
        assert_eq!(SERVICE, a("[2606:4700:cf1:2000::1]:53"));
        assert_eq!(
            a("[2606:4700:0cf1:2000:0000:0000:0000:0001]:53"),
            SERVICE,
            "the spelling cloudflared's constant has"
        );
        assert_eq!(redirect(&two, SERVICE, 0), Some(two[0]));
        assert_eq!(redirect(&two, SERVICE, 1), Some(two[1]));
        assert_eq!(redirect(&two, SERVICE, 2), Some(two[0]));
        assert_eq!(redirect(&two, a("[2606:4700:cf1:2000::1]:54"), 0), None);
        assert_eq!(redirect(&two, a("[2606:4700:cf1:2000::2]:53"), 0), None);
        assert_eq!(redirect(&[], SERVICE, 7), Some(DEFAULT_RESOLVER));
    }

    #[test]
    fn static_addresses_are_ip_and_port_and_at_most_ten() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_static(&list(&["1.1.1.1:53", "[::1]:5353"])),
            Ok(vec![a("1.1.1.1:53"), a("[::1]:5353")])
        );
        assert_eq!(
            parse_static(&list(&["1.1.1.1"])),
            Err(ResolverAddrsError::NotAnAddress("1.1.1.1".into()))
        );
        assert_eq!(
            parse_static(&list(&["dns.example:53"])),
            Err(ResolverAddrsError::NotAnAddress("dns.example:53".into()))
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("10.0.0.{i}:53")).collect();
        assert_eq!(parse_static(&eleven), Err(ResolverAddrsError::TooMany));
        assert_eq!(parse_static(&eleven[..10]).map(|v| v.len()), Ok(10));
    }

    #[test]
    fn the_first_name_server_of_resolv_conf_on_port_53() {
        let conf =
            "# generated\nsearch example.com\nnameserver 10.255.255.53\nnameserver 1.1.1.1\n";
        assert_eq!(first_name_server(conf), Some(a("10.255.255.53:53")));
        assert_eq!(
            first_name_server("nameserver fe80::1\n"),
            Some(a("[fe80::1]:53"))
        );
        assert_eq!(first_name_server("search example.com\n"), None);
        assert_eq!(first_name_server(""), None);
    }

    #[test]
    fn lookups_refresh_every_five_minutes_and_a_failure_keeps_the_resolver() {
        let t0 = Instant::now();
        let mut r = LocalResolver::discovered(t0);
        assert_eq!(**r.addrs(), [DEFAULT_RESOLVER]);
        assert!(r.poll_lookup(t0));
        assert!(!r.poll_lookup(t0), "asked once");
        assert_eq!(r.poll_timeout(), Some(t0 + LOOKUP_TIMEOUT));
        assert!(r.looked_up(t0, Some("nameserver 10.0.0.53\n")));
        assert_eq!(**r.addrs(), [a("10.0.0.53:53")]);
        assert_eq!(r.poll_timeout(), Some(t0 + REFRESH));
        assert!(!r.poll_lookup(t0 + REFRESH - Duration::from_millis(1)));
        let t1 = t0 + REFRESH;
        assert!(r.poll_lookup(t1));
        // Failed: the resolver stays.
        assert!(!r.looked_up(t1, None));
        assert_eq!(**r.addrs(), [a("10.0.0.53:53")]);
        // Timed out: the same, and a late answer changes nothing.
        let t2 = t1 + REFRESH;
        assert!(r.poll_lookup(t2));
        r.handle_timeout(t2 + LOOKUP_TIMEOUT);
        assert_eq!(r.poll_timeout(), Some(t2 + LOOKUP_TIMEOUT + REFRESH));
        assert!(!r.looked_up(t2 + LOOKUP_TIMEOUT, Some("nameserver 10.9.9.9\n")));
        assert_eq!(**r.addrs(), [a("10.0.0.53:53")]);
        // Succeeded without a name server: the local host, as the system's resolver asks.
        let t3 = t2 + LOOKUP_TIMEOUT + REFRESH;
        assert!(r.poll_lookup(t3));
        assert!(r.looked_up(t3, Some("options ndots:1\n")));
        assert_eq!(**r.addrs(), [DEFAULT_RESOLVER]);
    }

    #[test]
    fn fixed_addresses_are_never_looked_up() {
        let t0 = Instant::now();
        let mut r = LocalResolver::fixed(&[a("10.0.0.1:53")]);
        assert!(!r.poll_lookup(t0));
        assert_eq!(r.poll_timeout(), None);
        assert!(!r.looked_up(t0, Some("nameserver 10.0.0.2\n")));
        assert_eq!(**r.addrs(), [a("10.0.0.1:53")]);
    }

    proptest::proptest! {
        /// Any text is a resolv.conf or none, never a panic.
        #[test]
        fn any_resolv_conf_parses_or_is_none(text in ".{0,200}") {
            let _ = first_name_server(&text);
        }

        /// Each static address given parses back to itself.
        #[test]
        fn static_addresses_round_trip(addrs in proptest::collection::vec(proptest::arbitrary::any::<SocketAddr>(), 0..=MAX_STATIC)) {
            let text: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            // Flow info does not print; compare what prints.
            let back: Vec<String> = parse_static(&text).unwrap().iter().map(|a| a.to_string()).collect();
            proptest::prop_assert_eq!(back, text);
        }
    }
}
