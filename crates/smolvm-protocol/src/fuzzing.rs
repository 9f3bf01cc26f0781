//! Entry points for fuzzers and the randomized tests: each takes arbitrary bytes and must return without
//! panicking, whatever they are. `fuzz/` wraps them for cargo-fuzz; `tests/hostile_input.rs` drives
//! them with random and mutated frames on stable Rust.

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
