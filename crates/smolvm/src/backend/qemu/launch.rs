//! Starting QEMU: clear stale sockets, spawn detached, wait until QMP answers. Any failure kills the
//! process and removes the sockets, so a failed launch leaves nothing behind.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::argv::DiskFds;
use super::{check_socket_path, QemuBackend, QemuError, QmpClient, QmpError, STARTUP_TIMEOUT};
use crate::backend::console_keeper::{ConsolePipe, CONSOLE_LOG_MAX};
use crate::backend::{remove_socket, LaunchSpec};
use crate::process::{spawn_detached, ProcessIdentity};

/// Lines of the VMM log quoted in startup errors.
const TAIL_LINES: usize = 20;
/// How long a QEMU that broke the QMP handshake gets to finish exiting.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub(super) fn launch(
    backend: &QemuBackend,
    spec: &LaunchSpec,
) -> Result<ProcessIdentity, QemuError> {
    let sockets = [spec.control_socket.as_path(), spec.agent.path()];
    for s in sockets {
        check_socket_path(s)?;
    }
    for s in sockets {
        remove_socket(s)?;
    }
    // Only what this start writes to the (appended) log belongs in its error messages.
    let log_offset = fs::metadata(&spec.vmm_log).map(|m| m.len()).unwrap_or(0);

    let argv_for = |spec: &LaunchSpec, disk| backend.argv_with_disk(spec, disk);
    let identity = spawn_with_console(backend, spec, argv_for, &[], "starting QEMU")?;

    match wait_for_qmp(&identity, spec, log_offset) {
        Ok(()) => Ok(identity),
        Err(e) => {
            identity.kill();
            for s in sockets {
                if let Err(err) = remove_socket(s) {
                    tracing::warn!("cleanup after failed QEMU start: {err}");
                }
            }
            Err(e)
        }
    }
}

/// Spawns QEMU (detached, marked with its store) with its serial console going through a
/// [`ConsolePipe`] to a keeper that caps the log on disk. `argv_for` builds the argv from a spec whose
/// console path is the pipe. `inherit` are further (close-on-exec) descriptors of this process that
/// QEMU inherits under the same numbers. If the keeper cannot start, QEMU is killed again.
pub(super) fn spawn_with_console(
    backend: &QemuBackend,
    spec: &LaunchSpec,
    argv_for: impl Fn(&LaunchSpec, Option<DiskFds>) -> Vec<std::ffi::OsString>,
    inherit: &[std::os::fd::RawFd],
    what: &str,
) -> Result<ProcessIdentity, QemuError> {
    let spawn_err = |source| QemuError::Spawn {
        binary: backend.binary.clone(),
        source,
    };
    let console = ConsolePipe::new().map_err(spawn_err)?;
    let mut piped = spec.clone();
    piped.console_log = console.vmm_path();
    // A QEMU that drops root gets its writable disk as descriptors (see `DiskFds`); they stay open
    // here until it is spawned.
    let disk = match (spec.run_as, spec.disk_read_only) {
        (Some(_), false) => Some(open_disk(&spec.disk)?),
        _ => None,
    };
    let disk_fds = disk.as_ref().map(|(rw, ro)| DiskFds {
        rw: rw.as_raw_fd(),
        ro: ro.as_raw_fd(),
    });
    let argv = argv_for(&piped, disk_fds);
    tracing::debug!(vm_id = %spec.vm_id, ?argv, "{what}");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    spec.mark_owner(&mut cmd);
    console.pass_to(&mut cmd);
    let mut fds = inherit.to_vec();
    if let Some(d) = disk_fds {
        fds.extend([d.rw, d.ro]);
    }
    for fd in fds {
        crate::backend::console_keeper::inherit_fd(&mut cmd, fd);
    }
    let identity = spawn_detached(cmd, &spec.vmm_log).map_err(spawn_err)?;
    if let Err(e) = console.start_keeper(&spec.console_log, CONSOLE_LOG_MAX) {
        identity.kill();
        return Err(spawn_err(e));
    }
    Ok(identity)
}

/// The disk opened read-write and read-only (both close-on-exec here).
fn open_disk(disk: &Path) -> Result<(fs::File, fs::File), QemuError> {
    let err = |source| QemuError::Disk {
        path: disk.to_path_buf(),
        source,
    };
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(err)?;
    let ro = fs::File::open(disk).map_err(err)?;
    Ok((rw, ro))
}

/// Waits until QEMU's QMP socket completes a handshake, QEMU dies, or [`STARTUP_TIMEOUT`] passes.
pub(super) fn wait_for_qmp(
    identity: &ProcessIdentity,
    spec: &LaunchSpec,
    log_offset: u64,
) -> Result<(), QemuError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let socket = &spec.control_socket;
    loop {
        if !identity.is_alive() {
            return Err(QemuError::ExitedEarly {
                log: spec.vmm_log.clone(),
                tail: log_tail(&spec.vmm_log, log_offset),
            });
        }
        if socket.exists() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match QmpClient::connect(socket, remaining.max(Duration::from_millis(100))) {
                Ok(_) => return Ok(()),
                // Bound but not yet listening: try again.
                Err(QmpError::Connect { .. }) => {}
                // A reset or EOF usually means QEMU is exiting (e.g. it cannot load the kernel after
                // opening its sockets): give it a moment and report the exit with its log.
                Err(_) if identity.wait_gone(EXIT_GRACE) => continue,
                Err(source) => {
                    return Err(QemuError::Qmp {
                        socket: socket.clone(),
                        source,
                    })
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(QemuError::StartTimeout {
                socket: socket.clone(),
                timeout: STARTUP_TIMEOUT,
                log: spec.vmm_log.clone(),
                tail: log_tail(&spec.vmm_log, log_offset),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines `log` gained after byte `offset`, or a note that there were none.
pub(super) fn log_tail(log: &Path, offset: u64) -> String {
    let lines = crate::process::log_tail(log, offset, TAIL_LINES);
    if lines.is_empty() {
        return "(no output)".to_string();
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SUN_PATH_MAX;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stale_sockets_are_removed_other_files_are_not() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("a.qmp");
        drop(UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        remove_socket(&sock).unwrap();
        assert!(!sock.exists());
        remove_socket(&sock).unwrap(); // absent: fine

        let file = d.path().join("b.qmp");
        fs::write(&file, b"precious").unwrap();
        assert!(matches!(
            remove_socket(&file),
            Err(crate::backend::RemoveSocketError::NotASocket { .. })
        ));
        assert!(file.exists());
    }

    #[test]
    fn tail_reads_only_new_output() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("vmm.log");
        fs::write(&log, "old run\n").unwrap();
        let off = fs::metadata(&log).unwrap().len();
        assert_eq!(log_tail(&log, off), "(no output)");
        let mut text = String::from("old run\n");
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&log, &text).unwrap();
        let tail = log_tail(&log, off);
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"));
        assert_eq!(log_tail(&d.path().join("missing"), 0), "(no output)");
    }

    #[test]
    fn socket_path_limit() {
        let ok = "/".to_string() + &"a".repeat(SUN_PATH_MAX - 1);
        assert!(check_socket_path(Path::new(&ok)).is_ok());
        let long = ok + "b";
        let err = check_socket_path(Path::new(&long)).unwrap_err();
        assert!(err.to_string().contains("108 bytes"), "{err}");
    }
}
