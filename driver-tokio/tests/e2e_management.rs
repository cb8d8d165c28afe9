//! The management service through `burrow edge`, as Cloudflare's dashboard and `cloudflared
//! tail` reach it: requests whose host is `management.argotunnel.com` are served by the
//! connector itself (`/ping`, `/host_details`, `/metrics`, and `/logs`, a WebSocket streaming the
//! connector's log lines), whatever the ingress rules say, over QUIC and over HTTP/2. With
//! `BURROW_CLOUDFLARED`, stock cloudflared answers the same requests the same way.

use std::path::Path;

use burrow_tokio::testbed;

mod common;
use common::management::check_service;

include!("common/management_bed.rs");

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

#[test]
fn the_management_service_answers_on_its_hostname() {
    let stock = std::env::var_os("BURROW_CLOUDFLARED");
    for protocol in ["quic", "http2"] {
        let bin = Path::new(BIN);
        serve_and_check(
            &format!("burrow over {protocol}"),
            bin,
            protocol,
            |bed, o| bed.connector(o),
        );
        if let Some(cfd) = &stock {
            let name = format!("cloudflared over {protocol}");
            serve_and_check(&name, bin, protocol, |bed, o| {
                bed.cloudflared(Path::new(cfd), o)
            });
        }
    }
}
