//! The owner of a QEMU VM's agent channel, seen from the library: where its binary comes from, how it
//! is started and stopped, and where its PID and socket live.
//!
//! QEMU's virtio-serial chardev accepts one connection at a time. So every QEMU VM that runs the agent
//! gets one owner process (`smolvm-channel`, see the crate of that name) that holds that connection
//! and serves any number of clients on `<socket_dir>/<vm_id>.chan`; that path is what the state store
//! records as the VM's agent socket, so every client (CLI, library, Python, another process) goes
//! through it. The owner is a detached process of its own (its own session, stdio to
//! `<vm_dir>/channel.log`): it outlives the process that started the VM, and it exits when the VMM's
//! side of the channel closes or the VMM is gone. Its PID and start time are kept in
//! `<vm_dir>/channel.pid`, so `stop`/`delete`/`cleanup` kill exactly it and `reconcile` (or the next
//! client) can start a new one if it died. Firecracker needs none: its vsock takes many connections.
//!
//! The binary is embedded in the library by `build.rs` (like the guest agent) and written once to
//! `<data_dir>/bin/<digest>/smolvm-channel`; `SMOLVM_CHANNEL_BIN` names another one. Without either
//! (a build with `SMOLVM_EMBED_AGENT=0`), clients connect to QEMU's socket directly, one at a time.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{spawn_detached, ProcessIdentity};

/// Environment variable naming the channel owner binary (instead of the embedded one).
pub(crate) const CHANNEL_ENV: &str = "SMOLVM_CHANNEL_BIN";
/// File name of the channel owner binary.
pub(crate) const CHANNEL_NAME: &str = "smolvm-channel";
/// Set to `0` in the environment of the process that starts a VM to run it without a channel owner
/// (clients then take QEMU's socket one at a time, as before owners existed): for the benchmark's
/// comparison and for diagnosis.
pub const OWNER_ENV: &str = "SMOLVM_CHANNEL_OWNER";
/// Suffix of the clients' socket in the socket directory (no longer than QEMU's `.agent`, so a socket
/// directory that fits QEMU's sockets fits this one).
pub(crate) const SOCKET_SUFFIX: &str = ".chan";

#[cfg(smolvm_embedded_channel)]
const EMBEDDED: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/smolvm-channel")));
#[cfg(not(smolvm_embedded_channel))]
const EMBEDDED: Option<&[u8]> = None;

/// Errors starting or finding the channel owner.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// `SMOLVM_CHANNEL_BIN` names no file.
    #[error("{CHANNEL_ENV} names {}, which does not exist", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// Writing the embedded binary or the PID file failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The owner process could not be started.
    #[error("cannot start the channel owner {}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// False if [`OWNER_ENV`] turns owners off for the VMs this process starts.
pub(crate) fn owner_enabled() -> bool {
    !matches!(std::env::var_os(OWNER_ENV), Some(v) if v == "0")
}

/// The owner binary to run: `SMOLVM_CHANNEL_BIN`, else the embedded one written under `bin_dir`;
/// `None` if this build embeds none.
pub(crate) fn binary(bin_dir: &Path) -> Result<Option<PathBuf>, ChannelError> {
    if let Some(path) = std::env::var_os(CHANNEL_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(ChannelError::Missing { path });
        }
        return Ok(Some(path));
    }
    let Some(bytes) = EMBEDDED else {
        return Ok(None);
    };
    crate::image::materialize_file(bytes, bin_dir, CHANNEL_NAME, Some(0o755))
        .map(Some)
        .map_err(|(path, source)| ChannelError::Io {
            action: "write the channel owner",
            path,
            source,
        })
}

/// The clients' socket of VM `vm_id` whose sockets live in `socket_dir`.
pub(crate) fn socket_path(socket_dir: &Path, vm_id: &str) -> PathBuf {
    socket_dir.join(format!("{vm_id}{SOCKET_SUFFIX}"))
}

/// Where the owner's PID and start time are kept.
pub(crate) fn pid_file(vm_dir: &Path) -> PathBuf {
    vm_dir.join("channel.pid")
}

/// One owner to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerSpec {
    /// The `smolvm-channel` binary.
    pub binary: PathBuf,
    /// QEMU's agent socket.
    pub upstream: PathBuf,
    /// The clients' socket.
    pub listen: PathBuf,
    /// The VMM it serves (the owner exits when it is gone).
    pub vmm: ProcessIdentity,
    /// How long the owner waits for the agent's first `Ready`.
    pub ready_timeout: Duration,
}

