//! The ICMP echo table of the edge: which public client last sent an echo request with a
//! given (tunnel, source, destination, echo id), so that the reply, or an error quoting the
//! request, goes back to it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fnv::FnvBuildHasher;
use uuid::Uuid;

use super::{EdgeDrop, MappingId};
use crate::icmp::{parse, IcmpMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tunnel: Uuid,
    src: IpAddr,
    dst: IpAddr,
    id: u16,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mapping: MappingId,
    client: SocketAddr,
    last_seen: Instant,
}

/// Echo flows by key, forgotten after an idle period (swept, at most twice per period).
#[derive(Debug)]
pub(super) struct EchoTable {
    idle: Duration,
    max: usize,
    entries: HashMap<Key, Entry, FnvBuildHasher>,
    next_sweep: Option<Instant>,
}

impl EchoTable {
    pub(super) fn new(idle: Duration, max: usize) -> Self {
        Self {
            idle: idle.max(Duration::from_millis(1)),
            max,
            entries: HashMap::default(),
            next_sweep: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// An echo request from `client`; records who sent it.
    pub(super) fn request(
        &mut self,
        now: Instant,
        tunnel: Uuid,
        mapping: MappingId,
        client: SocketAddr,
        packet: &[u8],
    ) -> Result<(), EdgeDrop> {
        let p = parse(packet).map_err(|_| EdgeDrop::NotEcho)?;
        let IcmpMessage::EchoRequest { id, .. } = p.message() else {
            return Err(EdgeDrop::NotEcho);
        };
        let key = Key {
            tunnel,
            src: p.src(),
            dst: p.dst(),
            id,
        };
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max {
            return Err(EdgeDrop::EchoTableFull);
        }
        self.entries.insert(
            key,
            Entry {
                mapping,
                client,
                last_seen: now,
            },
        );
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.idle);
        }
        Ok(())
    }

    /// An ICMP packet from the tunnel: the client it is for.
    pub(super) fn reply(
        &mut self,
        now: Instant,
        tunnel: Uuid,
        packet: &[u8],
    ) -> Result<(MappingId, SocketAddr), EdgeDrop> {
        let p = parse(packet).map_err(|_| EdgeDrop::Malformed)?;
        let key = match p.message() {
            IcmpMessage::EchoReply { id, .. } => Key {
                tunnel,
                src: p.dst(),
                dst: p.src(),
                id,
            },
            IcmpMessage::TimeExceeded { original, .. }
            | IcmpMessage::DestinationUnreachable { original, .. } => {
                let q = parse(original).map_err(|_| EdgeDrop::EchoUnmatched)?;
                let IcmpMessage::EchoRequest { id, .. } = q.message() else {
                    return Err(EdgeDrop::EchoUnmatched);
                };
                Key {
                    tunnel,
                    src: q.src(),
                    dst: q.dst(),
                    id,
                }
            }
            _ => return Err(EdgeDrop::EchoUnmatched),
        };
        let e = self.entries.get_mut(&key).ok_or(EdgeDrop::EchoUnmatched)?;
        e.last_seen = now;
        Ok((e.mapping, e.client))
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let idle = self.idle;
        self.entries.retain(|_, e| e.last_seen + idle > now);
        // Half a period between sweeps: an entry outlives its idle time by at most that.
        self.next_sweep = (!self.entries.is_empty()).then(|| now + idle / 2);
    }
}
