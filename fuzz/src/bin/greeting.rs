//! Fuzz target `greeting`: the host's greeting against a stream from the agent (stale bytes, `Ready` with boot stamps and versions).
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        smolvm_channel::fuzzing::greeting(data);
    });
}
