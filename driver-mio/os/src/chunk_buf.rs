//! Reading a byte stream in chunks handed on without a copy: both connectors' origin readers
//! and the edge's raw-byte splice share it.

use std::io;
use std::os::fd::AsFd;

use bytes::{Bytes, BytesMut};

/// Bytes asked of the socket per read on a busy stream. Each read is a round trip through an
/// event loop (report or command, then permit or ack): 128 KiB rather than 32 KiB cut the
/// connector's syscalls per MB on a download by about 60% and its context switches by about
/// half; 256 KiB measured no better (README, issue 16). On the edge's TCP upload it cut the
/// client reads per MB from 31 to 8.
pub const READ_CHUNK: usize = 128 * 1024;
/// The buffer of a stream whose reads are small (a chatty WebSocket, an SSH session): every page
/// a read touches stays resident while the buffer lives, so 128 KiB walked through by small
/// reads cost 128 KiB per idle connection; cloudflared copies through 32 KiB.
pub const SMALL_CHUNK: usize = 32 * 1024;
/// Least room worth a read: below it the buffer is renewed first. A read this large also marks
/// the stream as busy, so its next buffer is a [`READ_CHUNK`].
pub const MIN_READ: usize = 16 * 1024;

/// A stream's read buffer, sized by what the stream carries: reads fill the rest of one
/// allocation and are split off as they are; a fresh one comes only when little room is left,
/// [`READ_CHUNK`] if a read since the last renewal brought [`MIN_READ`] or more, else
/// [`SMALL_CHUNK`]. A renewal of the same size takes the old allocation back once nobody holds
/// its chunks.
#[derive(Debug, Default)]
pub struct ChunkBuf {
    buf: BytesMut,
    /// Size of the allocation `buf` cuts from (0 before the first read).
    size: usize,
    /// A read since the last renewal brought at least [`MIN_READ`].
    busy: bool,
}

impl ChunkBuf {
    /// The buffer to append one read to, renewed first if little room is left in it.
    pub fn room(&mut self) -> &mut BytesMut {
        if self.buf.capacity() < MIN_READ {
            let size = if self.busy { READ_CHUNK } else { SMALL_CHUNK };
            if size == self.size {
                // `buf` is empty: this reclaims the allocation if its chunks are all dropped,
                // and otherwise allocates `size` afresh.
                self.buf.reserve(size);
            } else {
                self.buf = BytesMut::with_capacity(size);
                self.size = size;
            }
            self.busy = false;
        }
        &mut self.buf
    }

    /// What a read of `n` bytes into [`Self::room`] brought, split off; `None` for 0, the end
    /// of the stream.
    pub fn take(&mut self, n: usize) -> Option<Bytes> {
        if n == 0 {
            return None;
        }
        self.busy |= n >= MIN_READ;
        Some(self.buf.split().freeze())
    }

    /// One `read(2)` of `fd` straight into the buffer's free room (a non-blocking socket gives
    /// `WouldBlock`); `None` at the end of the stream.
    pub fn read_fd(&mut self, fd: impl AsFd) -> io::Result<Option<Bytes>> {
        let room = self.room();
        let len = room.len();
        let (filled, _) = rustix::io::read(fd, room.spare_capacity_mut())?;
        let n = filled.len();
        // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
        unsafe { room.set_len(len + n) };
        Ok(self.take(n))
    }

    /// Size of the allocation reads go to now.
    #[cfg(test)]
    fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Reads `want` bytes through `buf`, each write of `each` bytes read before the next.
    fn carry(buf: &mut ChunkBuf, each: usize, want: usize) -> Vec<Bytes> {
        let (mut tx, rx) = UnixStream::pair().expect("pair");
        let mut chunks = Vec::new();
        let mut got = 0;
        while got < want {
            tx.write_all(&vec![7u8; each]).expect("write");
            let mut this = 0;
            while this < each {
                let c = buf.read_fd(&rx).expect("read").expect("not ended");
                this += c.len();
                chunks.push(c);
            }
            got += this;
        }
        chunks
    }

    #[test]
    fn small_reads_keep_a_small_buffer_and_a_busy_stream_gets_a_large_one() {
        let mut buf = ChunkBuf::default();
        // A chatty stream: 1 KiB messages through several renewals.
        carry(&mut buf, 1024, 4 * SMALL_CHUNK);
        assert_eq!(buf.size(), SMALL_CHUNK);
        // Bulk: reads of MIN_READ or more; the next renewal is large.
        carry(&mut buf, 2 * MIN_READ, 4 * READ_CHUNK);
        assert_eq!(buf.size(), READ_CHUNK);
        // Quiet again: back to small at the next renewals.
        carry(&mut buf, 512, 2 * READ_CHUNK);
        assert_eq!(buf.size(), SMALL_CHUNK);
    }

    #[test]
    fn chunks_hold_the_bytes_in_order_across_renewals_and_reclaims() {
        let mut buf = ChunkBuf::default();
        let (tx, rx) = UnixStream::pair().expect("pair");
        let sent: Vec<u8> = (0..3 * READ_CHUNK + 777).map(|i| (i % 251) as u8).collect();
        let want = [sent.clone(), sent.clone()].concat();
        let writer = std::thread::spawn(move || {
            let mut tx = tx;
            // Sizes that cross every threshold: small, at MIN_READ, and bulk.
            for piece in sent.chunks(MIN_READ - 1).chain(sent.chunks(READ_CHUNK)) {
                tx.write_all(piece).expect("write");
            }
        });
        let mut got = Vec::new();
        let mut held = Vec::new();
        let mut reads = 0;
        while let Some(c) = buf.read_fd(&rx).expect("read") {
            // Keep every other chunk alive, so some renewals cannot reclaim.
            if reads % 2 == 0 {
                held.push((got.len(), c.clone()));
            }
            reads += 1;
            got.extend_from_slice(&c);
        }
        writer.join().expect("writer");
        assert!(got == want, "bytes in order");
        // A kept chunk was never written over by a later read into a reclaimed buffer.
        for (at, c) in &held {
            assert!(want[*at..*at + c.len()] == c[..], "chunk at {at}");
        }
    }

    #[test]
    fn a_non_blocking_read_with_nothing_there_would_block_and_keeps_the_buffer() {
        let mut buf = ChunkBuf::default();
        let (_tx, rx) = UnixStream::pair().expect("pair");
        rx.set_nonblocking(true).expect("non-blocking");
        let e = buf.read_fd(&rx).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(buf.size(), SMALL_CHUNK);
    }
}
