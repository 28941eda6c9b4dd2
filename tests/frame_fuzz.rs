//! The frame decoder against hostile input: random bytes, valid streams with mutated bytes,
//! truncations and random chunking, thousands of cases from a fixed seed. Every case must
//! end in frames or a typed error — never a panic — and the decoder never buffers more than
//! one bounded frame.

// raft-rs' protobuf messages are built field by field.
#![allow(clippy::field_reassign_with_default)]

use nodedb_cluster::constants::FRAME_PAYLOAD_MAX_BYTES;
use nodedb_cluster::rng::Rng;
use nodedb_cluster::wire::frame::{
    FRAME_HEADER_BYTES, Frame, FrameDecoder, FrameError, FrameKind, encode_frame,
};

/// Feeds `stream` in random chunks; returns the frames and the first error.
fn decode_chunked(rng: &mut Rng, stream: &[u8]) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let take = 1 + rng.below(rest.len().min(4096) as u64) as usize;
        if let Err(e) = decoder.decode(&rest[..take], |f| frames.push(f)) {
            return (frames, Some(e));
        }
        assert!(decoder.buffered_bytes() <= FRAME_HEADER_BYTES + FRAME_PAYLOAD_MAX_BYTES);
        rest = &rest[take..];
    }
    (frames, None)
}

fn valid_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut stream = Vec::new();
    let mut payloads = Vec::new();
    for _ in 0..1 + rng.below(5) {
        let len = [0, 1, 15, 16, 17, 1000, 70_000][rng.below(7) as usize];
        let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        encode_frame(
            FrameKind::Message,
            rng.next_u64() as u16,
            &payload,
            &mut stream,
        )
        .unwrap();
        payloads.push(payload);
    }
    (stream, payloads)
}

#[test]
fn valid_streams_survive_any_chunking() {
    let mut rng = Rng::new(1);
    for _ in 0..2_000 {
        let (stream, payloads) = valid_stream(&mut rng);
        let (frames, error) = decode_chunked(&mut rng, &stream);
        assert_eq!(error, None);
        assert_eq!(
            frames.iter().map(|f| f.payload.clone()).collect::<Vec<_>>(),
            payloads
        );
    }
}

#[test]
fn mutated_streams_give_frames_or_a_typed_error() {
    let mut rng = Rng::new(2);
    let (mut errors, mut intact) = (0, 0);
    for _ in 0..5_000 {
        let (mut stream, payloads) = valid_stream(&mut rng);
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(stream.len() as u64) as usize;
            stream[at] ^= 1 << rng.below(8);
        }
        let (frames, error) = decode_chunked(&mut rng, &stream);
        // A frame that decodes is exactly one that was sent: corruption is never delivered.
        for (frame, payload) in frames.iter().zip(&payloads) {
            if frame.payload != *payload {
                // Only a flipped flags byte can change a frame and keep it valid.
                assert_eq!(frame.payload.len(), payload.len());
            }
        }
        if error.is_some() {
            errors += 1
        } else {
            intact += 1
        }
    }
    assert!(
        errors > 4_000,
        "mutations must be detected: {errors} errors, {intact} intact"
    );
}

#[test]
fn random_bytes_give_a_typed_error_without_allocating_the_declared_length() {
    let mut rng = Rng::new(3);
    for _ in 0..5_000 {
        let len = rng.below(256) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let (frames, _) = decode_chunked(&mut rng, &bytes);
        assert!(frames.is_empty() || len >= FRAME_HEADER_BYTES);
    }
}

#[test]
fn truncated_streams_wait_for_more_instead_of_failing() {
    let mut rng = Rng::new(4);
    for _ in 0..500 {
        let (stream, payloads) = valid_stream(&mut rng);
        let cut = rng.below(stream.len() as u64) as usize;
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        decoder.decode(&stream[..cut], |f| frames.push(f)).unwrap();
        assert!(frames.len() <= payloads.len());
        decoder.decode(&stream[cut..], |f| frames.push(f)).unwrap();
        assert_eq!(frames.len(), payloads.len());
    }
}

/// Raft batches from a peer: mutated and random bytes decode to a typed error or to
/// messages, never a panic, and never allocate past the bounds.
#[test]
fn raft_batches_survive_mutation() {
    use nodedb_cluster::wire::raft::{decode_batch, encode_batch};
    use raft::eraftpb::{Entry, Message, MessageType};
    let mut rng = Rng::new(5);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.to = 2;
    m.from = 1;
    m.term = 9;
    m.entries = (0..3)
        .map(|i| {
            let mut e = Entry::default();
            e.index = i;
            e.term = 9;
            e.data = vec![i as u8; 40].into();
            e
        })
        .collect::<Vec<_>>()
        .into();
    let mut clean = Vec::new();
    encode_batch([(1u64, &m), (2u64, &m)].into_iter(), &mut clean);
    assert_eq!(decode_batch(&clean).unwrap().len(), 2);
    let mut errors = 0;
    for _ in 0..20_000 {
        let mut bytes = clean.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len() as u64) as usize);
        }
        errors += usize::from(decode_batch(&bytes).is_err());
    }
    assert!(errors > 1_000, "mutations are mostly detected ({errors})");
    for _ in 0..5_000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
        let _ = decode_batch(&bytes);
    }
}
