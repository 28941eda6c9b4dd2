//! Framing of every stream: a fixed 16-byte header, then the payload.
//!
//! ```text
//! offset size field    value
//!      0    4 magic    0x4342_444E ("NDBC" in little-endian byte order)
//!      4    1 version  1
//!      5    1 kind     FrameKind
//!      6    2 flags    kind-specific, 0 unless a kind says otherwise
//!      8    4 length   payload length in bytes, <= FRAME_PAYLOAD_MAX_BYTES
//!     12    4 crc32c   CRC32C (Castagnoli) of the payload
//! ```
//!
//! All integers are little-endian. The header is a `#[repr(C)]` `bytemuck::Pod`, so encoding
//! and decoding it is a copy. [`FrameDecoder`] accepts the stream in chunks split anywhere,
//! buffers at most one frame, and turns any bad magic, version, kind, length or checksum into
//! a [`FrameError`]; the connection is then closed (the decoder stays failed).

use bytemuck::{Pod, Zeroable};
use thiserror::Error;

use crate::constants::{FRAME_PAYLOAD_EAGER_BYTES, FRAME_PAYLOAD_MAX_BYTES};

/// `b"NDBC"` read as a little-endian `u32`.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"NDBC");
/// The only wire version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Size of [`FrameHeader`] on the wire.
pub const FRAME_HEADER_BYTES: usize = std::mem::size_of::<FrameHeader>();

const _: () = assert!(FRAME_HEADER_BYTES == 16);

/// The fixed header, exactly as it sits on the wire (fields little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FrameHeader {
    magic: u32,
    version: u8,
    kind: u8,
    flags: u16,
    length: u32,
    crc32c: u32,
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// First frame on a stream: who is speaking and which stream class this is.
    Hello = 1,
    /// A batch of Raft messages for groups on the receiving core.
    RaftBatch = 2,
    /// A failure-detector message (`node::liveness`: probe, indirect probe, ack).
    Ping = 3,
    /// Reserved (the detector's acks travel as `Ping` frames too).
    Pong = 4,
    /// A client request and its response.
    Request = 5,
    Response = 6,
    /// A chunk of a snapshot or migration stream.
    BulkChunk = 7,
    /// An application message between cores (tests, tools).
    Message = 8,
}

impl FrameKind {
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        use FrameKind::*;
        [
            Hello, RaftBatch, Ping, Pong, Request, Response, BulkChunk, Message,
        ]
        .into_iter()
        .find(|k| *k as u8 == value)
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid frame stream.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The stream does not start a frame with the magic number: not our protocol.
    #[error("bad frame magic {0:#010x}: the peer does not speak this protocol")]
    BadMagic(u32),
    /// The peer speaks another wire version.
    #[error("unsupported frame version {0} (this build speaks version {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The declared payload length exceeds the bound.
    #[error("frame payload of {length} bytes exceeds the {max}-byte limit")]
    Oversized { length: u64, max: usize },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// A previous error made the stream unusable.
    #[error("the frame stream already failed: {0}")]
    Failed(Box<FrameError>),
}

/// Appends one frame to `out`. Fails only when the payload is over the bound.
pub fn encode_frame(
    kind: FrameKind,
    flags: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > FRAME_PAYLOAD_MAX_BYTES {
        return Err(FrameError::Oversized {
            length: payload.len() as u64,
            max: FRAME_PAYLOAD_MAX_BYTES,
        });
    }
    let header = FrameHeader {
        magic: FRAME_MAGIC.to_le(),
        version: FRAME_VERSION,
        kind: kind as u8,
        flags: flags.to_le(),
        length: (payload.len() as u32).to_le(),
        crc32c: crc32c::crc32c(payload).to_le(),
    };
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(bytemuck::bytes_of(&header));
    out.extend_from_slice(payload);
    Ok(())
}

/// Validates a header; returns the kind, flags and payload length.
fn check_header(
    raw: &[u8; FRAME_HEADER_BYTES],
) -> Result<(FrameKind, u16, usize, u32), FrameError> {
    let header: FrameHeader = bytemuck::pod_read_unaligned(raw);
    let magic = u32::from_le(header.magic);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if header.version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(header.version));
    }
    let kind = FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind(header.kind))?;
    let length = u32::from_le(header.length) as usize;
    if length > FRAME_PAYLOAD_MAX_BYTES {
        return Err(FrameError::Oversized {
            length: length as u64,
            max: FRAME_PAYLOAD_MAX_BYTES,
        });
    }
    Ok((
        kind,
        u16::from_le(header.flags),
        length,
        u32::from_le(header.crc32c),
    ))
}

