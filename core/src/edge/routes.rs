//! Which connection carries a tunnel's next request: only connections whose registration the
//! edge accepted, each registered once, spread round robin over a tunnel's HA connections.
//! A connection that unregistered (graceful shutdown) or closed takes no new requests.

use std::collections::HashMap;

use thiserror::Error;
use uuid::Uuid;

use crate::tunnel::edge::ConnId;

/// Why a connection cannot be routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RouteError {
    /// It registered before; one registration per connection.
    #[error("connection {} is already registered to tunnel {tunnel}", conn.0)]
    AlreadyRegistered {
        /// The connection.
        conn: ConnId,
        /// The tunnel it registered to.
        tunnel: Uuid,
    },
}

/// Registered connections per tunnel.
#[derive(Debug, Default)]
pub struct Routes {
    /// Connections taking requests, per tunnel, in registration order.
    serving: HashMap<Uuid, Vec<ConnId>>,
    /// Every connection that registered (serving or draining), to its tunnel.
    registered: HashMap<ConnId, Uuid>,
    next: usize,
}

impl Routes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// `conn` registered to `tunnel`: it takes requests from now on.
    pub fn register(&mut self, conn: ConnId, tunnel: Uuid) -> Result<(), RouteError> {
        if let Some(&tunnel) = self.registered.get(&conn) {
            return Err(RouteError::AlreadyRegistered { conn, tunnel });
        }
        self.registered.insert(conn, tunnel);
        self.serving.entry(tunnel).or_default().push(conn);
        Ok(())
    }

    /// Whether `conn` registered (it may be draining).
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.registered.contains_key(&conn)
    }

    /// `conn` unregistered: no new requests; it stays registered (it may not register again).
    pub fn drain(&mut self, conn: ConnId) {
        if let Some(t) = self.registered.get(&conn) {
            if let Some(list) = self.serving.get_mut(t) {
                list.retain(|c| *c != conn);
                if list.is_empty() {
                    self.serving.remove(t);
                }
            }
        }
    }

    /// `conn` is gone.
    pub fn remove(&mut self, conn: ConnId) {
        self.drain(conn);
        self.registered.remove(&conn);
    }

    /// The connection for `tunnel`'s next request, round robin; `None` if it has none.
    pub fn pick(&mut self, tunnel: Uuid) -> Option<ConnId> {
        let conns = self.serving.get(&tunnel)?;
        self.next = self.next.wrapping_add(1);
        Some(conns[self.next % conns.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_u128(1);
    const B: Uuid = Uuid::from_u128(2);

    #[test]
    fn round_robin_over_registered_connections_only() {
        let mut r = Routes::new();
        assert_eq!(r.pick(A), None);
        r.register(ConnId(1), A).expect("register");
        r.register(ConnId(2), A).expect("register");
        r.register(ConnId(3), B).expect("register");
        let picks: Vec<_> = (0..4).filter_map(|_| r.pick(A)).collect();
        assert_eq!(picks.iter().filter(|c| **c == ConnId(1)).count(), 2);
        assert_eq!(picks.iter().filter(|c| **c == ConnId(2)).count(), 2);
        assert_eq!(r.pick(B), Some(ConnId(3)));
    }

    #[test]
    fn one_registration_per_connection() {
        let mut r = Routes::new();
        r.register(ConnId(1), A).expect("register");
        assert_eq!(
            r.register(ConnId(1), B),
            Err(RouteError::AlreadyRegistered {
                conn: ConnId(1),
                tunnel: A
            })
        );
        assert_eq!(r.pick(B), None, "no stale route to the other tunnel");
        // A draining connection may not register again either.
        r.drain(ConnId(1));
        assert_eq!(r.pick(A), None);
        assert!(r.register(ConnId(1), B).is_err());
        r.remove(ConnId(1));
        assert!(!r.is_registered(ConnId(1)));
    }
}
