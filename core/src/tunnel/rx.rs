//! Receive buffers: where received UDP datagrams are copied for quinn.
//!
//! quinn keeps pieces of the datagrams it is given (stream data until it is read, datagrams
//! until they are taken), each piece a slice of the buffer the datagram was copied into. One
//! copy per received buffer, not per datagram, is what makes receiving cheap: the datagrams
//! are split off without copying again, and a buffer whose pieces were all dropped is reused.
//! But a piece keeps its whole buffer, and quinn counts only the piece's packet: a stream
//! whose reader takes nothing, its packets spread over many buffers, keeps every one of them
//! (quinn compacts a stream only past 2,048 pieces, up to 128 MiB of 64 KiB buffers for one
//! stream window of data). So the buffers given up while quinn still held pieces of them are
//! counted; past [`PINNED_BUDGET`], each datagram is copied into an allocation of its own
//! size, which quinn counts right and compacts, until enough of them are let go.

use bytes::{Bytes, BytesMut};

use super::quic_io::Received;

/// Size of the reused receive buffer, kept by each connection. 16 KiB left the UDP proxy's
/// GRO runs (64-byte datagrams, 20-50 KB a run) on the allocating path: 3x the mallocs per
/// packet of 64 KiB. Larger runs (bulk streams: up to 64 x 1472 bytes) get a buffer of their
/// own, freed with them, so no connection keeps the memory of its largest run.
const RX_BUFFER: usize = 64 * 1024;

/// Bytes of given-up buffers quinn may keep by holding pieces of them, past which datagrams
/// are copied one by one.
const PINNED_BUDGET: usize = 16 * 1024 * 1024;

/// The receive buffers of one quinn endpoint.
#[derive(Debug, Default)]
pub(crate) struct RxBuffers {
    /// Filled by received datagrams and split into them; empty between calls.
    current: BytesMut,
    /// `current` has had an allocation (an empty `BytesMut::new()` has none to give up).
    started: bool,
    /// Buffers given up while quinn held pieces of them: a handle on each, with its size.
    pinned: Vec<(Bytes, usize)>,
    /// The sum of their sizes.
    pinned_bytes: usize,
}

impl RxBuffers {
    /// Hands every datagram of `received` to `each` as a buffer of its own for quinn.
    pub fn split(&mut self, received: &Received<'_>, mut each: impl FnMut(BytesMut)) {
        if received.data.is_empty() {
            return;
        }
        if self.pinned_bytes > PINNED_BUDGET {
            self.let_go();
        }
        if self.pinned_bytes > PINNED_BUDGET {
            for datagram in received.datagrams() {
                each(BytesMut::from(datagram));
            }
            return;
        }
        let stride = received.stride();
        if received.data.len() > RX_BUFFER {
            let mut run = BytesMut::from(received.data);
            split_into(&mut run, stride, &mut each);
            self.give_up(run.freeze(), received.data.len());
            return;
        }
        if self.current.capacity() < received.data.len() {
            self.renew();
        }
        self.current.extend_from_slice(received.data);
        split_into(&mut self.current, stride, &mut each);
    }

    /// Bytes of given-up buffers quinn still held pieces of, as of the last look.
    #[cfg(test)]
    fn pinned_bytes(&self) -> usize {
        self.pinned_bytes
    }

    /// Starts a new current buffer: the old one's allocation if quinn dropped every piece of
    /// it (`current` is empty: reclaiming copies nothing), else a fresh one.
    fn renew(&mut self) {
        let old = std::mem::take(&mut self.current);
        if self.started {
            match old.freeze().try_into_mut() {
                Ok(reclaimed) => self.current = reclaimed,
                Err(old) => self.give_up(old, RX_BUFFER),
            }
        }
        self.current.reserve(RX_BUFFER);
        self.started = true;
    }

    /// Counts `old`, a buffer of `size` bytes, if quinn holds pieces of it, after forgetting
    /// those it let go of since (a look per buffer given up, not per datagram).
    fn give_up(&mut self, old: Bytes, size: usize) {
        self.let_go();
        if !old.is_unique() {
            self.pinned.push((old, size));
            self.pinned_bytes += size;
        }
    }

