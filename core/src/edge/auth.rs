//! Who may register: tunnels by id, each with its account tag and secret. The tag and secret
//! a connector presents are compared in constant time, so a refusal's timing tells nothing
//! about how much of a guess was right.

use std::time::Duration;

use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::control::{Registration, RegistrationError};

/// `cause` of every refused credential (one text, so it tells nothing either).
pub const UNAUTHORIZED: &str = "Unauthorized: Invalid tunnel secret";

/// One tunnel's credentials.
#[derive(Debug, Clone)]
struct Entry {
    id: Uuid,
    account_tag: String,
    secret: Vec<u8>,
}

/// The credentials of every tunnel the edge serves.
#[derive(Debug, Clone, Default)]
pub struct TunnelAuth {
    entries: Vec<Entry>,
}

impl TunnelAuth {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds tunnel `id` with its account tag and secret bytes.
    pub fn insert(&mut self, id: Uuid, account_tag: &str, secret: Vec<u8>) {
        self.entries.push(Entry {
            id,
            account_tag: account_tag.to_owned(),
            secret,
        });
    }

    /// Checks a registration's credentials: the tunnel it names, or the refusal to send.
    pub fn check(&self, r: &Registration) -> Result<Uuid, RegistrationError> {
        let ok = self
            .entries
            .iter()
            .find(|e| e.id == r.tunnel_id)
            .is_some_and(|e| {
                // Both compared always (`&`, not `&&`): no early exit on the tag.
                let tag = e.account_tag.as_bytes().ct_eq(r.account_tag.as_bytes());
                let secret = e.secret.as_slice().ct_eq(r.tunnel_secret.as_slice());
                bool::from(tag & secret)
            });
        if ok {
            Ok(r.tunnel_id)
        } else {
            Err(RegistrationError {
                cause: UNAUTHORIZED.into(),
                should_retry: false,
                retry_after: Duration::ZERO,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: Uuid, tag: &str, secret: &[u8]) -> Registration {
        Registration::new(tag, secret.to_vec(), id, Uuid::nil(), Vec::new())
    }

    #[test]
    fn only_matching_id_tag_and_secret_pass() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut auth = TunnelAuth::new();
        auth.insert(a, "tag-a", vec![1; 32]);
        auth.insert(b, "tag-b", vec![2; 32]);
        assert_eq!(auth.check(&reg(a, "tag-a", &[1; 32])), Ok(a));
        assert_eq!(auth.check(&reg(b, "tag-b", &[2; 32])), Ok(b));
        for bad in [
            reg(a, "tag-a", &[2; 32]),
            reg(a, "tag-b", &[1; 32]),
            reg(a, "tag-a", &[1; 31]),
            reg(a, "tag-a", &[]),
            reg(Uuid::from_u128(3), "tag-a", &[1; 32]),
        ] {
            let e = auth.check(&bad).expect_err("refused");
            assert_eq!(e.cause.as_str(), UNAUTHORIZED);
            assert!(!e.should_retry);
        }
    }
}
