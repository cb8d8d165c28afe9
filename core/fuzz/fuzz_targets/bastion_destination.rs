#![no_main]
//! Any `Cf-Access-Jump-Destination` value: a TCP destination with a port, or an error; never a
//! panic, and the host is part of the input.

use burrow_core::ingress::{bastion, Service};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(service) = bastion::destination(text) {
        let Service::Tcp {
            host,
            port: Some(_),
        } = service
        else {
            panic!("not a TCP destination with a port: {service:?}");
        };
        assert!(text.contains(host.as_str()));
    }
});
