#![no_main]
//! Any bytes as a tunnelled IP packet: parse must not panic, and whatever parses must survive
//! a TTL-exceeded reply (which must itself parse) and an in-place TTL decrement.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use burrow_core::icmp::{self, IpVersion, TTL_EXCEEDED_MAX_V6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = icmp::parse(data) else {
        return;
    };
    let router: IpAddr = match p.version() {
        IpVersion::V4 => Ipv4Addr::new(172, 16, 0, 1).into(),
        IpVersion::V6 => Ipv6Addr::LOCALHOST.into(),
    };
    let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
    let n = icmp::write_ttl_exceeded(&p, router, &mut out).expect("same-family reply fits");
    let reply = icmp::parse(&out[..n]).expect("reply parses");
    assert_eq!(reply.dst(), p.src());

    let mut copy = data.to_vec();
    match icmp::decrement_ttl(&mut copy) {
        Ok(ttl) => assert_eq!(icmp::parse(&copy).map(|q| q.ttl()), Ok(ttl)),
        Err(_) => assert_eq!(p.ttl(), 0),
    }
});
