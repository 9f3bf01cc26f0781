//! The greeting (`SYNC` + `Hello{nonce}` out, skip to `SYNC` + our `Ready`): implemented once in
//! [`smolvm_channel::greeting`], shared with the channel owner; here only its errors become
//! [`ExecError`]s.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use smolvm_channel::greeting::GreetError;
use smolvm_protocol::{Decoder, ProtocolError, Ready, PROTOCOL_VERSION};

#[cfg(test)]
pub(crate) use smolvm_channel::greeting::MAX_STALE_BYTES;

use super::client::timeout_error;
use super::ExecError;

/// Greets the agent and waits for its `Ready` with our nonce; returns it and the decoder, which may
/// already hold the first frames after it.
pub(super) fn handshake(
    stream: &UnixStream,
    timeout: Duration,
) -> Result<(Ready, Decoder), ExecError> {
    smolvm_channel::greeting::handshake(stream, timeout).map_err(|e| match e {
        GreetError::Timeout(_) => {
            timeout_error("waiting for the guest agent's ready message", timeout)
        }
        GreetError::Disconnected(io) => {
            ExecError::disconnected(Some(Arc::new(ProtocolError::Io(io))))
        }
        GreetError::VersionMismatch(r) => ExecError::VersionMismatch {
            agent: r.protocol_version,
            host: PROTOCOL_VERSION,
            agent_version: r.agent_version,
        },
        GreetError::Protocol(p) => ExecError::Protocol(p),
    })
}
