//! Edge policy, kept apart from I/O so the daemon's edge and the simulator share it: the edge
//! machine itself ([`machine::Edge`]), which tunnel serves a hostname ([`hostnames`]), which
//! registered connection carries a tunnel's next request ([`routes`]), who may register
//! ([`auth`]), what an eyeball's request tells the origin about the eyeball ([`forwarded`]),
//! how a registration is answered ([`registrar`]), how an eyeball stream is paced
//! ([`streams`]) and how often a peer may make the edge log ([`log_budget`]).

pub mod auth;
pub mod forwarded;
pub mod hostnames;
pub mod machine;
pub mod registrar;
pub mod routes;
pub mod streams;

/// Shared with the connector, which budgets what the edge can make it log.
pub use crate::log_budget;

pub use machine::{Edge, EdgeConfig, Event, Input, Io, Output, Target};
pub use streams::{EyeballId, OpenError, StreamEvent};
