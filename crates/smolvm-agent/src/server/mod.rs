//! Request server of the host channel. STUB: the exec issue replaces this module; it reads frames until
//! the host disconnects and ignores them.

/// What the server may ask of the rest of the agent.
pub struct Hooks {
    /// Powers the VM off cleanly (sync, unmount, power off); never returns.
    pub power_off: fn() -> !,
}

/// Serves one host connection until EOF (host disconnected).
pub fn serve(chan: std::fs::File, hooks: &Hooks) -> std::io::Result<()> {
    let _ = hooks.power_off;
    let mut chan = chan;
    loop {
        match smolvm_protocol::Frame::read_from(&mut chan) {
            Ok(_) => {}
            Err(smolvm_protocol::ProtocolError::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Ok(())
            }
            Err(smolvm_protocol::ProtocolError::Io(e)) => return Err(e),
            // Unknown or malformed frames are skipped by the stub.
            Err(_) => {}
        }
    }
}
