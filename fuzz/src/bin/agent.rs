//! Fuzz target `agent`: the agent client's exec, output stream, download, env and upload paths against a hostile agent's replies.
//! Built and run by `scripts/fuzz.sh` (`cargo afl`); a plain run reads one input from stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        smolvm::internals::fuzzing::agent_replies(data);
    });
}
