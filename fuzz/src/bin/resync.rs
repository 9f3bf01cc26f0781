//! Fuzz target `resync`: a stream with stale bytes and markers through the resynchronising decoder, in chunks of `data[0]` bytes.
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some((chunk, rest)) = data.split_first() {
            smolvm_protocol::fuzzing::decode_resync(rest, usize::from(*chunk));
        }
    });
}
