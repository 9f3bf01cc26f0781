//! Errors of host networking. Each names the cause and, where there is one, the fix.

use crate::config::BackendKind;

/// Host networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A system tool is missing, could not be run, or failed.
    #[error(transparent)]
    Tool(#[from] crate::host::ToolError),

    /// The process may not create TAP devices or firewall rules.
    #[error(
        "creating TAP devices and firewall rules needs root or CAP_NET_ADMIN ({detail}): run as root, \
         grant the capability (setcap cap_net_admin+ep <binary>), or use user-mode networking \
         (network mode `user`, QEMU only)"
    )]
    NoPrivilege {
        /// What is missing.
        detail: String,
    },

    /// The TAP name is already used by a device smolvm did not create for this VM.
    #[error("network device {tap:?} already exists and is not smolvm's TAP for VM {vm_id:?} ({owner}): \
             remove it (ip link del dev {tap}) or run `smolvm cleanup` if it is a leftover")]
    TapTaken {
        /// The device name.
        tap: String,
        /// The VM that wanted it.
        vm_id: String,
        /// Who seems to own it.
        owner: String,
    },

    /// An egress policy change for a VM whose host network is not set up (stopped, or removed behind
    /// smolvm's back).
    #[error("VM {vm_id:?} has no host network rules to change (stopped?); its policy applies at the next start")]
    NotSetUp {
        /// The VM.
        vm_id: String,
    },

    /// The SSH host port is already in use.
    #[error(
        "port 127.0.0.1:{port} is already in use ({holder}): choose another port or stop its user"
    )]
    PortTaken {
        /// The port.
        port: u16,
        /// Who holds it.
        holder: String,
    },

    /// A name that goes into commands or rules broke its rule.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// The rule it broke.
        reason: String,
    },

    /// The output of a tool could not be parsed.
    #[error("cannot parse the output of `{command}`")]
    Parse {
        /// The command.
        command: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// Reading or writing a kernel setting failed.
    #[error("cannot {action} {path}")]
    Sysctl {
        /// "read" or "write".
        action: &'static str,
        /// The /proc/sys path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The requested network mode is impossible with this backend or on this host.
    #[error("network mode {mode} is not available with the {backend} backend: {reason}")]
    ModeUnavailable {
        /// The requested mode.
        mode: super::NetworkMode,
        /// The backend.
        backend: BackendKind,
        /// Why, and what to do.
        reason: String,
    },

    /// Setup failed and undoing the partial work failed too. The original error is the source.
    #[error(
        "network setup of VM {vm_id:?} failed and rollback left {leftover}; run `smolvm cleanup`"
    )]
    RollbackFailed {
        /// The VM.
        vm_id: String,
        /// What could not be removed.
        leftover: String,
        /// The error that made setup fail.
        #[source]
        source: Box<NetworkError>,
    },
}

impl NetworkError {
    /// True if the error means the caller lacks privileges (so user-mode networking is the way out).
    pub fn is_permission(&self) -> bool {
        match self {
            NetworkError::NoPrivilege { .. } => true,
            NetworkError::Tool(crate::host::ToolError::Failed { stderr, .. }) => {
                stderr.contains("Operation not permitted") || stderr.contains("Permission denied")
            }
            _ => false,
        }
    }
}

impl From<NetworkError> for crate::Error {
    fn from(e: NetworkError) -> Self {
        crate::Error::Network(Box::new(e))
    }
}
