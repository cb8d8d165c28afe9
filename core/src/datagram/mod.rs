//! QUIC DATAGRAM payload formats: v3 (prefix-typed, the default) and v2 (suffix-typed, legacy).

pub mod v2;
pub mod v3;

/// The tunnel connection a datagram came on or must leave by.
///
/// Assigned by the caller, unique for the life of the process: unlike cloudflared's u8
/// connection index it is never reused, so a reconnect that reuses an index is still seen as a
/// different connection (PROTOCOL.md B§5 #11, #21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}
