//! `PUT /machine-config` (definition `MachineConfiguration`).

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// vCPUs, memory and related switches. Pre-boot only; omitted optional fields take Firecracker's
/// defaults (no SMT, no dirty page tracking, no huge pages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MachineConfiguration {
    /// Number of vCPUs: 1 to 32 (1 or even with SMT).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking, needed for diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages backing guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// The `huge_pages` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HugePages {
    /// Normal pages.
    None,
    /// 2 MiB hugetlbfs pages (`mem_size_mib` must be even).
    #[serde(rename = "2M")]
    TwoMiB,
}

impl ApiRequest for MachineConfiguration {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/machine-config".to_string()
    }
}
