//! Fuzz target `console`: guest console output through the console keeper (rotation at the cap) and the console log tail readers.
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        smolvm::internals::fuzzing::console(data);
    });
}
