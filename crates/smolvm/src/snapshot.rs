//! Snapshots: a VM's memory, device state and disk at one moment, stored under
//! `data_dir/snapshots/<name>/` and recorded in the state store, and what a VM made from one needs to
//! know. The operations are on [`crate::manager::SmolVmManager`] (`snapshot`, `create_from_snapshot`,
//! `fork`, `list_snapshots`, `get_snapshot`, `delete_snapshot`) and on [`crate::SmolVm`].
//!
//! A snapshot is restored only by the VMM that wrote it, with the same version, accelerator and
//! migration capabilities, into a VM of the same shape (vCPUs, memory, kernel, initrd, boot
//! arguments): the VM made from it takes all of these from the snapshot. Its disk is checked to be the
//! one captured (size and modification time), so a file changed behind smolvm's back is refused
//! instead of handing the guest a disk that disagrees with its page cache.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, VmConfig};
use crate::error::ValidationError;

/// Name of the snapshot's disk inside its directory.
pub(crate) const DISK_FILE: &str = "disk.img";

/// What a restore must match: the VMM and the machine the snapshot was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    /// Virtual CPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// The VMM's version line (`QEMU emulator version 10.0.2 ...`).
    pub vmm_version: String,
    /// `kvm` or `tcg` (QEMU) / `kvm` (Firecracker).
    pub accel: String,
    /// QEMU migration capabilities used to save (empty for Firecracker).
    pub capabilities: Vec<String>,
    /// Size in bytes of the captured disk.
    pub disk_size: u64,
    /// Modification time of the captured disk, nanoseconds since the epoch.
    pub disk_mtime_ns: i128,
    /// Whether the guest has a network interface (a VM made from it must have one too, and only then).
    pub network: bool,
}

/// A snapshot as recorded in the state store.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// Unique name.
    pub name: String,
    /// The VM it was taken from.
    pub source_vm: String,
    /// The backend that wrote it.
    pub backend: BackendKind,
    /// The source VM's configuration.
    pub config: VmConfig,
    /// What a restore must match.
    pub machine: MachineShape,
    /// Its directory (`data_dir/snapshots/<name>`).
    pub dir: PathBuf,
    /// Bytes allocated on disk by its files.
    pub size_bytes: u64,
    /// When it was taken.
    pub created_at: SystemTime,
}

/// The public view of a snapshot (`smolvm snapshot info --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Unique name.
    pub name: String,
    /// The VM it was taken from.
    pub source_vm: String,
    /// `qemu` or `firecracker`.
    pub backend: BackendKind,
    /// Virtual CPUs of VMs made from it.
    pub vcpu_count: u32,
    /// Memory of VMs made from it, MiB.
    pub mem_size_mib: u32,
    /// The VMM version that wrote it.
    pub vmm_version: String,
    /// Bytes allocated on disk (memory file, state, disk).
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    /// Its directory.
    pub path: PathBuf,
    /// VMs whose disks are overlays on its disk (it cannot be deleted while any exists).
    pub used_by: Vec<String>,
}

impl SnapshotRecord {
    /// The public view, with the VMs that use it.
    pub fn info(&self, used_by: Vec<String>) -> SnapshotInfo {
        SnapshotInfo {
            name: self.name.clone(),
            source_vm: self.source_vm.clone(),
            backend: self.backend,
            vcpu_count: self.machine.vcpu_count,
            mem_size_mib: self.machine.mem_size_mib,
            vmm_version: self.machine.vmm_version.clone(),
            size_bytes: self.size_bytes,
            created_at: self
                .created_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            path: self.dir.clone(),
            used_by,
        }
    }

    /// The snapshot's disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }
}

/// Checks a snapshot name: the same rule as a VM id (`^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$` or one
/// character), so it is safe as a directory name.
pub(crate) fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = match name.len() {
        1 => name.chars().all(ok_char),
        2..=64 => {
            name.chars().all(|c| ok_char(c) || c == '-')
                && !name.starts_with('-')
                && !name.ends_with('-')
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            "snapshot name",
            format!("{name:?} must match ^[a-z0-9][a-z0-9-]{{0,62}}[a-z0-9]$ or ^[a-z0-9]$"),
        ))
    }
}

/// Errors of snapshot operations; each names the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot with this name.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// VMs made from it still use its disk.
    #[error("snapshot {name:?} is used by VM(s) {}: delete them first", vms.join(", "))]
    InUse {
        /// The snapshot.
        name: String,
        /// The VMs using it.
        vms: Vec<String>,
    },
    /// A file of the snapshot is missing.
    #[error("snapshot {name:?} is damaged: {} is missing", path.display())]
    MissingFile {
        /// The snapshot.
        name: String,
        /// The missing file.
        path: PathBuf,
    },
    /// The VM is not in a state that can be snapshotted.
    #[error("cannot take snapshot {name:?} of VM {vm_id:?}: it is {status} (only running or paused VMs)")]
    WrongState {
        /// The snapshot.
        name: String,
        /// The VM.
        vm_id: String,
        /// Its state.
        status: crate::info::VmState,
    },
    /// The snapshot does not fit this host's VMM or the requested machine.
    #[error("snapshot {name:?} cannot be restored here: {reason}")]
    Incompatible {
        /// The snapshot.
        name: String,
        /// What differs.
        reason: String,
    },
    /// The snapshot's disk changed since it was taken.
    #[error("snapshot {name:?} is damaged: its disk {} changed since the snapshot ({reason})", path.display())]
    DiskChanged {
        /// The snapshot.
        name: String,
        /// The disk.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A step of taking or restoring the snapshot failed.
    #[error("snapshot {name:?}: {action} failed")]
    Failed {
        /// The snapshot.
        name: String,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: Box<crate::Error>,
    },
}

impl From<SnapshotError> for crate::Error {
    fn from(e: SnapshotError) -> Self {
        crate::Error::Snapshot(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_vm_id_rule() {
        for ok in ["a", "s1", "base-image-1", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "..", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
