//! Edge policy, kept apart from I/O so the daemon's edge and the simulator share it: which
//! tunnel serves a hostname ([`hostnames`]), which registered connection carries a tunnel's
//! next request ([`routes`]), who may register ([`auth`]), what an eyeball's request tells the
//! origin about the eyeball ([`forwarded`]), how a registration is answered ([`registrar`]) and
//! how often a peer may make the edge log ([`log_budget`]).

pub mod auth;
pub mod forwarded;
pub mod hostnames;
pub mod log_budget;
pub mod registrar;
pub mod routes;
