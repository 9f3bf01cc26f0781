//! Running commands, moving files and managing environment variables in a guest through its smolvm
//! agent (the fast path; SSH is the fallback for images without one).
//!
//! [`AgentClient`] speaks [`smolvm_protocol`] over the VM's agent channel: a Unix socket wired to a
//! virtio-serial port (QEMU) or Firecracker's vsock proxy socket. One connection carries many requests
//! at once: a reader thread hands each frame to the waiting call by request id, so the client can be
//! shared by several threads. Every wait is bounded; a guest that stops, reboots or loses its agent
//! yields [`ExecError::AgentDisconnected`], never a hang.

mod client;
mod files;
mod greeting;
mod result;
mod run;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use client::AgentClient;
pub(crate) use result::CommandOutput;
pub use result::CommandResult;
pub(crate) use smolvm_protocol::limits::MAX_OUTPUT_LEN;
pub(crate) use smolvm_protocol::{Command, ErrorKind, ProtocolError};

use crate::error::ValidationError;

/// The timeout the spec's `run` uses when the caller gives none (for callers that mirror it).
pub(crate) const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A command to run in the guest, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// What to run: an argv, or a shell string run as `/bin/sh -lc <string>` (login profile applies).
    pub command: Command,
    /// Extra environment variables for this command only.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute guest path); the agent's (`/`) if `None`.
    pub cwd: Option<String>,
    /// The guest kills the command's whole process group after this long, and the call fails with
    /// [`ExecError::Timeout`]. `None`: no limit (the client still checks that the agent is alive).
    pub timeout: Option<Duration>,
    /// Bytes fed to the command's stdin (then EOF); `None`: stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    /// Runs `command` through `/bin/sh -lc`, as the spec's `run` does.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::new(Command::Shell(command.into()))
    }

    /// Runs a program directly; `argv[0]` is looked up in the guest's `PATH`.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    fn new(command: Command) -> Self {
        ExecRequest {
            command,
            env: BTreeMap::new(),
            cwd: None,
            timeout: None,
            stdin: None,
        }
    }

    /// Adds an environment variable for this command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Sets (or clears) the timeout.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Feeds these bytes to stdin.
    pub fn stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }
}

/// Errors talking to the guest agent. A command that runs and exits non-zero is not an error: it is a
/// [`CommandResult`] with that exit code.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The agent's socket could not be connected.
    #[error("cannot connect to the agent socket {}", path.display())]
    Connect {
        /// The host socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Firecracker's vsock proxy did not accept `CONNECT <port>`.
    #[error("the vsock proxy {} refused port {port} (answer {response:?})", path.display())]
    VsockHandshake {
        /// The vsock device's Unix socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// What it answered instead of `OK <n>`.
        response: String,
        /// The read error, if the proxy closed or reset the connection instead.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The agent speaks another protocol version than this library.
    #[error(
        "the guest agent {agent_version} speaks protocol v{agent}, this library v{host}: \
         rebuild the image with a matching agent"
    )]
    VersionMismatch {
        /// The agent's protocol version.
        agent: u32,
        /// Ours.
        host: u32,
        /// The agent's crate version.
        agent_version: String,
    },
    /// The connection ended: the guest stopped or rebooted, or the agent restarted. Requests in flight
    /// are lost; reconnect to go on.
    #[error("the guest agent disconnected (guest stopped or rebooted, or agent restarted)")]
    AgentDisconnected {
        /// How the connection ended, if known.
        #[source]
        source: Option<Arc<ProtocolError>>,
    },
    /// Something did not finish in time (a command's own timeout, or an unresponsive agent).
    #[error("{operation} timed out after {:.1}s", after.as_secs_f64())]
    Timeout {
        /// What timed out.
        operation: String,
        /// The limit.
        after: Duration,
    },
    /// The request breaks a protocol rule (empty argv, NUL byte, bad env key, a limit).
    #[error("invalid request")]
    InvalidRequest(#[source] ProtocolError),
    /// The agent refused or failed the request.
    #[error("the guest agent failed the request ({kind:?}): {message}")]
    Agent {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's explanation.
        message: String,
    },
    /// The agent sent something that does not fit the conversation.
    #[error("protocol error talking to the guest agent")]
    Protocol(#[source] ProtocolError),
    /// A command printed more than [`MAX_OUTPUT_LEN`] bytes (stdout + stderr) for a `CommandResult`;
    /// the command was cancelled. Use the streaming variant for unbounded output.
    #[error("command output exceeds {limit} bytes (use streaming for more)")]
    OutputTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A host-side file operation of a transfer failed.
    #[error("{action} {}", path.display())]
    LocalIo {
        /// What was being done.
        action: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    fn disconnected(source: Option<Arc<ProtocolError>>) -> Self {
        ExecError::AgentDisconnected { source }
    }
}

impl From<ExecError> for crate::Error {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Timeout { operation, after } => crate::Error::OperationTimeout {
                operation,
                seconds: after.as_secs_f64(),
            },
            ExecError::InvalidRequest(ProtocolError::Invalid { what, reason }) => {
                crate::Error::Validation(ValidationError::new(what, reason))
            }
            ExecError::LocalIo {
                action,
                path,
                source,
            } => crate::Error::Io {
                action,
                path,
                source,
            },
            other => crate::Error::Exec(Box::new(other)),
        }
    }
}
