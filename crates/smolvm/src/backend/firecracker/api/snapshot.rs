//! `PUT /snapshot/create` (definition `SnapshotCreateParams`, post-boot, microVM paused) and
//! `PUT /snapshot/load` (definition `SnapshotLoadParams`, only on a fresh process before any other
//! resource but the logger is configured).

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// Full or diff snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SnapshotType {
    /// All guest memory.
    Full,
    /// Only memory dirtied since the previous snapshot (needs dirty page tracking).
    Diff,
}

/// Body of `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotCreateParams {
    /// Where the guest memory is written.
    pub mem_file_path: String,
    /// Where the microVM (device) state is written.
    pub snapshot_path: String,
    /// Full by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

impl ApiRequest for SnapshotCreateParams {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/snapshot/create".to_string()
    }
}

/// Where restored guest memory comes from (definition `MemoryBackend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemoryBackend {
    /// `File` (mapped privately, copy-on-write) or `Uffd` (a userfaultfd handler's socket).
    pub backend_type: MemoryBackendType,
    /// The memory file, or the handler's socket.
    pub backend_path: String,
}

/// The `backend_type` enum of `MemoryBackend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MemoryBackendType {
    /// A memory file written by `/snapshot/create`.
    File,
    /// A userfaultfd page-fault handler.
    Uffd,
}

/// Changes the TAP device behind an interface at restore (definition `NetworkOverride`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkOverride {
    /// The interface id in the snapshot (`eth0`).
    pub iface_id: String,
    /// The new VM's TAP device.
    pub host_dev_name: String,
}

/// Changes the vsock device's Unix socket at restore (definition `VsockOverride`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VsockOverride {
    /// The new VM's vsock socket.
    pub uds_path: String,
}

/// Body of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotLoadParams {
    /// The microVM state file.
    pub snapshot_path: String,
    /// The guest memory (smolvm never sends the deprecated `mem_file_path`).
    pub mem_backend: MemoryBackend,
    /// Track dirty pages (for later diff snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the vCPUs once loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// TAP devices of the new VM.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// The new VM's vsock socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86_64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

impl ApiRequest for SnapshotLoadParams {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/snapshot/load".to_string()
    }
}
