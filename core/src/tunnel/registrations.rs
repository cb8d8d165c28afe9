//! What the edge said to each registration, counted as cloudflared's tunnel metrics count it
//! (`connection/metrics.go`): successes, failures by kind, and where each HA connection is
//! served from. The connector counts them from its own events; the drivers only export them.

use std::collections::BTreeMap;

use crate::control::Refusal;
use crate::tunnel::supervisor::SupervisorEvent;

/// Registration counters and server locations. `changes` moves whenever anything else does,
/// so a copy is refreshed only then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStats {
    /// Registrations the edge accepted (`cloudflared_tunnel_tunnel_register_success`).
    pub success: u64,
    /// Registrations refused, by cloudflared's error label
    /// (`cloudflared_tunnel_tunnel_register_fail{error}`).
    pub failed: BTreeMap<&'static str, u64>,
    /// Every location an HA index registered at, 1 for its current one and 0 for those it has
    /// left (`cloudflared_tunnel_server_locations{connection_id,edge_location}`).
    pub locations: BTreeMap<(u8, String), u8>,
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
            }
            SupervisorEvent::RegistrationFailed { error, .. } => {
                let kind = if error.refusal() == Refusal::DuplicateConnection {
                    "dup_edge_conn"
                } else {
                    "server_error"
                };
                *self.failed.entry(kind).or_default() += 1;
            }
            _ => return,
        }
        self.changes += 1;
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
        let before = s.clone();
        s.on_event(&SupervisorEvent::ConfigurationApplied { version: 3 });
        assert_eq!(s, before);
    }
}
