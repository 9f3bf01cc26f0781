//! `host_limits`: how much of the host one VM's VMM may use (a smolvm extension of the spec's
//! `VMConfig`). Enforced with a cgroup per VM, see [`crate::cgroup`].

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Room every VMM needs beyond guest RAM that `memory_limit_mib` must leave (below it QEMU is
/// killed by the cap during boot).
pub(crate) const MIN_VMM_HEADROOM_MIB: u32 = 64;

/// Per-VM host limits. Every field is optional: `None` takes the default of [`crate::cgroup`]
/// (memory = guest RAM + VMM overhead, 256 pids, CPU weight 100, no CPU cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimits {
    /// Hard CPU cap in percent of one host CPU (50 = half a CPU, 200 = two CPUs); 1-3200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_percent: Option<u32>,
    /// Relative CPU weight against other VMs, 1-10000 (cgroup v2 scale; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Memory cap of the VMM process in MiB; at least guest RAM + 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u32>,
    /// Cap on the VMM's host processes and threads, 32-65536 (guest processes are not host ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u32>,
}

impl HostLimits {
    /// Checks the ranges; `mem_size_mib` is the guest RAM the memory cap must exceed.
    pub fn validate(&self, mem_size_mib: u32) -> Result<(), ValidationError> {
        let bad = |msg: String| Err(ValidationError::new("host_limits", msg));
        if let Some(p) = self.cpu_quota_percent {
            if !(1..=3200).contains(&p) {
                return bad(format!(
                    "cpu_quota_percent must be between 1 and 3200, got {p}"
                ));
            }
        }
        if let Some(w) = self.cpu_weight {
            if !(1..=10000).contains(&w) {
                return bad(format!("cpu_weight must be between 1 and 10000, got {w}"));
            }
        }
        if let Some(m) = self.memory_limit_mib {
            let min = mem_size_mib.saturating_add(MIN_VMM_HEADROOM_MIB);
            if m < min {
                return bad(format!(
                    "memory_limit_mib must be at least guest RAM + {MIN_VMM_HEADROOM_MIB} ({min}), got {m}"
                ));
            }
        }
        if let Some(n) = self.pids_max {
            if !(32..=65536).contains(&n) {
                return bad(format!("pids_max must be between 32 and 65536, got {n}"));
            }
        }
        Ok(())
    }
}
