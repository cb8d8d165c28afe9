//! The sizes both drivers' QUIC sockets batch by (quinn-udp's GSO sends and GRO receives).

/// Largest UDP payload quinn-proto sends or accepts (its `EndpointConfig` default, which both
/// roles use): one GRO segment fits in this.
pub const MAX_UDP_PAYLOAD: usize = 1472;
/// Most datagrams per transmit. quinn caps it at 10; 40 cuts the `sendmsg` calls per MB by
/// about 3x on bulk transfers (measured: 79-85 -> 31 on a connector download, 73 -> 20-25 on
/// an edge upload). The platform may allow 64, but 64 full-size datagrams exceed the
/// 65,507-byte UDP payload limit and the kernel refuses the whole batch (EMSGSIZE); 40 of the
/// largest (1472 bytes) fit.
pub const MAX_TRANSMIT_SEGMENTS: usize = 40;
/// Most datagrams Linux coalesces into one GRO buffer (`UDP_GRO_CNT_MAX`).
pub const GRO_MAX_SEGMENTS: usize = 64;
/// `recvmmsg` calls per read round, so that under load a loop's commands, origins and timers
/// still get their turn.
pub const READ_BATCHES: usize = 16;

// A full transmit of the largest datagrams fits one UDP payload, or the kernel refuses it.
const _: () = assert!(MAX_TRANSMIT_SEGMENTS * MAX_UDP_PAYLOAD <= 65_507);
