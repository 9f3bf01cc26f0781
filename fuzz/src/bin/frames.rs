//! Fuzz target `frames`: agent frames through the stream decoder and both message parsers (length limits, JSON, re-encoding).
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        smolvm_protocol::fuzzing::decode_stream(data);
    });
}
