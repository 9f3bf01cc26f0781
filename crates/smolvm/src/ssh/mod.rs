//! SSH access to guests with the system `ssh` client: a per-data-dir client key, a per-VM host key
//! generated on the host and written into the VM's disk, a per-VM known_hosts file used with
//! `StrictHostKeyChecking=yes` (no trust on first use, never disabled checking), argv builders for
//! `run` over SSH and `smolvm ssh`, copy-paste commands (`get_ssh_commands`) and `wait_for_ssh`.
//!
//! Every external tool gets an argv vector; strings meant for a shell (the remote command, the
//! copy-paste commands) are built word by word with a tested POSIX quoting function.

mod command;
mod disk;
mod keys;
mod known_hosts;
pub(crate) mod quote;
mod wait;

pub use command::{get_ssh_commands, ssh_argv, SshTarget};
pub(crate) use disk::{
    install_file_into_disk, install_host_key_into_disk, paths_in_disk, read_file_from_disk,
};
pub use keys::{ensure_client_key, ensure_host_key, HostKeyFormat};
pub(crate) use keys::{ClientKey, HostKey};
pub use known_hosts::{known_hosts_patterns, write_known_hosts};
pub use wait::{run_ssh, wait_for_ssh};

use std::path::{Path, PathBuf};

/// SSH key handling, disk injection or an SSH connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A tool is missing, could not be run, or failed.
    #[error(transparent)]
    Tool(#[from] crate::host::ToolError),

    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// An argument broke a rule (it would be unsafe or ambiguous in a command).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
        /// The rule.
        reason: &'static str,
    },

    /// Writing a file into a disk image did not produce the expected file.
    #[error("could not write {guest_path} into {}: {detail}", disk.display())]
    DiskWrite {
        /// The disk image.
        disk: PathBuf,
        /// The path inside the guest filesystem.
        guest_path: String,
        /// What debugfs reported.
        detail: String,
    },

    /// The guest's SSH server did not answer in time.
    #[error("{operation} timed out after {:.1}s", limit.as_secs_f64())]
    Timeout {
        /// What was waited for.
        operation: String,
        /// The limit.
        limit: std::time::Duration,
        /// The last failure seen while waiting, if any.
        #[source]
        last_error: Option<Box<SshError>>,
    },
}

impl From<SshError> for crate::Error {
    fn from(e: SshError) -> Self {
        match e {
            SshError::Timeout {
                operation, limit, ..
            } => crate::Error::OperationTimeout { operation, limit },
            other => crate::Error::Ssh(Box::new(other)),
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshError {
    let path = path.to_path_buf();
    move |source| SshError::Io {
        action,
        path,
        source,
    }
}

/// Runs a tool (argv only) and returns its stdout; a non-zero exit carries stderr.
fn run_tool(
    program: &str,
    args: &[&str],
    cwd: Option<&Path>,
    stdin: Option<&str>,
) -> Result<Vec<u8>, SshError> {
    Ok(crate::host::tools::run(program, args, cwd, stdin)?)
}

fn path_str<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, SshError> {
    p.to_str().ok_or_else(|| SshError::Invalid {
        what,
        value: p.display().to_string(),
        reason: "must be valid UTF-8",
    })
}
