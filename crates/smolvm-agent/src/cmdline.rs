//! The kernel command line: the standard parameters the init stages honour (`init=`, `root=`, ...) and
//! smolvm's own `smolvm.*` parameters. The format is the protocol crate's [`BootParams`] (the table of
//! parameters is in `smolvm_protocol::boot`), shared with the host that renders it, so both sides read
//! one definition. A malformed `smolvm.*` value is reported on the console and ignored; it never stops
//! the boot.

pub use smolvm_protocol::boot::{valid_hostname, BootParams, PowerMode};

/// Parses `/proc/cmdline` contents.
pub fn parse(line: &str) -> BootParams {
    BootParams::parse(line)
}
