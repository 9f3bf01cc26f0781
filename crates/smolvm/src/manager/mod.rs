//! `SmolVmManager` (spec: vm-manager): create, start, stop, delete, list, reconcile VMs with their state
//! persisted in SQLite, so any process can pick up a VM another process made.
//!
//! Rules kept by every operation:
//! * One VM is operated on by one caller at a time ([`lock::VmLock`], across processes).
//! * A failure rolls back what the failing step made; every teardown step is idempotent, so a crash
//!   half-way is mended by `delete`, `reconcile` or `cleanup`.
//! * The host network of a VM (TAP, NAT and forward rules) exists while the VM is created or running; `stop`
//!   removes it (the spec: stop "cleans up port forwarding rules") and `start` makes it again. Leases (IP,
//!   TAP name, MAC, SSH port) stay with the VM until `delete`, so a restarted VM keeps its address.

pub(crate) mod cmdline;
pub(crate) mod disk;
pub(crate) mod lock;

mod builder;
mod cgroups;
mod cleanup;
mod cleanup_plan;
mod cleanup_report;
mod egress;
mod net;
mod procscan;

mod channel;
mod fork;
mod images;
mod jails;
mod lifecycle;
pub(crate) mod liveness;
mod pause;
mod snapshot;
mod snapshot_dirs;
mod snapshot_disk;
mod template;
mod vmm_user;

#[cfg(test)]
mod cleanup_tests;
#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
pub(crate) mod test_env;

pub use builder::{BackendFactory, ManagerBuilder, SystemBackends};
pub use cleanup_report::{
    CleanupFailure, CleanupOptions, CleanupReport, CleanupScope, OrphanProcess, RetainedDisk,
};
pub use egress::{DomainRefresh, EgressStatus};
pub(crate) use net::net_attachment;
pub use template::templates_enabled_by_env;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::Backend;
use crate::config::BackendKind;
use crate::dirs::Dirs;
use crate::error::{Error, Result};
use crate::host::HostCapabilities;
use crate::info::{NetworkMode, VmInfo, VmState};
use crate::network::HostNetwork;
use crate::state::{StateStore, VmRecord};

/// Default `boot_timeout` of `start`, seconds (spec).
pub const DEFAULT_BOOT_TIMEOUT_SECS: f64 = 30.0;
/// Default graceful `stop` timeout of the manager, seconds (spec).
pub const DEFAULT_STOP_TIMEOUT_SECS: f64 = 10.0;

/// Options of [`SmolVmManager::create_with`] beyond the spec's `VmConfig`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Network attachment: `Auto` (default), `Tap`, `User` or `None`.
    pub network: NetworkMode,
    /// Delete a disk retained by an earlier VM with the same id (`retain_disk_on_delete`) and clone
    /// the image afresh. By default an isolated-mode create reuses such a disk, files and all.
    pub discard_retained_disk: bool,
}

/// What [`SmolVmManager::create_reporting`] made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new VM.
    pub info: VmInfo,
    /// The retained disk of an earlier VM with this id that the VM uses, if one was reused.
    pub reused_disk: Option<PathBuf>,
}

/// Orchestrates VMs: the spec's `SmolVMManager`.
#[derive(Debug)]
pub struct SmolVmManager {
    dirs: Dirs,
    backend_choice: Option<BackendKind>,
    state: Mutex<StateStore>,
    host: HostCapabilities,
    backends: Arc<dyn BackendFactory>,
    network: HostNetwork,
    lock_wait: Duration,
    /// QEMU VMs get a channel owner (see [`crate::channel`]).
    channel_owner: bool,
    /// VMMs drop root for their VM's own user when this process is root (see [`crate::vmm_user`]).
    vmm_user: bool,
}

impl SmolVmManager {
    /// Opens the manager: resolves directories as the spec says (see [`crate::dirs`]), opens the state
    /// store and probes the host. `backend` is the manager-wide choice (`None` = auto); a VM's own
    /// `VmConfig::backend` wins over it.
    pub fn new(
        data_dir: Option<&Path>,
        socket_dir: Option<&Path>,
        backend: Option<BackendKind>,
    ) -> Result<SmolVmManager> {
        let mut b = SmolVmManager::builder();
        if let Some(d) = data_dir {
            b = b.data_dir(d);
        }
        if let Some(d) = socket_dir {
            b = b.socket_dir(d);
        }
        if let Some(k) = backend {
            b = b.backend(k);
        }
        b.build()
    }

    /// A builder that can replace the manager's collaborators (host probe, VMM backends, host network
    /// commands); its defaults are the real ones.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Opens a manager and checks that `vm_id` exists in its store (spec: `from_id`).
    pub fn from_id(
        vm_id: &str,
        data_dir: Option<&Path>,
        socket_dir: Option<&Path>,
        backend: Option<BackendKind>,
    ) -> Result<SmolVmManager> {
        let m = SmolVmManager::new(data_dir, socket_dir, backend)?;
        m.get(vm_id)?;
        Ok(m)
    }

    /// Directory of the state database and VM files.
    pub fn data_dir(&self) -> &Path {
        &self.dirs.data_dir
    }
    /// Directory of VM sockets.
    pub fn socket_dir(&self) -> &Path {
        &self.dirs.socket_dir
    }
    /// Directory of isolated disks (`data_dir/disks`).
    pub fn disk_dir(&self) -> &Path {
        &self.dirs.disk_dir
    }
    /// All resolved directories.
    pub fn dirs(&self) -> &Dirs {
        &self.dirs
    }
    /// What the host can do, as probed when the manager was opened.
    pub fn host(&self) -> &HostCapabilities {
        &self.host
    }

