//! Entry points for fuzzers and the randomized tests: each takes arbitrary bytes and must return without
//! panicking, whatever they are. The AFL++ targets in `fuzz/` at the top of the repository wrap them
//! (`scripts/fuzz.sh`); `tests/hostile_input.rs` drives them with random and mutated frames in CI.

use crate::frame::{Frame, ProtocolError};
use crate::request::{Reply, Request};
use crate::sync::Decoder;

/// Decodes `data` as a stream of frames, parsing each both as a request and as a reply, until the bytes
/// run out or the stream breaks. Returns how many frames decoded.
pub fn decode_stream(data: &[u8]) -> usize {
    let mut r = data;
    let mut frames = 0;
    loop {
        match Frame::read_from(&mut r) {
            Ok(frame) => {
                frames += 1;
                // Whatever parses must encode again, to a frame that parses back to the same value.
                if let Ok(req) = Request::from_frame(frame.clone()) {
                    round_trip(&req, req.to_frame(frame.request_id), Request::from_frame);
                }
                if let Ok(reply) = Reply::from_frame(frame.clone()) {
                    round_trip(&reply, reply.to_frame(frame.request_id), Reply::from_frame);
                }
            }
            Err(e) if e.is_fatal() => return frames,
            Err(_) => {}
        }
    }
}

/// Panics (a finding for the fuzzer) unless `encoded`, the encoding of `value`, parses back to it. The
/// only encoding failure allowed is a payload beyond the limit: a parsed message may re-encode longer
/// than it came (`1e2` read as a number is written as `100.0`).
fn round_trip<T: PartialEq + std::fmt::Debug>(
    value: &T,
    encoded: Result<Frame, ProtocolError>,
    parse: impl Fn(Frame) -> Result<T, ProtocolError>,
) {
    match encoded {
        Ok(f) => {
            let id = f.request_id;
            let back = parse(f)
                .unwrap_or_else(|e| panic!("{value:?} encoded to an unparsable frame: {e}"));
            assert_eq!(&back, value, "request {id} changed across encode + parse");
        }
        Err(ProtocolError::PayloadTooLarge(_)) => {}
        Err(e) => panic!("{value:?} parsed but does not encode again: {e}"),
    }
}

/// Feeds `data` to a resynchronising [`Decoder`] in chunks of `chunk` bytes (at least 1), hunting after
/// every error as the agent does. Returns how many frames decoded.
pub fn decode_resync(data: &[u8], chunk: usize) -> usize {
    let mut d = Decoder::hunting();
    let mut frames = 0;
    for c in data.chunks(chunk.max(1)) {
        d.push(c);
        while let Some(r) = d.next_frame() {
            if let Ok(frame) = r {
                frames += 1;
                let _ = Request::from_frame(frame);
            }
        }
    }
    frames
}

/// The request id fuzz inputs use for "the request the host just sent": a harness whose host side picks
/// its ids at random replaces it with the real one (see [`retarget`]), so that the fuzzer can reach the
/// code that handles replies to a live request.
pub const PLACEHOLDER_ID: u32 = 1;

/// Copies `data` (a stream an agent sends), replacing the request id [`PLACEHOLDER_ID`] by `real` in
/// every frame header found by walking the length fields from the start. Where a length does not fit
/// the rest, the rest is copied as it is (the walk cannot know the boundaries of garbage).
pub fn retarget(data: &[u8], real: u32) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut pos = 0usize;
    while out.len().saturating_sub(pos) >= crate::limits::HEADER_LEN {
        let h = &out[pos..];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < crate::limits::HEADER_LEN - 4 || len > out.len() - pos - 4 {
            break;
        }
        let id = pos + 5..pos + 9;
        if out[id.clone()] == PLACEHOLDER_ID.to_be_bytes() {
            out[id].copy_from_slice(&real.to_be_bytes());
        }
        pos += 4 + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameType;

    #[test]
    fn retarget_rewrites_placeholder_ids_in_walked_headers_only() {
        let a = Frame::new(FrameType::Stdout, PLACEHOLDER_ID, b"x".to_vec())
            .encode()
            .unwrap();
        let b = Frame::new(FrameType::Stdout, 7, vec![0, 0, 0, 1])
            .encode()
            .unwrap();
        let mut data = [a.clone(), b.clone(), a.clone()].concat();
        data.extend([0, 0, 0, 99, 1, 0, 0, 0, 1]); // a length beyond the end: copied as is
        let out = retarget(&data, 0xABCD_EF01);
        let want_a = Frame::new(FrameType::Stdout, 0xABCD_EF01, b"x".to_vec())
            .encode()
            .unwrap();
        let mut want = [want_a.clone(), b, want_a].concat();
        want.extend([0, 0, 0, 99, 1, 0, 0, 0, 1]);
        assert_eq!(out, want);
        assert_eq!(retarget(&[1, 2, 3], 5), [1, 2, 3]);
    }
}

/// A tiny deterministic generator (xorshift64) for the seeded randomized tests of every crate, so a
/// failing seed reproduces. The seed must not be 0.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Every file of the committed corpus of fuzz target `target` (`fuzz/corpus/<target>` of this
/// repository), sorted by name, for the tests that replay what the coverage-guided fuzzers found.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}
