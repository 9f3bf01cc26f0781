//! `SmolVm` methods for the VM's egress policy (see [`crate::network::policy`] for what each policy
//! allows and `crate::manager`'s `egress` module for when a change takes effect).

use super::SmolVm;
use crate::error::Result;
use crate::manager::{DomainRefresh, EgressStatus};
use crate::network::NetworkPolicy;

impl SmolVm {
    /// The VM's egress policy.
    pub fn network_policy(&self) -> &NetworkPolicy {
        self.info.config.network_policy()
    }

    /// Changes the VM's egress policy; in force on return for a running VM. Chainable.
    pub fn set_network_policy(&mut self, policy: NetworkPolicy) -> Result<&mut SmolVm> {
        self.info = self.manager.set_network_policy(&self.vm_id, policy)?;
        Ok(self)
    }

    /// The policy and how many packets it dropped.
    pub fn network_policy_status(&self) -> Result<EgressStatus> {
        self.manager.network_policy_status(&self.vm_id)
    }

    /// Re-resolves the policy's domains now (see `SmolVmManager::refresh_network_policy`).
    pub fn refresh_network_policy(&self) -> Result<DomainRefresh> {
        self.manager.refresh_network_policy(&self.vm_id)
    }
}
