#![no_main]
//! Any bytes as a SOCKS5 client's, in any pieces: no panic; a request that decodes encodes
//! back to the bytes it was read from (domains as UTF-8 and the reserved byte aside); the
//! exchange only asks to dial an address the rules allow (here: none, so never); over a
//! dialled connection it never asks to resolve or dial.

use burrow_core::stream::socks::{decode_request, encode_request, Host, Server, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    if let Ok(Some((req, used))) = decode_request(rest) {
        if !matches!(req.host, Host::Domain(_)) {
            // The reserved byte is ignored, as cloudflared's socks package ignores it.
            let mut wire = rest[..used].to_vec();
            wire[2] = 0;
            assert_eq!(encode_request(&req), wire);
        }
    }
    let mut s = Server::new(Vec::new());
    for chunk in rest.chunks(usize::from(step).max(1)) {
        let mut next = s.feed(chunk);
        while let Step::Send(_, after) = next {
            next = *after;
        }
        match next {
            Step::Dial(_) | Step::Pipe(_) => panic!("no rules, yet asked to connect"),
            Step::Resolve(_) => next = s.resolved(&[[127, 0, 0, 1].into()]),
            _ => {}
        }
        while let Step::Send(_, after) = next {
            next = *after;
        }
        assert!(!matches!(next, Step::Dial(_) | Step::Pipe(_)));
        if matches!(next, Step::Close(_)) {
            break;
        }
    }
    let mut s = Server::over_dialled(([127, 0, 0, 1], 1).into());
    for chunk in rest.chunks(usize::from(step).max(1)) {
        let mut next = s.feed(chunk);
        while let Step::Send(_, after) = next {
            next = *after;
        }
        assert!(!matches!(next, Step::Dial(_) | Step::Resolve(_)));
        if matches!(next, Step::Close(_) | Step::Pipe(_)) {
            break;
        }
    }
});
