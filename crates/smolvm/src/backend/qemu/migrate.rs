//! Pause, resume, and snapshots as QEMU migration to a file.
//!
//! Save (the VM paused with `stop`): `migrate-set-capabilities` ([`CAPABILITIES`]), `<dir>/vm.migration`
//! passed to QEMU as a descriptor (`add-fd`) and `migrate` to `file:/dev/fdset/N`, then poll
//! `query-migrate` until `completed` (or `failed`, with QEMU's reason), then `remove-fd`. Restore: the same argv as a boot of the same machine shape plus `-incoming defer`, the same
//! capabilities, `migrate-incoming`, poll, then `cont`. The capabilities must match on both sides or the
//! restoring QEMU exits ("Capability mapped-ram is off, but received capability is on"), so they are a
//! constant here. `mapped-ram` (QEMU >= 9.0) writes each RAM page at a fixed offset of a sparse file:
//! the file is the guest's size in apparent bytes but allocates only the pages the guest touched.
//!
//! The restoring QEMU does not open the snapshot by path: smolvm opens it read-only and QEMU inherits
//! the descriptor into an fd set (`-add-fd`), loaded as `file:/dev/fdset/N`. A QEMU that has dropped
//! root (see [`crate::vmm_user`]) can thus load a snapshot it has no permission to open, several
//! restores of one snapshot under different users run at once, and the file stays root's alone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::launch::log_tail;
use super::{QemuBackend, QemuError, QmpClient, QmpError};
use crate::backend::remove_socket;
use crate::backend::LaunchSpec;
use crate::process::ProcessIdentity;

/// Name of the migration stream inside a snapshot directory.
pub(crate) const MIGRATION_FILE: &str = "vm.migration";
/// Migration capabilities used for saving and restoring (identical on both sides).
pub(crate) const CAPABILITIES: &[&str] = &["mapped-ram"];
/// How long a save or a load may take (hundreds of MB to a local file take about a second).
pub(crate) const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The fd set the restoring QEMU finds the snapshot's migration stream in.
pub(crate) const MIGRATION_FDSET: u32 = 1;
/// The URI a restoring QEMU loads: the descriptor in [`MIGRATION_FDSET`].
pub(crate) fn fdset_uri() -> String {
    format!("file:/dev/fdset/{MIGRATION_FDSET}")
}
/// Pause between `query-migrate` polls.
const POLL: Duration = Duration::from_millis(10);

/// The `migrate-set-capabilities` arguments.
pub(crate) fn capability_args() -> Value {
    let caps: Vec<Value> = CAPABILITIES
        .iter()
        .map(|c| json!({ "capability": c, "state": true }))
        .collect();
    json!({ "capabilities": caps })
}

/// Pauses the VM (`stop`).
pub(crate) fn stop(qmp: &mut QmpClient) -> Result<(), QmpError> {
    qmp.execute("stop", None).map(drop)
}

/// Resumes the VM (`cont`).
pub(crate) fn cont(qmp: &mut QmpClient) -> Result<(), QmpError> {
    qmp.execute("cont", None).map(drop)
}

/// The fd set a saving QEMU writes the snapshot's migration stream into.
pub(crate) const SAVE_FDSET: u32 = 2;

/// Saves a paused VM into `dir`: capabilities, the stream file handed to QEMU as a descriptor
/// (`add-fd`), `migrate` to `file:/dev/fdset/N`, wait for completion, then `remove-fd` (also after a
/// failure, so the VMM keeps nothing of the snapshot open). smolvm creates the file (0600) and QEMU
/// never opens a path: a VMM that dropped root (see [`crate::vmm_user`]) may not be able to reach
/// the data directory at all (root's home is 0700).
pub(crate) fn save(qmp: &mut QmpClient, dir: &Path, timeout: Duration) -> Result<(), QmpError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = migration_file(dir);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| QmpError::Io {
            action: "creating the snapshot's migration stream",
            source,
        })?;
    qmp.execute("migrate-set-capabilities", Some(capability_args()))?;
    qmp.execute_with_fd(
        "add-fd",
        Some(json!({ "fdset-id": SAVE_FDSET })),
        file.as_fd(),
    )?;
    drop(file);
    let uri = format!("file:/dev/fdset/{SAVE_FDSET}");
    let result = qmp
        .execute("migrate", Some(json!({ "uri": uri })))
        .and_then(|_| wait_completed(qmp, timeout, "saving"));
    if let Err(e) = qmp.execute("remove-fd", Some(json!({ "fdset-id": SAVE_FDSET }))) {
        tracing::warn!(error = %e, "could not release the snapshot's descriptor in QEMU");
    }
    result
}

