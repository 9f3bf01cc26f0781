//! Taking, listing and deleting snapshots. A snapshot is `data_dir/snapshots/<name>/`: the VMM's
//! memory and device state (QEMU: `vm.migration`; Firecracker: `memory` + `vmstate`), `disk.img` (the
//! VM's disk as it was at that moment), plus a row in the state store.
//!
//! Consistency: the VM is paused before anything is captured; QEMU drains and flushes its block
//! devices when it stops the vCPUs, so the disk copied while paused matches the memory saved while
//! paused (the guest's page cache is part of the memory). A running VM is resumed afterwards, a paused
//! one stays paused. Everything is written into a temporary directory renamed into place at the end, so
//! a failure leaves nothing behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::snapshot_dirs::SnapshotDirsLock;
use super::SmolVmManager;
use crate::backend::qemu::{migrate, QemuAccel};
use crate::config::{BackendKind, DiskMode};
use crate::error::{Error, Result};
use crate::info::VmState;
use crate::snapshot::{
    validate_name, MachineShape, SnapshotError, SnapshotInfo, SnapshotRecord, DISK_FILE,
};
use crate::state::VmRecord;

impl SmolVmManager {
    /// Directory holding every snapshot (`data_dir/snapshots`).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_dir().join("snapshots")
    }

    /// Takes a snapshot named `name` of a running or paused VM: memory, device state and disk at one
    /// moment. A running VM is paused for the capture and resumed; a paused one stays paused.
    pub fn snapshot(&self, vm_id: &str, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        if !rec.info.status.has_vmm() {
            return Err(wrong_state(name, &rec));
        }
        if self.state()?.get_snapshot(name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.into()).into());
        }
        if rec.info.config.disk_mode() != DiskMode::Isolated {
            return Err(SnapshotError::Incompatible {
                name: name.into(),
                reason: format!(
                    "VM {vm_id} boots a shared read-only disk; snapshots need an isolated disk"
                ),
            }
            .into());
        }
        let disk = rec
            .disk_path
            .clone()
            .ok_or_else(|| SnapshotError::Incompatible {
                name: name.into(),
                reason: format!("VM {vm_id} has no disk of its own recorded"),
            })?;
        let socket = self.live_control_socket(&rec, "snapshot (its VMM is gone)")?;
        let backend = self.backend_impl(rec.backend)?;
        let root = self.snapshots_dir();
        fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        // Held until the row is in: `cleanup` must not take the directory for a leftover meanwhile.
        let _capturing = SnapshotDirsLock::shared(&root, self.lock_wait)?;
        let tmp = root.join(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir(&tmp).map_err(|e| Error::io("create directory", &tmp, e))?;

        let was_running = rec.info.status == VmState::Running;
        let vmm_user = self.running_vmm_user(&rec);
        let fail = |action: &'static str| {
            move |e: Error| -> Error {
                SnapshotError::Failed {
                    name: name.into(),
                    action,
                    source: Box::new(e),
                }
                .into()
            }
        };
        let captured = (|| -> Result<MachineShape> {
            let vmm_version = backend
                .vmm_version()
                .map_err(|e| fail("read the VMM version")(e.into()))?;
            if was_running {
                backend
                    .pause(&socket)
                    .map_err(|e| fail("pause the VM")(e.into()))?;
            }
            // A VMM that dropped root writes its state into a directory lent to it; afterwards the
            // directory and every file in it are root's alone again (0700/0600).
            if let Some(user) = vmm_user {
                crate::vmm_user::lend_dir(&tmp, user).map_err(|e| {
                    fail("lend the snapshot directory to the VMM")(Error::io("chown", &tmp, e))
                })?;
            }
            backend
                .save_state(&socket, &tmp)
                .map_err(|e| fail("save memory and device state")(e.into()))?;
            let snap_disk = tmp.join(DISK_FILE);
            super::snapshot_disk::capture(&disk, &snap_disk).map_err(fail("copy the disk"))?;
            if vmm_user.is_some() || crate::vmm_user::is_root() {
                crate::vmm_user::take_back_dir(&tmp).map_err(|e| {
                    fail("take the snapshot directory back from the VMM")(Error::io(
                        "chown", &tmp, e,
                    ))
                })?;
            }
            let meta = fs::metadata(&snap_disk).map_err(|e| Error::io("stat", &snap_disk, e))?;
            Ok(MachineShape {
                vcpu_count: rec.info.config.vcpu_count(),
                mem_size_mib: rec.info.config.mem_size_mib(),
                vmm_version,
                accel: self.accel_name(rec.backend),
                capabilities: match rec.backend {
                    BackendKind::Qemu => migrate::CAPABILITIES
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                    BackendKind::Firecracker => Vec::new(),
                },
                disk_size: meta.len(),
                disk_mtime_ns: mtime_ns(&meta),
                network: rec.info.network.is_some(),
            })
        })();
        // Whatever happened, a VM that was running runs again.
        if was_running {
            if let Err(e) = backend.resume(&socket) {
                tracing::warn!(vm = %vm_id, error = %e, "could not resume the VM after the snapshot");
                let _ = self.state()?.set_status(
                    vm_id,
                    VmState::Paused,
                    Some(&format!("left paused: resume after snapshot failed: {e}")),
                );
            }
        }
        let machine = match captured {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let dir = root.join(name);
        // A directory without a row is a leftover of a crash between rename and insert.
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::io("rename snapshot into place", &dir, e));
        }
        let record = SnapshotRecord {
            name: name.into(),
            source_vm: vm_id.into(),
            backend: rec.backend,
            config: rec.info.config.clone(),
            machine,
            size_bytes: allocated_bytes(&dir),
            dir: dir.clone(),
            created_at: SystemTime::now(),
        };
        match self.state()?.insert_snapshot(&record) {
            Ok(true) => Ok(record.info(Vec::new())),
            Ok(false) => {
                let _ = fs::remove_dir_all(&dir);
                Err(SnapshotError::AlreadyExists(name.into()).into())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e.into())
            }
        }
    }

    /// All snapshots, oldest first, each with the VMs made from it.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let records = self.state()?.list_snapshots()?;
        records
            .into_iter()
            .map(|r| {
                let users = self.state()?.snapshot_users(&r.name)?;
                Ok(r.info(users))
            })
            .collect()
    }

    /// One snapshot.
    pub fn get_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        let r = self.snapshot_record(name)?;
        let users = self.state()?.snapshot_users(name)?;
        Ok(r.info(users))
    }

    /// Deletes a snapshot: its row and its files. Refused while VMs made from it exist (their disks are
    /// overlays on its disk, and QEMU maps its memory file).
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let r = self.snapshot_record(name)?;
        match self.state()?.delete_snapshot(name)? {
            Err(vms) => {
                return Err(SnapshotError::InUse {
                    name: name.into(),
                    vms,
                }
                .into())
            }
            Ok(false) => return Err(SnapshotError::NotFound(name.into()).into()),
            Ok(true) => {}
        }
        match fs::remove_dir_all(&r.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove snapshot directory", &r.dir, e))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord> {
        validate_name(name)?;
        self.state()?
            .get_snapshot(name)?
            .ok_or_else(|| SnapshotError::NotFound(name.into()).into())
    }

    /// `kvm` or `tcg`: what this host's VMM would run a restored VM with.
    pub(crate) fn accel_name(&self, backend: BackendKind) -> String {
        match backend {
            BackendKind::Qemu => QemuAccel::from_host(self.host())
                .accelerator
                .as_str()
                .into(),
            BackendKind::Firecracker => "kvm".into(),
        }
    }
}

fn wrong_state(name: &str, rec: &VmRecord) -> Error {
    SnapshotError::WrongState {
        name: name.into(),
        vm_id: rec.info.vm_id.clone(),
        status: rec.info.status,
    }
    .into()
}

/// Modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Bytes allocated by the files under `dir` (sparse files count what they really use).
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += allocated_bytes(&e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}
