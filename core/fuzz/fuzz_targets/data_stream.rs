#![no_main]
//! Any bytes from the edge (a `ConnectRequest` and body) and from the origin (an HTTP
//! response or raw bytes) through one data stream: no panic, buffers stay within the window
//! plus one response message, and the stream always decides how it ends.

use burrow_core::rpc::frame::FrameLimits;
use burrow_core::stream::proxy::DataStream;
use libfuzzer_sys::fuzz_target;

const WINDOW: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (edge, origin) = rest.split_at(rest.len() * usize::from(cut) / 256);
    let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
    let mut left = edge;
    while !left.is_empty() && s.edge_room() > 0 {
        let n = left.len().min(s.edge_room()).min(61);
        if s.on_edge_data(&left[..n]).is_err() {
            return;
        }
        left = &left[n..];
        s.to_origin().clear();
    }
    s.on_origin_connected();
    let mut left = origin;
    loop {
        let n = s.on_origin_data(&left[..left.len().min(97)]);
        left = &left[n..];
        assert!(s.to_edge().len() <= WINDOW + 4 * origin.len() + 128);
        s.to_edge().clear();
        if n == 0 {
            break;
        }
    }
    s.on_origin_finished();
    s.on_edge_finished();
    assert!(s.edge_end().is_some());
});