    /// The backend new VMs get when their config does not name one (spec attribute `backend`).
    pub fn backend(&self) -> Result<BackendKind> {
        self.resolve(None)
    }

    /// Resolves the backend for a VM: the config's choice, then the manager's, then auto (Firecracker
    /// where KVM is really usable and its binary exists, else QEMU). A backend whose prerequisites are
    /// missing is refused here, before anything is created, with every missing piece named.
    pub fn resolve(&self, config_choice: Option<BackendKind>) -> Result<BackendKind> {
        let kind = self
            .host
            .resolve_backend(config_choice.or(self.backend_choice));
        let problems = self.host.check_prerequisites(kind);
        if problems.is_empty() {
            Ok(kind)
        } else {
            Err(crate::Error::Prerequisites {
                backend: kind,
                problems,
            })
        }
    }

    /// The backend implementation for a VM (the `smolvm-bench` crate asks it for socket paths; not a
    /// stable API).
    #[doc(hidden)]
    pub fn backend_impl(&self, kind: BackendKind) -> Result<Box<dyn Backend>> {
        self.backends.make(kind, &self.host)
    }

    /// Prerequisites missing for the manager's backend; empty when all good (spec).
    pub fn check_prerequisites(&self) -> Vec<String> {
        let kind = self.host.resolve_backend(self.backend_choice);
        self.host.check_prerequisites(kind)
    }

    /// Information about one VM (spec: `get`).
    pub fn get(&self, vm_id: &str) -> Result<VmInfo> {
        Ok(self.record(vm_id)?.info)
    }

    /// All VMs, optionally only those in `status` (spec: `list_vms`). A VM recorded as running whose
    /// VMM is gone is shown (and stored) as `error` right away.
    pub fn list_vms(&self, status: Option<VmState>) -> Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        // Bound first: the store's guard must be released before `observe` takes it again.
        let rows = self.state()?.list_vms(None)?;
        for rec in rows {
            let rec = match self.observe(rec) {
                Ok((rec, _)) => rec,
                // Deleted while we looked.
                Err(Error::VmNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if status.is_none_or(|s| s == rec.info.status) {
                out.push(rec.info);
            }
        }
        Ok(out)
    }

    /// Marks VMs whose row says running but whose VMM process is gone as `error`; returns their ids
    /// (spec: `reconcile`). Also starts a new channel owner for a running QEMU VM whose owner died.
    /// Takes no VM lock (see [`liveness`]) except that of a VM whose owner it restarts, so it never
    /// waits for an operation on another VM, such as a boot.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        let mut running = self.state()?.list_vms(Some(VmState::Running))?;
        running.extend(self.state()?.list_vms(Some(VmState::Paused))?);
        let mut stale = Vec::new();
        for rec in running {
            match self.observe(rec) {
                Ok((rec, true)) => stale.push(rec.info.vm_id),
                Ok((rec, false)) => {
                    // The VM lives; its channel owner may not (it crashed or was killed).
                    match self.ensure_channel(&rec.info.vm_id) {
                        Ok(_) | Err(Error::VmNotFound(_)) => {}
                        Err(e) => {
                            tracing::warn!(vm = %rec.info.vm_id, error = %e, "could not restart the channel owner")
                        }
                    }
                }
                Err(Error::VmNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Groups of VMMs that died (or of VMs deleted by a crashed smolvm) go now.
        if let Err(e) = self.leaked_cgroups(false, false) {
            tracing::warn!(error = %e, "reconcile could not remove leaked cgroups");
        }
        Ok(stale)
    }

    /// Why the VM last failed (the reason recorded with status `error`), if it did.
    pub fn last_error(&self, vm_id: &str) -> Result<Option<String>> {
        Ok(self.record(vm_id)?.last_error)
    }

    pub(crate) fn state(&self) -> Result<MutexGuard<'_, StateStore>> {
        // A panic while holding the store cannot leave SQLite inconsistent (transactions roll back), so a
        // poisoned lock is safe to reuse.
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The VM's record as it really is (a dead VMM turns a running VM into `error`, see [`liveness`]).
    pub(crate) fn record(&self, vm_id: &str) -> Result<VmRecord> {
        let rec = self
            .state()?
            .get_vm(vm_id)?
            .ok_or_else(|| Error::VmNotFound(vm_id.to_string()))?;
        Ok(self.observe(rec)?.0)
    }

    pub(crate) fn lock(&self, vm_id: &str) -> Result<lock::VmLock> {
        lock::VmLock::acquire(&self.dirs.data_dir.join("locks"), vm_id, self.lock_wait)
    }

    /// Per-VM directory for logs.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.dirs.vm_dir(vm_id)
    }

    /// The guest serial console log of a VM.
    pub fn console_log(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join("console.log")
    }

    /// The VMM's own stdout/stderr log of a VM.
    pub fn vmm_log(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join("vmm.log")
    }
}

/// Convenience for the CLI and the facade: create a manager with defaults.
impl SmolVmManager {
    /// `SmolVmManager::new(None, None, None)`.
    pub fn open_default() -> Result<SmolVmManager> {
        SmolVmManager::new(None, None, None)
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn a_backend_the_host_cannot_run_is_refused_as_missing_prerequisites() {
        let dir = tempfile::tempdir().unwrap();
        let mut m =
            SmolVmManager::new(Some(dir.path()), Some(&dir.path().join("s")), None).unwrap();
        m.host.tools.firecracker = None;
        let e = m.resolve(Some(BackendKind::Firecracker)).unwrap_err();
        assert_eq!(e.kind(), "prerequisites");
        assert!(
            matches!(&e, crate::Error::Prerequisites { backend: BackendKind::Firecracker, problems }
                if problems.iter().any(|p| p.contains("firecracker not found"))),
            "{e}"
        );
    }
}
