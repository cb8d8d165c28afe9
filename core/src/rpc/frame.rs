//! Cap'n Proto stream framing, sans-IO and bounded.
//!
//! Every Cap'n Proto message on a QUIC stream is framed the standard unpacked way:
//! `u32 LE (segment count - 1)`, one `u32 LE` size in words per segment, padding to 8 bytes,
//! then the segments. [`frame_len`] looks only at that table, so a caller can tell from a
//! partial buffer whether the frame is complete, and reject an oversized one before buffering
//! it. Once complete, the frame is read in place (zero copy) by capnp's no-alloc reader.
//!
//! This module also holds what the data-stream and RPC codecs share: the error types and the
//! helpers that read text/data fields and write single-segment messages.

use capnp::message::{self, HeapAllocator, ReaderOptions};
use capnp::serialize::{self, NoAllocSliceSegments};
use thiserror::Error;

/// A framed message read in place over the bytes it arrived in.
pub(crate) type FrameReader<'a> = message::Reader<NoAllocSliceSegments<'a>>;

/// Words of capnp traversal allowed per word of frame (each full walk of a message costs
/// about one word per word, so a reader can be walked many times, but a message whose pointers
/// alias one another cannot make the receiver do unbounded work).
const TRAVERSAL_WORDS_PER_FRAME_WORD: usize = 64;
/// Traversal allowed however small the frame, so that tiny messages can be read repeatedly.
const MIN_TRAVERSAL_WORDS: usize = 8 * 1024;
/// How deeply structs and lists may nest (capnp's and cloudflared's default).
const NESTING_LIMIT: i32 = 64;

/// Bounds applied to an incoming frame before any of it is buffered or read.
///
/// Reading a decoded message is bounded too: capnp counts the words each accessor traverses,
/// and a message may traverse 64 times its own size (at least 64 KiB) before accessors fail
/// with [`DecodeError::Malformed`] (read limit exceeded). A full walk costs about one size, so
/// honest use never gets near it; a message whose pointers alias one another to amplify work
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame accepted, in bytes, segment table included.
    pub max_bytes: usize,
    /// Most segments accepted (clamped to [`FrameLimits::MAX_SEGMENTS`]).
    pub max_segments: u32,
}

impl FrameLimits {
    /// The most segments capnp's reader accepts (511). cloudflared allows a segment-count field
    /// up to 512, i.e. 513 segments; every real sender writes one.
    pub const MAX_SEGMENTS: u32 = 511;

    /// Limits for a `ConnectRequest` / `ConnectResponse`: 1 MiB. cloudflared accepts 64 MiB,
    /// which lets a peer make it buffer 64 MiB per stream; real requests are a few KiB.
    pub const CONNECT_REQUEST: FrameLimits = FrameLimits {
        max_bytes: 1 << 20,
        max_segments: Self::MAX_SEGMENTS,
    };

    /// Limits for one RPC message on the control stream or an RPC stream: 1 MiB (the largest,
    /// `updateLocalConfiguration`, carries the local config JSON).
    pub const RPC: FrameLimits = FrameLimits {
        max_bytes: 1 << 20,
        max_segments: Self::MAX_SEGMENTS,
    };

    /// These limits with a different byte limit.
    pub const fn with_max_bytes(self, max_bytes: usize) -> Self {
        FrameLimits { max_bytes, ..self }
    }

    /// These limits with a different segment limit (clamped to [`FrameLimits::MAX_SEGMENTS`]).
    pub const fn with_max_segments(self, max_segments: u32) -> Self {
        FrameLimits {
            max_segments,
            ..self
        }
    }

    fn effective_max_segments(&self) -> u64 {
        let max = if self.max_segments < Self::MAX_SEGMENTS {
            self.max_segments
        } else {
            Self::MAX_SEGMENTS
        };
        u64::from(max)
    }

    fn reader_options(&self, frame_len: usize) -> ReaderOptions {
        let words = (frame_len / 8).saturating_mul(TRAVERSAL_WORDS_PER_FRAME_WORD);
        let mut options = ReaderOptions::new();
        options
            .traversal_limit_in_words(Some(words.max(MIN_TRAVERSAL_WORDS)))
            .nesting_limit(NESTING_LIMIT);
        options
    }
}

impl Default for FrameLimits {
    /// The `ConnectRequest` limits (1 MiB).
    fn default() -> Self {
        Self::CONNECT_REQUEST
    }
}

/// The segment table of a frame breaks its limits; nothing past the table was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// More segments than [`FrameLimits::max_segments`].
    #[error("frame declares {count} segments, limit is {max}")]
    TooManySegments {
        /// Segments the header declares.
        count: u64,
        /// The limit in force.
        max: u64,
    },
    /// The frame would be larger than [`FrameLimits::max_bytes`].
    #[error("frame declares at least {claimed} bytes, limit is {max}")]
    TooLarge {
        /// Bytes the table declares so far (header included); at least this many.
        claimed: u64,
        /// The limit in force.
        max: usize,
    },
}

