//! The process-wide flow limit (PROTOCOL.md B§1.11, cloudflared's `flow/limiter.go`): one
//! count across TCP flows on every tunnel connection and UDP sessions of both datagram
//! versions, against one hot-swappable limit (0: unlimited).
//!
//! Plain single-owner state, nothing shared. The count is nobody's counter: it is the number
//! of flow records that hold a slot, wherever they live (each connection's TCP flows, the
//! session manager's sessions). A record is made with the [`FlowSlot`] a [`FlowGate`] granted
//! and gives it back by being removed, so every way a flow ends (closed, failed dial, reset,
//! connection lost, idle expiry) releases its slot exactly once, and a record that moves (a
//! session migrating to another connection) keeps it.
//!
//! The supervisor owns every place flows live; before it hands control to one, it gives it a
//! gate: the limit, and the slots held by the rest of the process (which cannot change while
//! that one runs).

use std::collections::BTreeMap;

use thiserror::Error;

/// The kind of flow asking for a slot (the metric's `flow_type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowType {
    /// A warp-routing TCP flow on a data stream.
    Tcp,
    /// A UDP session (datagram v2 or v3).
    Udp,
}

impl FlowType {
    /// Every kind, for metrics.
    pub const ALL: [FlowType; 2] = [Self::Tcp, Self::Udp];

    /// The metric label, as cloudflared writes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The limit is reached (cloudflared's `ErrTooManyActiveFlows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("too many active flows")]
pub struct TooManyActiveFlows;

/// What one place that keeps flows may admit: the process's limit and the slots held
/// everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowGate {
    limit: u64,
    elsewhere: u64,
}

impl FlowGate {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        limit: 0,
        elsewhere: 0,
    };

    /// `limit` flows at once in the process (0: unlimited), `elsewhere` of them held by others.
    pub fn new(limit: u64, elsewhere: u64) -> Self {
        Self { limit, elsewhere }
    }

    /// The limit (0: unlimited).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// A slot for one more flow beside the `here` its caller holds, if the limit allows it.
    pub fn admit(&self, here: u64) -> Result<FlowSlot, TooManyActiveFlows> {
        if self.limit == 0 || self.elsewhere.saturating_add(here) < self.limit {
            Ok(FlowSlot(()))
        } else {
            Err(TooManyActiveFlows)
        }
    }
}

/// A slot a [`FlowGate`] granted. The flow's record keeps it: only a gate makes one, and it
/// cannot be copied, so a record holding one was admitted, and removing the record is the
/// release.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a slot counts only in the record of its flow"]
pub struct FlowSlot(());

/// The process's flow figures, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// The limit in force (0: unlimited).
    pub limit: u64,
    /// Flows holding a slot now.
    pub active: u64,
    /// Flows refused so far, by [`FlowType::ALL`] order.
    pub rejected: [u64; 2],
}

impl FlowStats {
    /// Flows of `kind` refused so far.
    pub fn rejected(&self, kind: FlowType) -> u64 {
        self.rejected[kind as usize]
    }
}

/// Flow records by key, some of them holding a slot; how many do is kept beside them. Records
/// leave only through [`SlotMap::remove`], which drops their slot with them: there is no
/// release to forget or repeat.
#[derive(Debug)]
pub(crate) struct SlotMap<K, V> {
    records: BTreeMap<K, (V, Option<FlowSlot>)>,
    slots: u64,
}

impl<K: Ord, V> Default for SlotMap<K, V> {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            slots: 0,
        }
    }
}

impl<K: Ord, V> SlotMap<K, V> {
    /// Records holding a slot.
    pub(crate) fn slots(&self) -> u64 {
        self.slots
    }

    /// Adds a record with the slot it was admitted with, if it needs one. A record already
    /// under `key` is removed first.
    pub(crate) fn insert(&mut self, key: K, value: V, slot: Option<FlowSlot>) {
        self.remove(&key);
        self.slots += u64::from(slot.is_some());
        self.records.insert(key, (value, slot));
    }

    /// Removes a record; its slot, if it held one, is free again.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, slot) = self.records.remove(key)?;
        self.slots -= u64::from(slot.is_some());
        Some(value)
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.records.get(key).map(|(v, _)| v)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.records.get_mut(key).map(|(v, _)| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.records.iter().map(|(k, (v, _))| (k, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.records.values().map(|(v, _)| v)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.records.keys()
    }
}

/// The limit in force, by cloudflared's precedence: `--max-active-flows` /
/// `TUNNEL_MAX_ACTIVE_FLOWS` (`flag`) over the configuration's `warp-routing.maxActiveFlows`
/// (the local file at start, then each remote configuration), else 0 (unlimited).
pub fn effective_limit(flag: Option<u64>, configured: Option<u64>) -> u64 {
    flag.or(configured).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited() {
        let gate = FlowGate::new(0, u64::MAX);
        assert!(gate.admit(u64::MAX).is_ok());
        assert!(FlowGate::UNLIMITED.admit(1_000_000).is_ok());
    }

    #[test]
    fn a_gate_counts_what_others_hold() {
        let gate = FlowGate::new(3, 2);
        assert!(gate.admit(0).is_ok());
        assert_eq!(gate.admit(1), Err(TooManyActiveFlows));
        let lowered = FlowGate::new(1, 2);
        assert_eq!(
            lowered.admit(0),
            Err(TooManyActiveFlows),
            "over the limit already: nobody is cut off, nobody new comes in"
        );
    }

    #[test]
    fn a_slot_map_counts_the_records_that_hold_a_slot() {
        let gate = FlowGate::new(2, 0);
        let mut m = SlotMap::default();
        m.insert(1, "tcp", Some(gate.admit(m.slots()).expect("first")));
        m.insert(2, "http", None);
        m.insert(3, "tcp", Some(gate.admit(m.slots()).expect("second")));
        assert_eq!(m.slots(), 2);
        assert!(gate.admit(m.slots()).is_err());
        assert_eq!(m.remove(&1), Some("tcp"));
        assert_eq!(m.remove(&1), None, "a second removal finds nothing");
        assert_eq!(m.slots(), 1);
        assert_eq!(m.remove(&2), Some("http"));
        assert_eq!(m.slots(), 1, "a record without a slot frees none");
        // Replacing a record removes the old one, slot and all.
        m.insert(3, "tcp again", Some(gate.admit(0).expect("room")));
        assert_eq!((m.slots(), m.get(&3)), (1, Some(&"tcp again")));
    }

    #[test]
    fn the_flag_overrides_the_configuration() {
        assert_eq!(effective_limit(None, None), 0);
        assert_eq!(effective_limit(None, Some(7)), 7);
        assert_eq!(effective_limit(Some(3), Some(7)), 3);
        assert_eq!(
            effective_limit(Some(0), Some(7)),
            0,
            "an explicit 0 lifts it"
        );
    }
}
