//! The management service served by burrow-mio, through the real `burrow edge` on loopback,
//! over QUIC and over HTTP/2: the same set-up and checks as burrow-tokio's
//! (`common/management_bed.rs`, `common::management`).

use std::path::Path;

#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use common::management::check_service;
use harness::{burrow, MIO};

include!("../../driver-tokio/tests/common/management_bed.rs");

fn run(protocol: &str) {
    serve_and_check(
        &format!("burrow-mio over {protocol}"),
        burrow(),
        protocol,
        |bed, o| bed.connector_from(Path::new(MIO), o),
    );
}

#[test]
fn the_management_service_answers_on_its_hostname_over_quic() {
    run("quic");
}

#[test]
fn the_management_service_answers_on_its_hostname_over_http2() {
    run("http2");
}
