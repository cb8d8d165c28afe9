//! burrow-sim: connector, edge, origins and a lossy network in one process on virtual time,
//! reproducible from a seed.

pub mod client;
pub mod clock;
pub mod net;
pub mod origin;
pub mod rtt;
pub mod scenarios;
pub mod tcp;
pub mod udp;
pub mod world;
