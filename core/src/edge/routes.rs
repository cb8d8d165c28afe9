//! Which connection carries a tunnel's next request: only connections whose registration the
//! edge accepted, each registered once, spread round robin over a tunnel's HA connections.
//! A connection that unregistered (graceful shutdown) or closed takes no new requests.
//!
//! A connector holds one connection per HA index: it dials an index again only once the
//! previous connection of that index ended for it (closed, timed out, or its registration call
//! given up on). So a registration from the same connector (client id) with the same index
//! supersedes the earlier connection still serving it: the connector has abandoned that one
//! even though the edge never heard its close (lost on the way), and requests or sessions
//! routed to it would wait there until its idle timeout, which loss inflates (at least 3 PTO).

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

/// One HA connection of one connector: tunnel, connector instance (client id), index.
type Slot = (Uuid, Uuid, u8);

/// Registered connections per tunnel.
#[derive(Debug, Default)]
pub struct Routes {
    /// Connections taking requests, per tunnel, in registration order.
    serving: HashMap<Uuid, Vec<ConnId>>,
    /// Every connection that registered (serving or draining), to its tunnel.
    registered: HashMap<ConnId, Uuid>,
    /// The serving connection of each connector's HA index (connectors with a client id).
    slots: HashMap<Slot, ConnId>,
    next: usize,
}

impl Routes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// `conn` registered to `tunnel` as HA index `index` of connector `client`: it takes
    /// requests from now on. Returns the connection it supersedes (the same connector's
    /// serving connection of that index, now drained), which the caller closes. A nil `client`
    /// names no connector and supersedes nothing.
    pub fn register(
        &mut self,
        conn: ConnId,
        tunnel: Uuid,
        client: Uuid,
        index: u8,
    ) -> Result<Option<ConnId>, RouteError> {
        if let Some(&tunnel) = self.registered.get(&conn) {
            return Err(RouteError::AlreadyRegistered { conn, tunnel });
        }
        self.registered.insert(conn, tunnel);
        self.serving.entry(tunnel).or_default().push(conn);
        if client.is_nil() {
            return Ok(None);
        }
        let old = self.slots.insert((tunnel, client, index), conn);
        if let Some(old) = old {
            self.drain(old);
        }
        Ok(old)
    }

    /// Whether `conn` registered (it may be draining).
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.registered.contains_key(&conn)
    }

    /// `conn` unregistered: no new requests; it stays registered (it may not register again).
    /// A connection the connector drains on purpose is left alone by the next registration
    /// of its index (its requests in flight finish).
    pub fn drain(&mut self, conn: ConnId) {
        self.slots.retain(|_, c| *c != conn);
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
    /// A connector instance.
    const C: Uuid = Uuid::from_u128(3);

    #[test]
    fn round_robin_over_registered_connections_only() {
        let mut r = Routes::new();
        assert_eq!(r.pick(A), None);
        r.register(ConnId(1), A, C, 0).expect("register");
        r.register(ConnId(2), A, C, 1).expect("register");
        r.register(ConnId(3), B, C, 0).expect("register");
        let picks: Vec<_> = (0..4).filter_map(|_| r.pick(A)).collect();
        assert_eq!(picks.iter().filter(|c| **c == ConnId(1)).count(), 2);
        assert_eq!(picks.iter().filter(|c| **c == ConnId(2)).count(), 2);
        assert_eq!(r.pick(B), Some(ConnId(3)));
    }

    #[test]
    fn one_registration_per_connection() {
        let mut r = Routes::new();
        r.register(ConnId(1), A, C, 0).expect("register");
        assert_eq!(
            r.register(ConnId(1), B, C, 1),
            Err(RouteError::AlreadyRegistered {
                conn: ConnId(1),
                tunnel: A
            })
        );
        assert_eq!(r.pick(B), None, "no stale route to the other tunnel");
        // A draining connection may not register again either.
        r.drain(ConnId(1));
        assert_eq!(r.pick(A), None);
        assert!(r.register(ConnId(1), B, C, 1).is_err());
        r.remove(ConnId(1));
        assert!(!r.is_registered(ConnId(1)));
    }

    #[test]
    fn a_connectors_index_registered_again_supersedes_the_one_it_abandoned() {
        let mut r = Routes::new();
        let other = Uuid::from_u128(4);
        assert_eq!(r.register(ConnId(1), A, C, 0), Ok(None));
        assert_eq!(r.register(ConnId(2), A, C, 1), Ok(None));
        // Another connector of the same tunnel has its own index 0.
        assert_eq!(r.register(ConnId(3), A, other, 0), Ok(None));
        // C dials index 0 again: it gave up on connection 1, whose close never arrived.
        assert_eq!(r.register(ConnId(4), A, C, 0), Ok(Some(ConnId(1))));
        let picks: Vec<_> = (0..30).filter_map(|_| r.pick(A)).collect();
        assert!(
            !picks.contains(&ConnId(1)),
            "no request for the abandoned one"
        );
        for c in [2, 3, 4] {
            assert!(picks.contains(&ConnId(c)));
        }
        // A connection its connector drains (unregistered) is left to finish its requests.
        r.drain(ConnId(2));
        assert_eq!(r.register(ConnId(5), A, C, 1), Ok(None));
        // Without a client id there is no connector to tell apart: nothing is superseded.
        assert_eq!(r.register(ConnId(6), B, Uuid::nil(), 0), Ok(None));
        assert_eq!(r.register(ConnId(7), B, Uuid::nil(), 0), Ok(None));
        let picks: Vec<_> = (0..4).filter_map(|_| r.pick(B)).collect();
        assert!(picks.contains(&ConnId(6)) && picks.contains(&ConnId(7)));
    }
}
