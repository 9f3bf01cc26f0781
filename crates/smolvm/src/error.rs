//! The public error type. Each library area has its own `thiserror` enum; [`Error`] combines them into
//! the spec's error kinds and keeps the cause chain (`source()`), which the CLI prints once.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendError;
use crate::config::BackendKind;
use crate::exec::ExecError;
use crate::image::ImageError;
use crate::network::NetworkError;
use crate::snapshot::SnapshotError;
use crate::ssh::SshError;
use crate::state::StateError;
pub(crate) use crate::types::ValidationError;
use crate::types::VmState;

/// Every error smolvm returns, one variant per kind of the specification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid input (spec: `ValidationError`).
    #[error(transparent)]
    Validation(#[from] ValidationError),

    /// No VM with this id in the state store (spec: `VMNotFoundError`).
    #[error("VM {0:?} not found")]
    VmNotFound(String),

    /// A VM with this id already exists (spec: `VMAlreadyExistsError`).
    #[error("VM {0:?} already exists")]
    VmAlreadyExists(String),

    /// The operation is not allowed in the VM's current state.
    #[error("VM {vm_id:?} is {status}; cannot {operation}")]
    InvalidState {
        /// The VM.
        vm_id: String,
        /// Its current state.
        status: VmState,
        /// What was attempted.
        operation: &'static str,
    },

    /// The VM is in `error` (its VMM died, or an operation failed half-way): why, and what to do. Its
    /// disk and leases are intact, so `start` boots it again.
    #[error("{reason}; `smolvm start {vm_id}` restarts it from its disk, `smolvm delete {vm_id}` removes it")]
    VmFailed {
        /// The VM.
        vm_id: String,
        /// Why it is in `error` (the recorded reason).
        reason: String,
    },

    /// Something did not finish in time (spec: `OperationTimeoutError`).
    #[error("{operation} timed out after {:.1}s", limit.as_secs_f64())]
    OperationTimeout {
        /// What timed out.
        operation: String,
        /// The limit that was exceeded.
        limit: Duration,
    },

    /// Network setup or teardown failed (spec: `NetworkError`).
    #[error("network error")]
    Network(#[source] Box<NetworkError>),

    /// The VMM (QEMU or Firecracker) failed.
    #[error("backend error")]
    Backend(#[source] Box<BackendError>),

    /// The host lacks something the chosen backend needs (a VMM binary, a usable `/dev/kvm`, ...);
    /// every missing piece is named. Found before anything is created.
    #[error("the {backend} backend cannot run on this host: {}", .problems.join("; "))]
    Prerequisites {
        /// The backend that was chosen (by the config, the manager or auto-detection).
        backend: BackendKind,
        /// What is missing, and what to do about it.
        problems: Vec<String>,
    },

    /// The state store failed.
    #[error("state store error")]
    State(#[source] Box<StateError>),

    /// Building or finding an image failed.
    #[error("image error")]
    Image(#[source] Box<ImageError>),

    /// Running a command in the guest failed (not a non-zero exit: that is a normal `CommandResult`).
    #[error("command execution error")]
    Exec(#[source] Box<ExecError>),

    /// SSH to the guest failed (reported as the `exec` kind: it is the other way commands reach a
    /// guest).
    #[error("ssh error")]
    Ssh(#[source] Box<SshError>),

    /// A snapshot operation failed (not found, in use, damaged, incompatible, ...).
    #[error("snapshot error")]
    Snapshot(#[source] Box<SnapshotError>),

    /// A filesystem operation on a smolvm-owned path failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("create directory", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A short stable name of the kind, for `--json` output and the Python mapping.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Validation(_) => "validation",
            Error::VmNotFound(_) => "vm_not_found",
            Error::VmAlreadyExists(_) => "vm_already_exists",
            Error::InvalidState { .. } | Error::VmFailed { .. } => "invalid_state",
            Error::OperationTimeout { .. } => "operation_timeout",
            Error::Network(_) => "network",
            Error::Backend(_) => "backend",
            Error::Prerequisites { .. } => "prerequisites",
            Error::State(_) => "state",
            Error::Image(_) => "image",
            Error::Exec(_) | Error::Ssh(_) => "exec",
            Error::Snapshot(_) => "snapshot",
            Error::Io { .. } => "io",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_prints_its_limit_in_seconds_and_keeps_the_duration() {
        let e = Error::OperationTimeout {
            operation: "boot".into(),
            limit: Duration::from_millis(2500),
        };
        assert_eq!(e.to_string(), "boot timed out after 2.5s");
        assert_eq!(e.kind(), "operation_timeout");
    }

    #[test]
    fn area_errors_stay_typed_so_callers_match_instead_of_downcasting() {
        let e: Error = SshError::Timeout {
            operation: "ssh".into(),
            limit: Duration::from_secs(3),
            last_error: None,
        }
        .into();
        assert!(
            matches!(e, Error::OperationTimeout { limit, .. } if limit == Duration::from_secs(3))
        );
        let e: Error = ExecError::AgentDisconnected { source: None }.into();
        assert!(
            matches!(&e, Error::Exec(inner) if matches!(**inner, ExecError::AgentDisconnected { .. }))
        );
        assert_eq!(e.kind(), "exec");
    }

    #[test]
    fn missing_prerequisites_name_the_backend_and_every_problem() {
        let e = Error::Prerequisites {
            backend: BackendKind::Firecracker,
            problems: vec!["KVM is not usable".into(), "firecracker not found".into()],
        };
        assert_eq!(e.kind(), "prerequisites");
        assert_eq!(
            e.to_string(),
            "the firecracker backend cannot run on this host: KVM is not usable; firecracker not found"
        );
    }
}
