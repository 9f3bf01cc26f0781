//! `smolvm-channel`: the per-VM owner of a QEMU VM's agent channel (see the library docs). Started by
//! the smolvm library, not by hand.

use std::process::ExitCode;

use smolvm_channel::mux::ServeEnd;
use smolvm_channel::owner::{run, OwnerArgs};

fn main() -> ExitCode {
    let args = match OwnerArgs::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("smolvm-channel: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(ServeEnd::UpstreamClosed) => ExitCode::SUCCESS,
        Ok(end) => {
            eprintln!("smolvm-channel: {}", chain(&end));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("smolvm-channel: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
