//! The hostname table: which tunnel serves an eyeball's `Host`. A hostname is exact
//! (`app.example.com`) or a wildcard (`*.example.com`, any name below `example.com`). Exact
//! beats wildcard and the longest wildcard suffix beats a shorter one, whatever order the
//! tunnels were created in. Names compare case-insensitively (DNS names do), and a hostname
//! belongs to one tunnel only.

use std::collections::HashMap;

use thiserror::Error;
use uuid::Uuid;

/// Why a hostname cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostnameError {
    /// Another tunnel already serves it.
    #[error("hostname {hostname} is already routed to tunnel {tunnel}")]
    Taken {
        /// The hostname, normalised.
        hostname: String,
        /// The tunnel that has it.
        tunnel: Uuid,
    },
    /// Not a hostname (empty, a bad character, a `*` other than a leading `*.` label).
    #[error("invalid hostname {0:?}")]
    Invalid(String),
}

/// Hostnames of every tunnel, indexed for lookup.
#[derive(Debug, Clone, Default)]
pub struct HostnameTable {
    exact: HashMap<String, Uuid>,
    /// Keyed by the suffix after `*`, dot included (`.example.com`).
    wildcard: HashMap<String, Uuid>,
}

impl HostnameTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `hostname` to `tunnel`; refused if another tunnel has it. Adding a hostname
    /// again to the tunnel that has it is a no-op.
    pub fn insert(&mut self, hostname: &str, tunnel: Uuid) -> Result<(), HostnameError> {
        let name = normalize(hostname)?;
        let (map, key) = match name.strip_prefix('*') {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, name.clone()),
        };
        match map.get(&key) {
            Some(&other) if other != tunnel => Err(HostnameError::Taken {
                hostname: name,
                tunnel: other,
            }),
            _ => {
                map.insert(key, tunnel);
                Ok(())
            }
        }
    }

    /// The tunnel serving `host` (a `Host` header value, port allowed): the exact name, else
    /// the most specific wildcard.
    pub fn route(&self, host: &str) -> Option<Uuid> {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if let Some(&t) = self.exact.get(&host) {
            return Some(t);
        }
        // Every proper suffix starting at a dot, longest first.
        host.match_indices('.')
            .filter(|&(i, _)| i > 0)
            .find_map(|(i, _)| self.wildcard.get(&host[i..]).copied())
    }
}

/// A hostname as the table keys it: lower case, no trailing dot, checked.
pub fn normalize(hostname: &str) -> Result<String, HostnameError> {
    let name = hostname.trim_end_matches('.').to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name)
    } else {
        Err(HostnameError::Invalid(hostname.to_owned()))
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn most_specific_wildcard_wins_whatever_the_order() {
        for order in [[0, 1], [1, 0]] {
            let pats = ["*.example.org", "*.a.example.org"];
            let mut t = HostnameTable::new();
            for i in order {
                t.insert(pats[i], id(i as u128 + 1)).expect("insert");
            }
            assert_eq!(t.route("x.a.example.org"), Some(id(2)));
            assert_eq!(t.route("y.x.a.example.org"), Some(id(2)));
            assert_eq!(t.route("x.example.org"), Some(id(1)));
            assert_eq!(t.route("a.example.org"), Some(id(1)));
            assert_eq!(t.route("example.org"), None);
        }
    }

    #[test]
    fn exact_beats_wildcard_and_case_and_port_do_not_matter() {
        let mut t = HostnameTable::new();
        t.insert("*.example.test", id(1)).expect("insert");
        t.insert("App.Example.Test", id(2)).expect("insert");
        assert_eq!(t.route("APP.example.test:8080"), Some(id(2)));
        assert_eq!(t.route("app.example.test."), Some(id(2)));
        assert_eq!(t.route("other.EXAMPLE.test"), Some(id(1)));
        assert_eq!(t.route("[::1]:80"), None);
    }

    #[test]
    fn a_hostname_belongs_to_one_tunnel() {
        let mut t = HostnameTable::new();
        t.insert("app.example.test", id(1)).expect("insert");
        t.insert("*.example.test", id(1)).expect("insert");
        assert_eq!(t.insert("APP.example.test", id(1)), Ok(()));
        assert_eq!(
            t.insert("APP.example.test", id(2)),
            Err(HostnameError::Taken {
                hostname: "app.example.test".into(),
                tunnel: id(1)
            })
        );
        assert!(matches!(
            t.insert("*.EXAMPLE.test", id(2)),
            Err(HostnameError::Taken { .. })
        ));
    }

    #[test]
    fn bad_hostnames_are_refused() {
        let mut t = HostnameTable::new();
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "a*.b",
            "*.*.b",
            "a b",
            "a/b",
            "*example.org",
        ] {
            assert!(
                matches!(t.insert(bad, id(1)), Err(HostnameError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
