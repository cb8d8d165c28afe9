use std::net::{IpAddr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn rules(text: &[(&str, &[i64], bool)]) -> Vec<IpRule> {
    text.iter()
        .map(|(p, ports, allow)| IpRule::parse(Some(p), ports, *allow).expect("rule"))
        .collect()
}

fn connect(host: Host, port: u16) -> Vec<u8> {
    encode_request(&Request {
        command: CONNECT,
        host,
        port,
    })
}

/// Follows `Send` steps, collecting what is sent, down to the step that needs the driver.
fn run(step: Step) -> (Vec<u8>, Step) {
    let mut sent = Vec::new();
    let mut step = step;
    while let Step::Send(bytes, next) = step {
        sent.extend(bytes);
        step = *next;
    }
    (sent, step)
}

#[test]
fn connect_allowed_by_a_rule_dials_and_pipes_what_followed() {
    let mut s = Server::new(rules(&[("127.0.0.0/8", &[7000], true)]));
    let mut input = vec![5, 2, 2, 0];
    input.extend(connect(Host::Ip([127, 0, 0, 9].into()), 7000));
    input.extend(b"early");
    // Byte by byte: the same outcome as all at once.
    let mut sent = Vec::new();
    let mut last = Step::Read;
    for b in &input {
        let (out, step) = run(s.feed(&[*b]));
        sent.extend(out);
        if step != Step::Read {
            last = step;
        }
    }
    assert_eq!(sent, [5, 0]);
    assert_eq!(last, Step::Dial("127.0.0.9:7000".parse().unwrap()));
    let (reply, step) = run(s.connected("127.0.0.1:40000".parse().unwrap()));
    assert_eq!(reply, [5, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40]);
    assert_eq!(step, Step::Pipe(b"early".to_vec()));
}

#[test]
fn refusals_as_cloudflared() {
    // No rules at all: everything is refused (cloudflared's policy has defaultAllow false).
    let mut s = Server::new(Vec::new());
    let mut input = vec![5, 1, 0];
    input.extend(connect(Host::Ip([10, 0, 0, 1].into()), 22));
    let (sent, step) = run(s.feed(&input));
    assert_eq!(sent, [5, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 22]);
    assert!(matches!(step, Step::Close(SocksError::Denied(_))));

    // A matching deny rule wins over a later allow.
    let r = rules(&[("10.0.0.0/8", &[22], false), ("0.0.0.0/0", &[], true)]);
    assert!(!allowed(&r, [10, 1, 2, 3].into(), 22));
    assert!(allowed(&r, [10, 1, 2, 3].into(), 23));
    assert!(
        !allowed(&r, IpAddr::V6(Ipv6Addr::LOCALHOST), 23),
        "families differ"
    );

    // Only "no authentication" is offered by the server.
    let (sent, step) = run(Server::new(Vec::new()).feed(&[5, 1, 2]));
    assert_eq!(sent, [5, 0xff]);
    assert_eq!(step, Step::Close(SocksError::NoAcceptableMethod));

    // BIND: not supported, answered.
    let mut s = Server::new(r.clone());
    let mut input = vec![5, 1, 0];
    input.extend(encode_request(&Request {
        command: 2,
        host: Host::Ip([10, 0, 0, 1].into()),
        port: 1,
    }));
    let (sent, step) = run(s.feed(&input));
    assert_eq!(&sent[2..4], [5, reply::COMMAND_NOT_SUPPORTED]);
    assert_eq!(step, Step::Close(SocksError::Command(2)));

    // SOCKS4 and unknown address types end the exchange without a reply.
    assert_eq!(
        Server::new(Vec::new()).feed(&[4, 1]),
        Step::Close(SocksError::Version(4))
    );
    let (_, step) = run(Server::new(r).feed(&[5, 1, 0, 5, 1, 0, 9]));
    assert_eq!(step, Step::Close(SocksError::AddressType(9)));
}

#[test]
fn names_are_resolved_then_checked_and_dial_failures_answered() {
    let mut s = Server::new(rules(&[("192.0.2.0/24", &[], true)]));
    let mut input = vec![5, 1, 0];
    input.extend(connect(Host::Domain("db.internal".into()), 5432));
    let (_, step) = run(s.feed(&input));
    assert_eq!(step, Step::Resolve("db.internal".into()));
    // The first IPv4 address, as cloudflared's `ResolveIPAddr("ip", ...)` picks it.
    let (_, step) = run(s.resolved(&["2001:db8::7".parse().unwrap(), [192, 0, 2, 7].into()]));
    assert_eq!(step, Step::Dial("192.0.2.7:5432".parse().unwrap()));
    let (sent, step) = run(s.dial_failed(DialFailure::Refused));
    assert_eq!(sent, [5, reply::CONNECTION_REFUSED, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(step, Step::Close(SocksError::DialFailed(_))));
    // Out of order calls are refused, not obeyed.
    assert_eq!(
        s.connected("1.2.3.4:5".parse().unwrap()),
        Step::Close(SocksError::OutOfOrder)
    );

    // Without one, the first address.
    let mut v6 = Server::new(rules(&[("2001:db8::/32", &[], true)]));
    run(v6.feed(&input));
    let (_, step) = run(v6.resolved(&[
        "2001:db8::7".parse().unwrap(),
        "2001:db8::8".parse().unwrap(),
    ]));
    assert_eq!(step, Step::Dial("[2001:db8::7]:5432".parse().unwrap()));

    let mut s = Server::new(Vec::new());
    let (_, step) = run(s.feed(&input));
    assert_eq!(step, Step::Resolve("db.internal".into()));
    let (sent, step) = run(s.resolved(&[]));
    assert_eq!(sent[1], reply::RULE_FAILURE);
    assert_eq!(sent[3], 3, "the name is echoed back, as cloudflared");
    assert_eq!(step, Step::Close(SocksError::Unresolved));
}

#[test]
fn over_a_dialled_connection_any_connect_is_that_connection() {
    // cloudflared's proxyType socks: the name is neither resolved nor checked against rules.
    let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut s = Server::over_dialled(local);
    let mut input = vec![5, 1, 0];
    input.extend(connect(Host::Domain("anything.invalid".into()), 9));
    input.extend(b"early");
    let (sent, step) = run(s.feed(&input));
    assert_eq!(sent, [5, 0, 5, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40]);
    assert_eq!(step, Step::Pipe(b"early".to_vec()));

    // BIND and UDP ASSOCIATE are still refused.
    let mut s = Server::over_dialled(local);
    let mut input = vec![5, 1, 0];
    input.extend(encode_request(&Request {
        command: 3,
        host: Host::Ip([10, 0, 0, 1].into()),
        port: 1,
    }));
    let (sent, step) = run(s.feed(&input));
    assert_eq!(&sent[2..4], [5, reply::COMMAND_NOT_SUPPORTED]);
    assert_eq!(step, Step::Close(SocksError::Command(3)));
}

#[test]
fn ip_rules_parse_as_cloudflared() {
    let r = IpRule::parse(Some("10.1.2.3/8"), &[443, 22], true).unwrap();
    assert_eq!(r.network, IpAddr::from([10, 0, 0, 0]));
    assert!(r.contains([10, 255, 0, 1].into()) && !r.contains([11, 0, 0, 1].into()));
    let v6 = IpRule::parse(Some("2001:db8::/32"), &[], false).unwrap();
    assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
    for bad in [
        None,
        Some(""),
        Some("10.0.0.0"),
        Some("10.0.0.0/33"),
        Some("x/8"),
    ] {
        assert!(IpRule::parse(bad, &[], true).is_err(), "{bad:?}");
    }
    assert!(IpRule::parse(Some("10.0.0.0/8"), &[0], true).is_err());
    assert!(IpRule::parse(Some("10.0.0.0/8"), &[65536], true).is_err());
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Host::Ip(a.into())),
        any::<[u8; 16]>().prop_map(|a| Host::Ip(a.into())),
        "[a-z0-9.-]{0,255}".prop_map(Host::Domain),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(command: u8, host in host(), port: u16, tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let req = Request { command, host, port };
        let mut bytes = encode_request(&req);
        let len = bytes.len();
        bytes.extend(&tail);
        prop_assert_eq!(decode_request(&bytes), Ok(Some((req, len))));
        for cut in 0..len {
            prop_assert_eq!(decode_request(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn any_bytes_in_any_pieces_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), step in 1usize..40, dialled: bool) {
        let mut s = if dialled {
            Server::over_dialled("127.0.0.1:1".parse().unwrap())
        } else {
            Server::new(Vec::new())
        };
        for chunk in data.chunks(step) {
            let (_, next) = run(s.feed(chunk));
            if matches!(next, Step::Close(_)) {
                break;
            }
        }
    }
}
