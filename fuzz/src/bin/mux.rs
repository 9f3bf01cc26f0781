//! Fuzz target `mux`: the channel owner forwarding what the agent sends to one client.
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        smolvm_channel::fuzzing::mux_upstream(data);
    });
}
