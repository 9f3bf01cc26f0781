//! The public error type. Each library area has its own `thiserror` enum; [`Error`] combines them into
//! the spec's error kinds and keeps the cause chain (`source()`), which the CLI prints once.

use std::path::PathBuf;

use crate::info::VmState;

/// A config or argument value broke a rule. Names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {rule}")]
pub struct ValidationError {
    /// The field (spec name) that was rejected.
    pub field: String,
    /// What rule it broke, with the offending value.
    pub rule: String,
}

impl ValidationError {
    /// A validation error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Every error smolvm returns, one variant per kind of the specification.
#[derive(Debug, thiserror::Error)]
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
    #[error("{operation} timed out after {seconds:.1}s")]
    OperationTimeout {
        /// What timed out.
        operation: String,
        /// The limit that was exceeded.
        seconds: f64,
    },

    /// Network setup or teardown failed (spec: `NetworkError`).
    #[error("network error")]
    Network(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The VMM (QEMU or Firecracker) failed.
    #[error("backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The host lacks something a VM needs.
    #[error("host prerequisites not met: {}", .0.join("; "))]
    Prerequisites(Vec<String>),

    /// The state store failed.
    #[error("state store error")]
    State(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Building or finding an image failed.
    #[error("image error")]
    Image(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Running a command in the guest failed (not a non-zero exit: that is a normal `CommandResult`).
    #[error("command execution error")]
    Exec(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A snapshot operation failed (not found, in use, damaged, incompatible, ...).
    #[error("snapshot error")]
    Snapshot(#[source] Box<dyn std::error::Error + Send + Sync>),

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
            Error::Prerequisites(_) => "prerequisites",
            Error::State(_) => "state",
            Error::Image(_) => "image",
            Error::Exec(_) => "exec",
            Error::Snapshot(_) => "snapshot",
            Error::Io { .. } => "io",
        }
    }
}
