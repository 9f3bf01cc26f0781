//! Firecracker backend: a small blocking HTTP/1.1 client over the API Unix socket ([`http`]), typed
//! request bodies that follow Firecracker's Swagger definition v1.16.1 ([`api`]), the backend itself
//! ([`FirecrackerBackend`]) and the host side of the vsock handshake ([`connect_vsock`]).
//!
//! Firecracker cannot boot guests on machines without usable KVM, so this module's correctness rests on
//! an exact reading of the API and on tests against a fake API server.

pub(crate) mod api;
mod backend;
pub(crate) mod http;
pub(crate) mod jail;
pub(crate) mod snapshot;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use backend::{FirecrackerBackend, NET_IFACE_ID};
pub(crate) use http::{ApiClient, Method};

/// Errors of the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// Starting the Firecracker process failed.
    #[error("could not start {binary}")]
    Spawn {
        /// The binary that was run.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// Connecting to the API socket failed.
    #[error("cannot connect to the Firecracker API socket {}", socket.display())]
    Connect {
        /// The API socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// Sending a request or reading its response failed.
    #[error("{method} {path}: I/O error on the Firecracker API socket")]
    Io {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// No complete response arrived in time.
    #[error("{method} {path}: no complete response from Firecracker within {timeout:?}")]
    Timeout {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },

    /// The request path cannot be sent (not an absolute path of visible ASCII characters).
    #[error("invalid API request path {path:?}")]
    InvalidPath {
        /// The rejected path.
        path: String,
    },

    /// The response is not valid HTTP/1.1.
    #[error("{method} {path}: malformed HTTP response: {reason}")]
    MalformedResponse {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// What was wrong.
        reason: String,
    },

    /// Firecracker answered with a non-2xx status; `fault_message` is the API's own explanation (or the
    /// raw body when it sent no JSON fault).
    #[error("{method} {path} failed with HTTP {status}: {fault_message}")]
    Api {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The `fault_message` of the API's `Error` body.
        fault_message: String,
    },

    /// A request body could not be encoded as JSON (for example a path that is not UTF-8).
    #[error("cannot encode the body of {method} {path} as JSON")]
    Encode {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A response body could not be decoded.
    #[error("cannot decode the response to {method} {path}")]
    Decode {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A stale socket could not be removed (or is no socket).
    #[error(transparent)]
    RemoveSocket(#[from] crate::backend::RemoveSocketError),

    /// A Unix socket path is too long for `sun_path`.
    #[error(transparent)]
    SocketPathTooLong(#[from] crate::backend::SocketPathTooLong),

    /// The launch spec asks for user-mode networking, which only QEMU provides.
    #[error(
        "Firecracker supports only TAP networking; user-mode networking is a QEMU-only mode \
         (use the qemu backend or a TAP network)"
    )]
    UnsupportedNetwork,

    /// The launch spec's agent endpoint is not a Firecracker vsock.
    #[error("the agent endpoint for Firecracker must be a vsock Unix socket, got {got:?}")]
    WrongAgentEndpoint {
        /// The endpoint that was given.
        got: crate::backend::AgentEndpoint,
    },

    /// The kernel is not an uncompressed ELF vmlinux.
    #[error("kernel {} is not an ELF vmlinux (Firecracker cannot boot a compressed bzImage)", path.display())]
    KernelNotElf {
        /// The kernel path.
        path: PathBuf,
    },

    /// A file operation while preparing or cleaning up a VM failed.
    #[error("cannot {action} {}", path.display())]
    File {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The process did not open its API socket in time.
    #[error("the Firecracker API socket {} did not accept connections within {waited:?}", socket.display())]
    SocketNotReady {
        /// The API socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
    },

    /// The process exited before its API socket accepted connections.
    #[error("firecracker exited before its API socket accepted connections")]
    Exited,

    /// The jailer needs the VM's own user (smolvm runs the jailer only as root, with VMM users on).
    #[error(
        "a jailed Firecracker needs the VM's VMM user (smolvm must run as root with VMM users on)"
    )]
    JailNeedsUser,

    /// The VM id is not one the jailer accepts.
    #[error(
        "VM id {vm_id:?} cannot name a jail: the jailer takes 1-64 ASCII letters, digits and hyphens"
    )]
    JailId {
        /// The id.
        vm_id: String,
    },

    /// Launching failed; the process was killed and its sockets removed.
    #[error("launching VM {vm_id} with Firecracker failed; last lines of {}:\n{log_tail}", vmm_log.display())]
    Launch {
        /// The VM.
        vm_id: String,
        /// The VMM log file.
        vmm_log: PathBuf,
        /// Its last lines.
        log_tail: String,
        /// What failed.
        #[source]
        source: Box<FirecrackerError>,
    },
}