/// Where the decoder is inside the current frame.
#[derive(Debug)]
enum State {
    /// Collecting the header; `filled` bytes of it so far.
    Header {
        raw: [u8; FRAME_HEADER_BYTES],
        filled: usize,
    },
    /// Collecting a payload whose header was valid.
    Payload {
        kind: FrameKind,
        flags: u16,
        length: usize,
        crc32c: u32,
        payload: Vec<u8>,
    },
    /// A previous error; every later call returns it.
    Failed(FrameError),
}

/// Incremental decoder for one stream. Memory use is bounded by one frame: the payload
/// buffer grows as payload bytes arrive (doubling, at most twice what arrived), up to the
/// declared (already bounded) length, and ends exactly that long, with no spare capacity.
/// A decoder for a peer's stream ([`FrameDecoder::for_peer`]) believes a length sooner.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    /// Payload bytes after which the declared length is reserved at once.
    believe_after: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            state: State::Header {
                raw: [0; FRAME_HEADER_BYTES],
                filled: 0,
            },
            believe_after: usize::MAX,
        }
    }

    /// A decoder for a stream from an authenticated node, whose large frames are snapshot
    /// chunks: a payload is given `FRAME_PAYLOAD_EAGER_BYTES` at once, and its whole
    /// declared length as soon as more arrives. Each doubling was a reallocation into
    /// pages never touched before: 39 % of a move target's CPU went to faulting them in
    /// (README, *Performance*). A claim then reserves address space, not memory; pages are
    /// touched only as bytes arrive.
    pub fn for_peer() -> FrameDecoder {
        FrameDecoder {
            believe_after: FRAME_PAYLOAD_EAGER_BYTES,
            ..FrameDecoder::new()
        }
    }

    /// Whether the decoder sits exactly between two frames (a clean place to end a stream).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { filled: 0, .. })
    }

    /// Bytes held for the frame in progress (header and payload), for memory accounting.
    pub fn buffered_bytes(&self) -> usize {
        match &self.state {
            State::Header { filled, .. } => *filled,
            State::Payload { payload, .. } => FRAME_HEADER_BYTES + payload.capacity(),
            State::Failed(_) => 0,
        }
    }

    /// Consumes all of `input`, calling `emit` for each complete frame in order.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        mut emit: impl FnMut(Frame),
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Failed(e) => return Err(FrameError::Failed(Box::new(e.clone()))),
                State::Header { raw, filled } => {
                    let take = (FRAME_HEADER_BYTES - *filled).min(input.len());
                    raw[*filled..*filled + take].copy_from_slice(&input[..take]);
                    *filled += take;
                    input = &input[take..];
                    if *filled == FRAME_HEADER_BYTES {
                        match check_header(raw) {
                            Ok((kind, flags, length, crc32c)) => {
                                // Memory follows the bytes that arrived, not the length
                                // the header claims (below).
                                let first = match self.believe_after {
                                    usize::MAX => input.len(),
                                    eager => input.len().max(eager),
                                };
                                let payload = Vec::with_capacity(length.min(first));
                                self.state = State::Payload {
                                    kind,
                                    flags,
                                    length,
                                    crc32c,
                                    payload,
                                };
                                self.finish_if_complete(&mut emit)?;
                            }
                            Err(e) => return Err(self.fail(e)),
                        }
                    }
                }
                State::Payload {
                    length, payload, ..
                } => {
                    let take = (*length - payload.len()).min(input.len());
                    let needed = payload.len() + take;
                    if needed > payload.capacity() {
                        // Doubling, or the whole length once it is believed; never past
                        // it, so the payload leaves with no spare capacity (a snapshot
                        // chunk's becomes a vShard's memory as it is).
                        let grown = if needed > self.believe_after {
                            *length
                        } else {
                            needed.max(2 * payload.capacity()).min(*length)
                        };
                        payload.reserve_exact(grown - payload.len());
                    }
                    payload.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.finish_if_complete(&mut emit)?;
                }
            }
        }
        match &self.state {
            State::Failed(e) => Err(FrameError::Failed(Box::new(e.clone()))),
            _ => Ok(()),
        }
    }

    fn finish_if_complete(&mut self, emit: &mut impl FnMut(Frame)) -> Result<(), FrameError> {
        let State::Payload {
            kind,
            flags,
            length,
            crc32c,
            payload,
        } = &mut self.state
        else {
            return Ok(());
        };
        if payload.len() < *length {
            return Ok(());
        }
        let actual = crc32c::crc32c(payload);
        if actual != *crc32c {
            let expected = *crc32c;
            return Err(self.fail(FrameError::ChecksumMismatch { expected, actual }));
        }
        let frame = Frame {
            kind: *kind,
            flags: *flags,
            payload: std::mem::take(payload),
        };
        self.state = State::Header {
            raw: [0; FRAME_HEADER_BYTES],
            filled: 0,
        };
        emit(frame);
        Ok(())
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.state = State::Failed(error.clone());
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_pinned() {
        let mut out = Vec::new();
        encode_frame(FrameKind::Ping, 0x0102, b"abc", &mut out).unwrap();
        assert_eq!(&out[..4], b"NDBC");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], FrameKind::Ping as u8);
        assert_eq!(&out[6..8], &[0x02, 0x01]);
        assert_eq!(&out[8..12], &3u32.to_le_bytes());
        assert_eq!(&out[12..16], &crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&out[16..], b"abc");
    }

    #[test]
    fn frames_split_at_every_byte_decode_the_same() {
        let mut stream = Vec::new();
        encode_frame(FrameKind::Message, 7, b"hello", &mut stream).unwrap();
        encode_frame(FrameKind::RaftBatch, 0, b"", &mut stream).unwrap();
        encode_frame(FrameKind::Request, 1, &[9u8; 300], &mut stream).unwrap();
        for split in 0..=stream.len() {
            let mut decoder = FrameDecoder::new();
            let mut frames = Vec::new();
            decoder
                .decode(&stream[..split], |f| frames.push(f))
                .unwrap();
            decoder
                .decode(&stream[split..], |f| frames.push(f))
                .unwrap();
            assert_eq!(frames.len(), 3, "split at {split}");
            assert_eq!(frames[0].payload, b"hello");
            assert_eq!(frames[2].payload.len(), 300);
            assert!(decoder.is_idle());
        }
    }

    #[test]
    fn a_corrupt_byte_is_a_typed_error_and_the_stream_stays_failed() {
        let mut stream = Vec::new();
        encode_frame(FrameKind::Message, 0, b"payload", &mut stream).unwrap();
        stream[FRAME_HEADER_BYTES + 2] ^= 0x40;
        let mut decoder = FrameDecoder::new();
        let err = decoder
            .decode(&stream, |_| panic!("no frame from corrupt bytes"))
            .unwrap_err();
        assert!(matches!(err, FrameError::ChecksumMismatch { .. }));
        assert!(matches!(
            decoder.decode(b"x", |_| {}),
            Err(FrameError::Failed(_))
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_any_allocation() {
        let header = FrameHeader {
            magic: FRAME_MAGIC.to_le(),
            version: FRAME_VERSION,
            kind: FrameKind::BulkChunk as u8,
            flags: 0,
            length: u32::MAX.to_le(),
            crc32c: 0,
        };
        let err = FrameDecoder::new()
            .decode(bytemuck::bytes_of(&header), |_| {})
            .unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }));
        let big = vec![0u8; FRAME_PAYLOAD_MAX_BYTES + 1];
        assert!(encode_frame(FrameKind::BulkChunk, 0, &big, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_large_payload_arriving_in_pieces_is_reserved_once_and_exactly() {
        let payload: Vec<u8> = (0..(256 << 10) + 7).map(|i| i as u8).collect();
        let mut stream = Vec::new();
        encode_frame(FrameKind::BulkChunk, 0, &payload, &mut stream).unwrap();
        for (mut decoder, first) in [
            // A header claiming 256 KiB and a datagram's worth of it: a client's claim is
            // not believed at all, a peer's not yet.
            (FrameDecoder::new(), 1400 - FRAME_HEADER_BYTES),
            (FrameDecoder::for_peer(), FRAME_PAYLOAD_EAGER_BYTES),
        ] {
            decoder.decode(&stream[..1400], |_| unreachable!()).unwrap();
            assert_eq!(decoder.buffered_bytes(), FRAME_HEADER_BYTES + first);
            let mut frames = Vec::new();
            let mut most = 0;
            for piece in stream[1400..].chunks(1400) {
                decoder.decode(piece, |f| frames.push(f)).unwrap();
                most = most.max(decoder.buffered_bytes());
            }
            assert!(most <= FRAME_HEADER_BYTES + payload.len());
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].payload, payload);
            assert_eq!(
                frames[0].payload.capacity(),
                payload.len(),
                "no spare capacity: the payload is kept as it is"
            );
        }
    }
}
