//! Where a reader of a stream's body puts the bytes: copied into one `Vec<u8>`, or kept as the
//! pieces the transport holds them in (`Vec<Bytes>`), so a reader that passes them on (the
//! edge's response bodies) copies nothing the transport already gathered.

use bytes::Bytes;

/// Appends `pieces` to `out` (growing it once by their total) and empties `pieces`; returns
/// how many bytes were appended.
pub(crate) fn append_pieces(out: &mut Vec<u8>, pieces: &mut Vec<Bytes>) -> usize {
    let len = pieces.iter().map(Bytes::len).sum();
    out.reserve(len);
    for piece in pieces.drain(..) {
        out.extend_from_slice(&piece);
    }
    len
}

/// A destination for body bytes read from a transport.
pub trait BodySink {
    /// Appends bytes the transport hands over as its own.
    fn put(&mut self, bytes: Bytes);
    /// Appends bytes the transport only lends.
    fn put_slice(&mut self, bytes: &[u8]);
}

impl BodySink for Vec<u8> {
    fn put(&mut self, bytes: Bytes) {
        self.extend_from_slice(&bytes);
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl BodySink for Vec<Bytes> {
    fn put(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.push(bytes);
        }
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.push(Bytes::copy_from_slice(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_sink_copies_and_a_piece_sink_keeps_what_it_is_handed() {
        let held = Bytes::from(vec![1u8, 2, 3]);
        let mut bytes = Vec::<u8>::new();
        bytes.put(held.clone());
        bytes.put_slice(&[4]);
        assert_eq!(bytes, [1, 2, 3, 4]);

        let mut pieces = Vec::<Bytes>::new();
        pieces.put(held.clone());
        pieces.put(Bytes::new());
        pieces.put_slice(&[4]);
        pieces.put_slice(&[]);
        assert_eq!(pieces, [held.clone(), Bytes::from_static(&[4])]);
        assert_eq!(pieces[0].as_ptr(), held.as_ptr(), "kept, not copied");
    }

    #[test]
    fn appended_pieces_follow_what_the_buffer_held_and_leave_none_behind() {
        let mut out = vec![9u8];
        let mut pieces = vec![Bytes::from_static(&[1, 2]), Bytes::from_static(&[3])];
        assert_eq!(append_pieces(&mut out, &mut pieces), 3);
        assert_eq!(out, [9, 1, 2, 3]);
        assert!(pieces.is_empty());
        assert_eq!(append_pieces(&mut out, &mut pieces), 0);
        assert_eq!(out, [9, 1, 2, 3]);
    }
}