/// Loads the stream at `uri` (see [`fdset_uri`]) into a QEMU started with `-incoming defer`, then
/// lets the guest run.
pub(crate) fn load(qmp: &mut QmpClient, uri: &str, timeout: Duration) -> Result<(), QmpError> {
    qmp.execute("migrate-set-capabilities", Some(capability_args()))?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
    wait_completed(qmp, timeout, "loading")?;
    // With autostart QEMU may already run the guest after an incoming migration; `cont` is needed only
    // when it did not.
    if !qmp.query_status()?.running {
        cont(qmp)?;
    }
    Ok(())
}

/// Polls `query-migrate` until `completed`; `failed`/`cancelled` become an error with QEMU's reason.
fn wait_completed(
    qmp: &mut QmpClient,
    timeout: Duration,
    action: &'static str,
) -> Result<(), QmpError> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = qmp.execute("query-migrate", None)?;
        match v.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                let why = v
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(QmpError::Command {
                    command: format!("migrate ({action})"),
                    class: s.to_string(),
                    desc: why.to_string(),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(QmpError::Io {
                action,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("migration not completed after {}s", timeout.as_secs()),
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Starts QEMU for `spec` with `-incoming defer`, loads `dir` and runs the guest. Any failure (QEMU
/// refusing the stream exits) kills the process and removes the sockets, and the error carries the end
/// of the VMM log, where QEMU says why.
pub(super) fn restore(
    backend: &QemuBackend,
    spec: &LaunchSpec,
    dir: &Path,
) -> Result<ProcessIdentity, QemuError> {
    let sockets = [spec.control_socket.as_path(), spec.agent.path()];
    for s in sockets {
        super::check_socket_path(s)?;
        remove_socket(s)?;
    }
    let log_offset = std::fs::metadata(&spec.vmm_log)
        .map(|m| m.len())
        .unwrap_or(0);
    let stream = migration_file(dir);
    // Close-on-exec here; only QEMU's copy is made inheritable (between its fork and exec).
    let fd = std::fs::File::open(&stream)
        .map(std::os::fd::OwnedFd::from)
        .map_err(|source| QemuError::Snapshot {
            path: stream.clone(),
            source,
        })?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let identity = super::launch::spawn_with_console(
        backend,
        spec,
        |s, disk| restore_argv(backend, s, raw, disk),
        &[raw],
        "restoring QEMU",
    )?;
    // QEMU holds its own copy from here on.
    drop(fd);
    let t0 = std::time::Instant::now();
    let result = super::launch::wait_for_qmp(&identity, spec, log_offset).and_then(|()| {
        tracing::debug!(vm_id = %spec.vm_id, ms = t0.elapsed().as_millis() as u64, "QMP up");
        let mut qmp = backend.qmp(&spec.control_socket)?;
        load(&mut qmp, &fdset_uri(), MIGRATION_TIMEOUT).map_err(|source| QemuError::Qmp {
            socket: spec.control_socket.clone(),
            source,
        })
    });
    match result {
        Ok(()) => Ok(identity),
        Err(e) => {
            // QEMU exits on a bad stream; give it a moment so the log holds its reason.
            identity.wait_gone(Duration::from_millis(500));
            identity.kill();
            for s in sockets {
                let _ = remove_socket(s);
            }
            Err(QemuError::RestoreFailed {
                vm_id: spec.vm_id.clone(),
                log: spec.vmm_log.clone(),
                tail: log_tail(&spec.vmm_log, log_offset),
                source: Box::new(e),
            })
        }
    }
}

/// The boot argv plus the inherited migration stream `fd` in [`MIGRATION_FDSET`] and
/// `-incoming defer`.
pub(crate) fn restore_argv(
    backend: &QemuBackend,
    spec: &LaunchSpec,
    fd: std::os::fd::RawFd,
    disk: Option<super::argv::DiskFds>,
) -> Vec<OsString> {
    let mut argv = backend.argv_with_disk(spec, disk);
    argv.push("-add-fd".into());
    argv.push(format!("fd={fd},set={MIGRATION_FDSET}").into());
    argv.push("-incoming".into());
    argv.push("defer".into());
    argv
}

/// Where the migration stream of a snapshot directory is.
pub(crate) fn migration_file(dir: &Path) -> PathBuf {
    dir.join(MIGRATION_FILE)
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod sequence_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_mapped_ram() {
        assert_eq!(
            capability_args(),
            json!({"capabilities": [{"capability": "mapped-ram", "state": true}]})
        );
    }
}