impl OwnerSpec {
    /// The owner's argv (after the program).
    pub(crate) fn args(&self) -> Vec<OsString> {
        vec![
            "--upstream".into(),
            self.upstream.clone().into(),
            "--listen".into(),
            self.listen.clone().into(),
            "--ready-timeout".into(),
            format!("{:.3}", self.ready_timeout.as_secs_f64()).into(),
            "--vmm".into(),
            format!("{}:{}", self.vmm.pid, self.vmm.start_time).into(),
        ]
    }
}

/// How often a start retries an owner binary that is briefly "busy" (20 ms apart: 2 s in all).
const ETXTBSY_RETRIES: u32 = 100;

/// Starts the owner detached (stdio to `log`) and records it in `pid_file`.
pub(crate) fn spawn(
    spec: &OwnerSpec,
    pid_file: &Path,
    log: &Path,
) -> Result<ProcessIdentity, ChannelError> {
    // "Text file busy": another thread of this process forked (a VMM, a console keeper) while the
    // embedded binary was being written, and the child still holds the write descriptor until it
    // execs or exits. That lasts milliseconds: retry for a while instead of failing the start.
    let mut tries = 0;
    let owner = loop {
        let mut cmd = Command::new(&spec.binary);
        cmd.args(spec.args());
        match spawn_detached(cmd, log) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < ETXTBSY_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => {
                break other.map_err(|source| ChannelError::Spawn {
                    binary: spec.binary.clone(),
                    source,
                })?
            }
        }
    };
    let record = format!("{} {}\n", owner.pid, owner.start_time);
    if let Err(source) = fs::write(pid_file, record) {
        owner.kill();
        return Err(ChannelError::Io {
            action: "write",
            path: pid_file.to_path_buf(),
            source,
        });
    }
    Ok(owner)
}

/// The owner recorded in `pid_file`, if the file is there and well-formed (alive or not).
pub(crate) fn recorded(pid_file: &Path) -> Option<ProcessIdentity> {
    let text = fs::read_to_string(pid_file).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    Some(ProcessIdentity {
        pid: pid.parse().ok()?,
        start_time: start.parse().ok()?,
    })
}

/// Kills the recorded owner (only that process: PID and start time must match), removes its PID file
/// and its socket `listen` (if it is a socket). Idempotent.
pub(crate) fn stop(pid_file: &Path, listen: &Path) {
    if let Some(owner) = recorded(pid_file) {
        if owner.is_alive() {
            owner.kill();
        }
    }
    let _ = fs::remove_file(pid_file);
    if fs::symlink_metadata(listen).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(listen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn owner_argv_names_both_sockets_and_the_vmm() {
        let spec = OwnerSpec {
            binary: "/b/smolvm-channel".into(),
            upstream: "/s/vm1.agent".into(),
            listen: "/s/vm1.chan".into(),
            vmm: ProcessIdentity {
                pid: 42,
                start_time: 777,
            },
            ready_timeout: Duration::from_millis(1500),
        };
        let args: Vec<String> = spec
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--upstream",
                "/s/vm1.agent",
                "--listen",
                "/s/vm1.chan",
                "--ready-timeout",
                "1.500",
                "--vmm",
                "42:777"
            ]
        );
        // The owner's own parser reads exactly this.
        let parsed = smolvm_channel::owner::OwnerArgs::parse(spec.args()).unwrap();
        assert_eq!(parsed.vmm, Some((42, 777)));
        assert_eq!(parsed.listen, spec.listen);
    }

    #[test]
    fn stop_kills_only_the_recorded_process_and_removes_its_files() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = pid_file(d.path());
        let listen = socket_path(d.path(), "vm1");
        assert_eq!(listen, d.path().join("vm1.chan"));
        drop(UnixListener::bind(&listen).unwrap());
        let child = spawn_detached(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            &d.path().join("log"),
        )
        .unwrap();
        fs::write(&pid_file, format!("{} {}\n", child.pid, child.start_time)).unwrap();
        assert_eq!(recorded(&pid_file), Some(child));
        stop(&pid_file, &listen);
        assert!(!child.is_alive());
        assert!(!pid_file.exists() && !listen.exists());
        // A stale record (same pid, other start time) is never killed.
        let other = spawn_detached(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            &d.path().join("log"),
        )
        .unwrap();
        fs::write(
            &pid_file,
            format!("{} {}\n", other.pid, other.start_time + 1),
        )
        .unwrap();
        stop(&pid_file, &listen);
        assert!(other.is_alive());
        other.kill();
        stop(&pid_file, &listen); // nothing left: fine
    }

    #[test]
    fn the_embedded_owner_is_written_executable() {
        let d = tempfile::tempdir().unwrap();
        if std::env::var_os(CHANNEL_ENV).is_some() || EMBEDDED.is_none() {
            return;
        }
        let path = binary(d.path()).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(binary(d.path()).unwrap().unwrap(), path, "written once");
    }
}
