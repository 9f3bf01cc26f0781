//! smolvm guest agent. Runs as `/init` (PID 1) inside the default guest image.
//! The image issue fills in the PID 1 duties; the exec issue adds the request server.

// The PID 1 code (image issue) calls `server::serve` once it has sent Ready.
#[allow(dead_code)]
mod server;

fn main() {
    eprintln!(
        "smolvm-agent (protocol v{}): not yet implemented",
        smolvm_protocol::PROTOCOL_VERSION
    );
    std::process::exit(1);
}
