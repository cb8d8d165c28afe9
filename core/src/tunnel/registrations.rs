//! What the edge said to each registration, counted as cloudflared's tunnel metrics count it
//! (`connection/metrics.go`): successes, failures by kind, and where each HA connection is
//! served from; and, as cloudflared's `tunnelrpc/metrics` and local configuration metrics
//! count them, the registration-server calls and the local configuration pushes. The connector
//! counts them from its own events; the drivers only export them.

use std::collections::BTreeMap;

use crate::control::connector::{RpcCall, RpcMethod};
use crate::control::Refusal;
use crate::tunnel::supervisor::SupervisorEvent;

/// Locations kept, current and left ones: the edge names them, so a connector that keeps
/// re-registering at new ones would grow the map without a bound. Past it, left ones go.
const MAX_LOCATIONS: usize = 64;

/// Upper bounds of cloudflared's RPC latency buckets in seconds: 50 ms growing by 3, five of
/// them (`prometheus.ExponentialBuckets(0.05, 3, 5)`).
pub const RPC_LATENCY_BUCKETS: usize = 5;

/// The bounds of [`RPC_LATENCY_BUCKETS`], computed as client_golang computes them (so they print
/// alike).
pub fn rpc_latency_bounds() -> [f64; RPC_LATENCY_BUCKETS] {
    let mut b = [0.05; RPC_LATENCY_BUCKETS];
    for i in 1..RPC_LATENCY_BUCKETS {
        b[i] = b[i - 1] * 3.0;
    }
    b
}

/// One method's calls (`cloudflared_rpc_client_operations`, `_failures` and `_latency_secs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RpcFigures {
    /// Calls ended.
    pub operations: u64,
    /// Of those, failed ones.
    pub failures: u64,
    /// Calls by latency bucket (not cumulative), by [`rpc_latency_bounds`]; longer ones are
    /// only in `operations`.
    pub buckets: [u64; RPC_LATENCY_BUCKETS],
    /// Their latencies' sum, in seconds.
    pub sum_secs: f64,
}

/// Registration counters and server locations. `changes` moves whenever anything else does,
/// so a copy is refreshed only then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrationStats {
    /// Registrations the edge accepted (`cloudflared_tunnel_tunnel_register_success`).
    pub success: u64,
    /// Registrations refused, by cloudflared's error label
    /// (`cloudflared_tunnel_tunnel_register_fail{error}`).
    pub failed: BTreeMap<&'static str, u64>,
    /// Every location an HA index registered at, 1 for its current one and 0 for those it has
    /// left (`cloudflared_tunnel_server_locations{connection_id,edge_location}`).
    pub locations: BTreeMap<(u8, String), u8>,
    /// Registration-server calls by method (`cloudflared_rpc_client_*{handler="registration"}`).
    pub rpc: BTreeMap<RpcMethod, RpcFigures>,
    /// Local configuration pushes, failed ones too, as cloudflared counts them
    /// (`cloudflared_config_local_config_pushes`).
    pub config_pushes: u64,
    /// Of those, failed ones (`cloudflared_config_local_config_pushes_errors`).
    pub config_push_errors: u64,
    /// Bumped at every change.
    pub changes: u64,
}

impl RegistrationStats {
    /// Counts what `e` says of a registration.
    pub(crate) fn on_event(&mut self, e: &SupervisorEvent) {
        match e {
            SupervisorEvent::Registered { index, details, .. } => {
                self.success += 1;
                // As cloudflared's registerServerLocation: the previous location drops to 0.
                for ((i, _), current) in self.locations.range_mut((*index, String::new())..) {
                    if i != index {
                        break;
                    }
                    *current = 0;
                }
                self.locations.insert((*index, details.location.clone()), 1);
                if self.locations.len() > MAX_LOCATIONS {
                    self.locations.retain(|_, current| *current == 1);
                }
            }
            SupervisorEvent::RegistrationFailed { error, .. } => {
                let kind = if error.refusal() == Refusal::DuplicateConnection {
                    "dup_edge_conn"
                } else {
                    "server_error"
                };
                *self.failed.entry(kind).or_default() += 1;
            }
            SupervisorEvent::RpcCalled { call, .. } => self.on_call(call),
            _ => return,
        }
        self.changes += 1;
    }

