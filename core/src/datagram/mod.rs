//! QUIC DATAGRAM payload formats: v3 (prefix-typed, the default) and v2 (suffix-typed, legacy).

pub mod v2;
pub mod v3;
