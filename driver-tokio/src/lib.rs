//! burrow-tokio as a library: what the `burrow` daemon, the `burrow-bench` program and the
//! integration tests share. The daemon itself lives in the `burrow` binary.

pub mod deadline;
pub mod mmsg;
pub mod quic_socket;
pub mod testbed;
