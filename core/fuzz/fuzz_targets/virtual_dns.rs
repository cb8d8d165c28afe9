#![no_main]
//! The virtual DNS service's inputs: a resolv.conf's text (the first name server) and
//! `--dns-resolver-addrs` values never panic.

use burrow_core::virtual_dns::{first_name_server, parse_static};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = first_name_server(text);
    let list: Vec<String> = text.split(',').map(str::to_owned).collect();
    let _ = parse_static(&list);
});