/// Length of the complete frame at the start of `buf`, from its segment table alone.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(n))`: `buf[..n]` is the whole frame. A segment
/// count or a size over `limits` is an error as soon as the header shows it, before the rest of
/// the table or any segment has arrived.
pub fn frame_len(buf: &[u8], limits: &FrameLimits) -> Result<Option<usize>, FrameError> {
    let Some(first) = read_u32(buf, 0) else {
        return Ok(None);
    };
    let count = u64::from(first) + 1;
    let max_segments = limits.effective_max_segments();
    if count > max_segments {
        return Err(FrameError::TooManySegments {
            count,
            max: max_segments,
        });
    }
    // 4 bytes of count + 4 per segment size, padded to a word.
    let header = (4 + 4 * count + 7) & !7;
    let max = limits.max_bytes;
    let too_large = |claimed: u64| {
        if claimed > max as u64 {
            Err(FrameError::TooLarge { claimed, max })
        } else {
            Ok(())
        }
    };
    too_large(header)?;
    let mut total = header;
    for i in 0..count {
        // `count` is at most MAX_SEGMENTS, so the index fits comfortably in usize.
        let Some(words) = read_u32(buf, 4 + 4 * i as usize) else {
            return Ok(None);
        };
        total += u64::from(words) * 8;
        too_large(total)?;
    }
    // `total <= max_bytes`, a usize, so the conversion cannot fail.
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    Ok((buf.len() >= total).then_some(total))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads the frame at the start of `buf` in place, once it is complete.
pub(crate) fn read_frame<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
    what: &'static str,
) -> Result<Option<(FrameReader<'a>, usize)>, DecodeError> {
    let Some(len) = frame_len(buf, limits)? else {
        return Ok(None);
    };
    let mut frame = buf.get(..len).unwrap_or_default();
    let reader =
        serialize::read_message_from_flat_slice_no_alloc(&mut frame, limits.reader_options(len))
            .map_err(|source| DecodeError::Malformed { what, source })?;
    Ok(Some((reader, len)))
}

/// The peer sent bytes that are not a well-formed message of the expected kind.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The segment table breaks the limits.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// capnp could not read a field: bad pointer, out of bounds, too deep, too much traversal.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// The field or message being read.
        what: &'static str,
        /// capnp's description.
        #[source]
        source: capnp::Error,
    },
    /// A text field is not UTF-8.
    #[error("{what} is not valid UTF-8: {source}")]
    Utf8 {
        /// The field being read.
        what: &'static str,
        /// Where decoding failed.
        #[source]
        source: core::str::Utf8Error,
    },
    /// A union or enum holds a value this schema does not know.
    #[error("{what} has unknown discriminant {value}")]
    UnknownVariant {
        /// The union or enum being read.
        what: &'static str,
        /// The wire value.
        value: u16,
    },
    /// A fixed-size data field has the wrong length.
    #[error("{what} is {actual} bytes, expected {expected}")]
    Length {
        /// The field being read.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A capability pointer refers past the end of the capability table.
    #[error("capability index {index} is outside the capability table of {len}")]
    CapIndex {
        /// The index in the pointer.
        index: u32,
        /// Entries in the table.
        len: u32,
    },
    /// A well-formed message that the protocol does not allow here.
    #[error("unexpected {what}")]
    Unexpected {
        /// What was received.
        what: &'static str,
    },
    /// A payload that must be a capability holds something else.
    #[error("{what} is not a capability pointer")]
    NotCapability {
        /// The payload being read.
        what: &'static str,
    },
}

/// The caller asked to encode something Cap'n Proto cannot represent.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// A text, data or list value exceeds Cap'n Proto's size limits.
    #[error("{what} has length {len}, Cap'n Proto allows at most {max}")]
    TooLong {
        /// The field being written.
        what: &'static str,
        /// Its length (bytes or elements).
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A value to copy from a received message could not be read.
    #[error("copying {what}: {source}")]
    Unreadable {
        /// The value being copied.
        what: &'static str,
        /// Why it could not be read.
        #[source]
        source: Box<DecodeError>,
    },
    /// capnp refused to build the message.
    #[error("building {what}: {source}")]
    Capnp {
        /// The message being built.
        what: &'static str,
        /// capnp's description.
        #[source]
        source: capnp::Error,
    },
}

/// Turns a capnp read error into a [`DecodeError`] naming the field.
pub(crate) fn malformed(what: &'static str) -> impl FnOnce(capnp::Error) -> DecodeError {
    move |source| DecodeError::Malformed { what, source }
}

/// Reads a text field; a null pointer reads as `""`.
pub(crate) fn read_text<'b>(
    field: capnp::Result<capnp::text::Reader<'b>>,
    what: &'static str,
) -> Result<&'b str, DecodeError> {
    field
        .map_err(malformed(what))?
        .to_str()
        .map_err(|source| DecodeError::Utf8 { what, source })
}

/// Reads a data field; a null pointer reads as empty.
pub(crate) fn read_data<'b>(
    field: capnp::Result<capnp::data::Reader<'b>>,
    what: &'static str,
) -> Result<&'b [u8], DecodeError> {
    field.map_err(malformed(what))
}

