//! RPC streams: bidirectional streams opened with the RPC signature for one call each. The
//! edge opens them to call the connector's `CloudflaredServer` (remote configuration,
//! datagram-v2 session registration and unregistration); the connector opens them to call the
//! edge's `SessionManager` (unregistering a datagram-v2 session that ended on its side).
//! [`client::RpcStreamClient`] calls, [`server::RpcStreamServer`] answers, in either role.

pub mod client;
pub mod server;

#[cfg(test)]
mod tests;

/// The version of the remotely managed configuration, as cloudflared's orchestrator tracks it:
/// process-wide, starting at -1, moving only forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigVersions {
    current: i32,
}

impl Default for ConfigVersions {
    fn default() -> Self {
        Self { current: -1 }
    }
}

/// The answer to an `updateConfiguration` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUpdateResult {
    /// The version in force after the call.
    pub latest_applied_version: i32,
    /// Why the offered configuration was not applied; `None` if applied or not newer.
    pub error: Option<String>,
}

impl ConfigVersions {
    /// Versions seen so far: none (-1).
    pub fn new() -> Self {
        Self::default()
    }

    /// The version in force.
    pub fn current(&self) -> i32 {
        self.current
    }

    /// cloudflared's rule for an offered `version`: not newer → nothing happens and the current
    /// version is reported without error; newer → `apply` decides, and only success moves the
    /// version forward.
    pub fn offer(
        &mut self,
        version: i32,
        apply: impl FnOnce() -> Result<(), String>,
    ) -> ConfigUpdateResult {
        if version <= self.current {
            return ConfigUpdateResult {
                latest_applied_version: self.current,
                error: None,
            };
        }
        match apply() {
            Ok(()) => {
                self.current = version;
                ConfigUpdateResult {
                    latest_applied_version: version,
                    error: None,
                }
            }
            Err(e) => ConfigUpdateResult {
                latest_applied_version: self.current,
                error: Some(e),
            },
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn versions_only_move_forward_and_only_on_success() {
        let mut v = ConfigVersions::new();
        assert_eq!(v.current(), -1);
        let ok = v.offer(0, || Ok(()));
        assert_eq!((ok.latest_applied_version, ok.error), (0, None));
        let stale = v.offer(0, || panic!("a stale version is not applied"));
        assert_eq!((stale.latest_applied_version, stale.error), (0, None));
        let bad = v.offer(5, || Err("invalid ingress".into()));
        assert_eq!(
            (bad.latest_applied_version, bad.error.as_deref()),
            (0, Some("invalid ingress"))
        );
        assert_eq!(v.offer(3, || Ok(())).latest_applied_version, 3);
        assert_eq!(v.offer(2, || Ok(())).latest_applied_version, 3);
    }
}