    /// Counts an ended call.
    fn on_call(&mut self, call: &RpcCall) {
        let f = self.rpc.entry(call.method).or_default();
        f.operations += 1;
        f.failures += u64::from(call.failed);
        let secs = call.latency.as_secs_f64();
        f.sum_secs += secs;
        if let Some(i) = rpc_latency_bounds().iter().position(|b| secs <= *b) {
            f.buckets[i] += 1;
        }
        if call.method == RpcMethod::UpdateLocalConfiguration {
            self.config_pushes += 1;
            self.config_push_errors += u64::from(call.failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CallFailure, ConnectionDetails, RegistrationError, RegistrationFailure};
    use crate::datagram::LinkId;
    use crate::tunnel::protocol::Protocol;

    fn registered(index: u8, location: &str) -> SupervisorEvent {
        SupervisorEvent::Registered {
            index,
            link: LinkId(u64::from(index)),
            edge: "127.0.0.1:7844".parse().expect("addr"),
            protocol: Protocol::Quic,
            details: ConnectionDetails {
                uuid: uuid::Uuid::nil(),
                location: location.into(),
                remotely_managed: false,
            },
        }
    }

    #[test]
    fn locations_and_failures_count_as_cloudflareds() {
        let mut s = RegistrationStats::default();
        s.on_event(&registered(0, "SJC"));
        s.on_event(&registered(1, "LAX"));
        // Index 0 comes back elsewhere, then where it was.
        s.on_event(&registered(0, "SEA"));
        s.on_event(&registered(0, "SJC"));
        s.on_event(&SupervisorEvent::RegistrationFailed {
            index: 1,
            error: RegistrationFailure::Call(CallFailure::TimedOut),
        });
        s.on_event(&SupervisorEvent::RegistrationFailed {
            index: 1,
            error: RegistrationFailure::Refused(RegistrationError {
                cause: "EDUPCONN".into(),
                should_retry: true,
                retry_after: std::time::Duration::from_secs(1),
            }),
        });
        assert_eq!(s.success, 4);
        let at = |i: u8, l: &str| s.locations.get(&(i, l.to_string())).copied();
        assert_eq!(
            (at(0, "SJC"), at(0, "SEA"), at(1, "LAX")),
            (Some(1), Some(0), Some(1))
        );
        assert_eq!(s.failed.get("server_error"), Some(&1));
        assert_eq!(s.failed.get("dup_edge_conn"), Some(&1));
        assert_eq!(s.changes, 6);
        let call = |method, ms, failed| SupervisorEvent::RpcCalled {
            index: 0,
            call: RpcCall {
                method,
                latency: std::time::Duration::from_millis(ms),
                failed,
            },
        };
        s.on_event(&call(RpcMethod::RegisterConnection, 40, false));
        s.on_event(&call(RpcMethod::RegisterConnection, 200, false));
        s.on_event(&call(RpcMethod::UpdateLocalConfiguration, 5000, true));
        let reg = &s.rpc[&RpcMethod::RegisterConnection];
        assert_eq!(
            (reg.operations, reg.failures, reg.buckets),
            (2, 0, [1, 0, 1, 0, 0])
        );
        assert!((reg.sum_secs - 0.24).abs() < 1e-9);
        let push = &s.rpc[&RpcMethod::UpdateLocalConfiguration];
        assert_eq!(
            (push.operations, push.failures, push.buckets),
            (1, 1, [0; 5])
        );
        assert_eq!((s.config_pushes, s.config_push_errors), (1, 1));
        assert_eq!(s.changes, 9);
        // Locations the edge names are bounded: left ones go past the bound.
        for n in 0..200 {
            s.on_event(&registered(2, &format!("L{n}")));
        }
        assert!(s.locations.len() <= MAX_LOCATIONS);
        assert_eq!(s.locations.get(&(2, "L199".to_string())), Some(&1));
        assert_eq!(s.locations.get(&(0, "SJC".to_string())), Some(&1));
        let before = s.clone();
        s.on_event(&SupervisorEvent::ConfigurationApplied { version: 3 });
        assert_eq!(s, before);
    }
}
