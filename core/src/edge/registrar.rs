//! Answering registrations: the credentials are checked by whatever holds the tunnels (an
//! [`Authenticator`]), an accepted connection joins its tunnel's [`Routes`], and the answer is
//! the [`ConnectionDetails`] to send back. The same for QUIC and HTTP/2 connections.

use std::time::Duration;

use uuid::Uuid;

use super::auth::TunnelAuth;
use super::routes::Routes;
use crate::control::{ConnectionDetails, Registration, RegistrationError};
use crate::tunnel::edge::ConnId;

/// `location` this edge reports to connectors (cloudflared logs it as the colo).
pub const LOCATION: &str = "LOCAL";

/// Who may register: implemented by the user's tunnel store.
pub trait Authenticator {
    /// The tunnel `registration` may serve, or the refusal to send back.
    fn authenticate(&self, registration: &Registration) -> Result<Uuid, RegistrationError>;
}

impl Authenticator for TunnelAuth {
    fn authenticate(&self, registration: &Registration) -> Result<Uuid, RegistrationError> {
        self.check(registration)
    }
}

/// Registrations and the routes they make.
#[derive(Debug, Default)]
pub struct Registrar<A> {
    auth: A,
    routes: Routes,
}

impl<A: Authenticator> Registrar<A> {
    /// Registrations checked by `auth`; no routes yet.
    pub fn new(auth: A) -> Self {
        Self {
            auth,
            routes: Routes::new(),
        }
    }

    /// Answers `conn`'s registration; accepted, the connection takes its tunnel's requests and
    /// is told `connection_id` (the caller's fresh id for it). With the answer comes the
    /// connection this one supersedes, if any (the same connector's earlier connection of
    /// this HA index, which it abandoned): it takes no new requests, and the caller closes it.
    pub fn register(
        &mut self,
        conn: ConnId,
        registration: &Registration,
        connection_id: Uuid,
    ) -> Result<(ConnectionDetails, Option<ConnId>), RegistrationError> {
        let tunnel = self.auth.authenticate(registration)?;
        let superseded = self
            .routes
            .register(
                conn,
                tunnel,
                registration.client_id,
                registration.conn_index,
            )
            .map_err(|e| RegistrationError {
                cause: e.to_string().into(),
                should_retry: false,
                retry_after: Duration::ZERO,
            })?;
        let details = ConnectionDetails {
            uuid: connection_id,
            location: LOCATION.into(),
            remotely_managed: false,
        };
        Ok((details, superseded))
    }

    /// `conn` unregistered: no new requests.
    pub fn unregistered(&mut self, conn: ConnId) {
        self.routes.drain(conn);
    }

    /// `conn` is gone.
    pub fn closed(&mut self, conn: ConnId) {
        self.routes.remove(conn);
    }

    /// The connection for `tunnel`'s next request, round robin.
    pub fn pick(&mut self, tunnel: Uuid) -> Option<ConnId> {
        self.routes.pick(tunnel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_u128(1);

    fn reg(secret: &[u8]) -> Registration {
        Registration::new("tag", secret.to_vec(), A, Uuid::nil(), Vec::new())
    }

    #[test]
    fn accepted_once_then_routed_until_unregistered() {
        let mut auth = TunnelAuth::new();
        auth.insert(A, "tag", vec![7; 32]);
        let mut r = Registrar::new(auth);
        assert!(r.register(ConnId(1), &reg(&[8; 32]), Uuid::nil()).is_err());
        assert_eq!(r.pick(A), None, "a refused connection takes no requests");
        let id = Uuid::from_u128(9);
        let (details, superseded) = r.register(ConnId(1), &reg(&[7; 32]), id).expect("accepted");
        assert_eq!((details.uuid, details.location.as_str()), (id, LOCATION));
        assert_eq!(superseded, None);
        assert_eq!(r.pick(A), Some(ConnId(1)));
        let again = r.register(ConnId(1), &reg(&[7; 32]), id).expect_err("once");
        assert!(!again.should_retry);
        r.unregistered(ConnId(1));
        assert_eq!(r.pick(A), None);
        r.closed(ConnId(1));
        assert_eq!(r.pick(A), None);
    }
}
