//! Pause, resume and snapshots over Firecracker's API: `PATCH /vm`, `PUT /snapshot/create` (full
//! snapshot of a paused microVM: `<dir>/memory` and `<dir>/vmstate`) and `PUT /snapshot/load` on a fresh
//! process, with the new VM's TAP device and vsock socket as overrides and `resume_vm` so that the guest
//! runs once loaded. The restored guest keeps the saved MAC address; smolvm's agent sets the new one.

use std::path::{Path, PathBuf};

use super::api::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, Vm, VmRunState, VsockOverride,
};
use super::{ApiClient, FirecrackerError, NET_IFACE_ID};
use crate::backend::{LaunchSpec, NetAttachment};

/// Guest memory file of a snapshot directory.
pub(crate) const MEMORY_FILE: &str = "memory";
/// MicroVM state file of a snapshot directory.
pub(crate) const STATE_FILE: &str = "vmstate";

/// Pauses or resumes the microVM.
pub(crate) fn set_state(client: &mut ApiClient, state: VmRunState) -> Result<(), FirecrackerError> {
    client.send(&Vm::new(state)).map(drop)
}

/// The create request for `dir`.
pub(crate) fn create_params(dir: &Path) -> SnapshotCreateParams {
    SnapshotCreateParams {
        mem_file_path: path_string(&dir.join(MEMORY_FILE)),
        snapshot_path: path_string(&dir.join(STATE_FILE)),
        snapshot_type: Some(SnapshotType::Full),
    }
}

/// Writes a full snapshot of the paused microVM into `dir`.
pub(crate) fn create(client: &mut ApiClient, dir: &Path) -> Result<(), FirecrackerError> {
    client.send(&create_params(dir)).map(drop)
}

/// The load request restoring `dir` with `spec`'s TAP device and vsock socket, resuming the guest.
pub(crate) fn load_params(spec: &LaunchSpec, dir: &Path) -> SnapshotLoadParams {
    let network_overrides = match &spec.net {
        Some(NetAttachment::Tap { tap, .. }) => vec![NetworkOverride {
            iface_id: NET_IFACE_ID.to_string(),
            host_dev_name: tap.clone(),
        }],
        _ => Vec::new(),
    };
    SnapshotLoadParams {
        snapshot_path: path_string(&dir.join(STATE_FILE)),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: path_string(&dir.join(MEMORY_FILE)),
        },
        track_dirty_pages: None,
        resume_vm: Some(true),
        network_overrides,
        vsock_override: Some(VsockOverride {
            uds_path: path_string(spec.agent.path()),
        }),
        clock_realtime: Some(true),
    }
}

/// Loads `dir` into a fresh Firecracker process and resumes the guest.
pub(crate) fn load(
    client: &mut ApiClient,
    spec: &LaunchSpec,
    dir: &Path,
) -> Result<(), FirecrackerError> {
    client.send(&load_params(spec, dir)).map(drop)
}

/// The snapshot's files in `dir`, for size accounting and checks.
pub(crate) fn files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(MEMORY_FILE), dir.join(STATE_FILE)]
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