    /// Forgets the given-up buffers quinn no longer holds any piece of, freeing them: on
    /// every buffer given up, and on timeouts, so that none outlives the traffic that
    /// filled it.
    pub fn let_go(&mut self) {
        self.pinned.retain(|(b, _)| !b.is_unique());
        self.pinned_bytes = self.pinned.iter().map(|(_, size)| size).sum();
    }
}

/// Splits all of `data` into datagrams of `stride` bytes (the last may be shorter).
fn split_into(data: &mut BytesMut, stride: usize, each: &mut impl FnMut(BytesMut)) {
    while !data.is_empty() {
        each(data.split_to(stride.min(data.len())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(data: &[u8], stride: usize) -> Received<'_> {
        Received {
            stride,
            ..Received::single("192.0.2.1:7844".parse().expect("addr"), data)
        }
    }

    #[test]
    fn datagrams_dropped_at_once_leave_one_buffer_reused() {
        let mut rx = RxBuffers::default();
        let data = vec![5u8; 1200 * 10];
        let mut firsts = Vec::new();
        for _ in 0..100 {
            let mut first = true;
            rx.split(&received(&data, 1200), |d| {
                assert_eq!(d.len(), 1200);
                if std::mem::take(&mut first) {
                    firsts.push(d.as_ptr() as usize);
                }
            });
        }
        assert_eq!(rx.pinned_bytes(), 0);
        // Five batches fill a buffer; every fifth starts the same one again.
        assert!(
            firsts.iter().step_by(5).all(|&p| p == firsts[0]),
            "{firsts:?}"
        );
        assert_ne!(firsts[1], firsts[0]);
    }

    /// Whether the datagrams of one call came back to back in one buffer.
    fn batched(rx: &mut RxBuffers, data: &[u8], mut each: impl FnMut(BytesMut)) -> bool {
        let mut ptrs = Vec::new();
        rx.split(&received(data, 1200), |d| {
            ptrs.push(d.as_ptr() as usize);
            each(d);
        });
        ptrs.windows(2).all(|w| w[1] == w[0] + 1200)
    }

    #[test]
    fn held_pieces_pin_their_buffers_only_up_to_the_budget() {
        let mut rx = RxBuffers::default();
        // Ten datagrams per call; the first of each is held, the way a stream whose reader
        // takes nothing holds its packets among other streams' ones.
        let data = vec![5u8; 1200 * 10];
        let mut held: Vec<BytesMut> = Vec::new();
        let mut one_by_one = 0;
        for _ in 0..20_000 {
            let mut first = true;
            let together = batched(&mut rx, &data, |d| {
                if std::mem::take(&mut first) {
                    held.push(d);
                }
            });
            one_by_one += usize::from(!together);
            assert!(rx.pinned_bytes() <= PINNED_BUDGET + RX_BUFFER);
        }
        // Five calls fill a 64 KiB buffer; past 16 MiB of them (the call that gives up the
        // one past it still fills the next), one by one.
        assert_eq!(one_by_one, 20_000 - 5 * (PINNED_BUDGET / RX_BUFFER + 1) - 1);
        assert_eq!(held.len(), 20_000);
        // Once let go, the pinned buffers are freed and batching resumes.
        held.clear();
        assert!(batched(&mut rx, &data, drop));
        assert_eq!(rx.pinned_bytes(), 0);
    }

    #[test]
    fn a_run_larger_than_the_buffer_is_its_own_and_counted_while_held() {
        let mut rx = RxBuffers::default();
        let data = vec![5u8; 1472 * 64];
        let mut held = Vec::new();
        rx.split(&received(&data, 1472), |d| held.push(d));
        assert_eq!(held.len(), 64);
        assert_eq!(rx.pinned_bytes(), data.len());
        held.clear();
        rx.split(&received(&data, 1472), |_| {});
        assert_eq!(rx.pinned_bytes(), 0);
    }
}
