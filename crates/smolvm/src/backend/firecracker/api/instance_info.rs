//! Answers of `GET /` (definition `InstanceInfo`) and `GET /version` (definition `FirecrackerVersion`).
//! Not `deny_unknown_fields`: newer releases may add fields to what they report.

use serde::{Deserialize, Serialize};

/// What `GET /` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceInfo {
    /// Application name.
    pub app_name: String,
    /// Instance id (`--id`).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// Firecracker version.
    pub vmm_version: String,
}

/// What `GET /version` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FirecrackerVersion {
    /// Firecracker version.
    pub firecracker_version: String,
}