/// Reads a data field that must hold exactly `N` bytes (a UUID, say).
pub(crate) fn read_array<const N: usize>(
    field: capnp::Result<capnp::data::Reader<'_>>,
    what: &'static str,
) -> Result<[u8; N], DecodeError> {
    let data = read_data(field, what)?;
    data.try_into().map_err(|_| DecodeError::Length {
        what,
        expected: N,
        actual: data.len(),
    })
}

/// Longest text capnp can encode (its byte list holds a NUL too, within 2^29 - 1).
const MAX_TEXT_LEN: usize = (1 << 29) - 2;
/// Longest data or list of pointers capnp can encode.
pub(crate) const MAX_LIST_LEN: usize = (1 << 29) - 1;

/// Checks a length against a Cap'n Proto limit before capnp (which asserts) sees it.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::TooLong { what, len, max });
    }
    Ok(())
}

/// Writes a text field the way cloudflared does: empty is a null pointer.
pub(crate) fn write_text(
    what: &'static str,
    value: &str,
    set: impl FnOnce(&str),
) -> Result<(), EncodeError> {
    if value.is_empty() {
        return Ok(());
    }
    check_len(what, value.len(), MAX_TEXT_LEN)?;
    set(value);
    Ok(())
}

/// Writes a data field the way cloudflared does: empty is a null pointer.
pub(crate) fn write_data(
    what: &'static str,
    value: &[u8],
    set: impl FnOnce(&[u8]),
) -> Result<(), EncodeError> {
    if value.is_empty() {
        return Ok(());
    }
    check_len(what, value.len(), MAX_LIST_LEN)?;
    set(value);
    Ok(())
}

/// Words a text field occupies (0 when empty, since empty is written as null).
pub(crate) fn text_words(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        (value.len() + 1).div_ceil(8)
    }
}

/// Words a data field occupies (0 when empty).
pub(crate) fn data_words(value: &[u8]) -> usize {
    value.len().div_ceil(8)
}

/// Builds a single-segment message whose root is `T` and appends it, framed, to `out`.
///
/// `words` is an upper bound on the message size; the first segment is allocated that large so
/// the message is written in one segment, objects in the order `build` creates them.
pub(crate) fn write_message<T, F>(
    what: &'static str,
    words: usize,
    out: &mut Vec<u8>,
    build: F,
) -> Result<(), EncodeError>
where
    T: capnp::traits::Owned,
    F: FnOnce(T::Builder<'_>) -> Result<(), EncodeError>,
{
    let first_segment = u32::try_from(words.saturating_add(1))
        .unwrap_or(u32::MAX)
        .clamp(8, MAX_LIST_LEN as u32);
    let mut message =
        message::Builder::new(HeapAllocator::new().first_segment_words(first_segment));
    build(message.init_root::<T::Builder<'_>>())?;
    out.reserve(serialize::compute_serialized_size_in_words(&message) * 8);
    serialize::write_message(&mut *out, &message)
        .map_err(|source| EncodeError::Capnp { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_the_whole_table_and_segments() {
        // One segment of two words.
        let mut frame = vec![0, 0, 0, 0, 2, 0, 0, 0];
        frame.extend_from_slice(&[0u8; 16]);
        for n in 0..frame.len() {
            assert_eq!(
                frame_len(&frame[..n], &FrameLimits::RPC),
                Ok(None),
                "{n} bytes"
            );
        }
        assert_eq!(frame_len(&frame, &FrameLimits::RPC), Ok(Some(24)));
        frame.push(9);
        assert_eq!(frame_len(&frame, &FrameLimits::RPC), Ok(Some(24)));
    }

    #[test]
    fn even_segment_counts_are_padded() {
        // Two segments of one word each: 4 + 8 bytes of table, padded to 16.
        let mut frame = vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&[0u8; 16]);
        assert_eq!(frame_len(&frame, &FrameLimits::RPC), Ok(Some(32)));
    }

    #[test]
    fn limits_fail_from_the_first_bytes() {
        let limits = FrameLimits::RPC;
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff], &limits),
            Err(FrameError::TooManySegments {
                count: 1 << 32,
                max: 511
            })
        );
        // A huge first segment is refused before the second size has arrived.
        assert!(matches!(
            frame_len(&[1, 0, 0, 0, 0, 0, 0, 1], &limits),
            Err(FrameError::TooLarge { .. })
        ));
        let small = limits.with_max_bytes(16);
        assert_eq!(
            frame_len(&[0, 0, 0, 0, 2, 0, 0, 0], &small),
            Err(FrameError::TooLarge {
                claimed: 24,
                max: 16
            })
        );
        assert_eq!(
            frame_len(&[2, 0, 0, 0], &limits.with_max_segments(2)),
            Err(FrameError::TooManySegments { count: 3, max: 2 })
        );
        assert_eq!(
            frame_len(&[0, 0, 0, 0], &limits.with_max_segments(9999)),
            Ok(None)
        );
    }
}
