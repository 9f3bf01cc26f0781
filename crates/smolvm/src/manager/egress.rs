//! The manager's egress-policy steps: the plan a VM's network is set up with, changing the policy of a
//! VM (running or not), re-resolving its allow-listed domains, and its status (policy, drops).
//!
//! The policy lives in the VM's stored config (`network_policy`), so it survives restarts and is what
//! `start` applies. A change is written to the store first and then applied to the live rules in one
//! nft transaction; if that fails, the stored policy is put back, so store and rules never disagree
//! for longer than the call.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::SmolVmManager;
use crate::error::{Error, Result, ValidationError};
use crate::info::{NetworkMode, VmInfo, VmState};
use crate::network::policy::{NetworkPolicy, FIELD};
use crate::network::{dns, egress, resolv, EgressPlan};

/// A VM's egress policy as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressStatus {
    /// The VM.
    pub vm_id: String,
    /// Its policy (stored; in force whenever its network is up).
    pub policy: NetworkPolicy,
    /// True when its host rules exist (created or running VM with TAP networking).
    pub active: bool,
    /// Packets the policy dropped since the network was set up (`None`: open policy or not active).
    pub dropped_packets: Option<u64>,
    /// Bytes of those packets.
    pub dropped_bytes: Option<u64>,
}

/// What one re-resolution of a VM's domains found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainRefresh {
    /// The current addresses of each allow-listed domain (empty when it has none or its lookup failed).
    pub domains: Vec<(String, Vec<Ipv4Addr>)>,
    /// Lookups that failed, with the reason (their addresses are not allowed until a later refresh).
    pub failures: Vec<(String, String)>,
    /// When to resolve again: the smallest TTL, at least [`egress::MIN_TTL_SECS`].
    pub next_refresh: Duration,
}

impl SmolVmManager {
    /// The VM's egress policy.
    pub fn network_policy(&self, vm_id: &str) -> Result<NetworkPolicy> {
        Ok(self.get(vm_id)?.config.network_policy().clone())
    }

    /// Changes the VM's egress policy. Validated first (a bad CIDR, domain or port names the field
    /// `network_policy`). For a created or running VM the new policy is in force when this returns
    /// (one nft transaction; on failure the old policy stays, in the rules and in the store); a stopped
    /// VM gets it at its next start. Anything but `open` needs TAP networking.
    pub fn set_network_policy(&self, vm_id: &str, policy: NetworkPolicy) -> Result<VmInfo> {
        let policy = policy.validated()?;
        let _lock = self.lock(vm_id)?;
        let rec = self
            .state()?
            .get_vm(vm_id)?
            .ok_or_else(|| Error::VmNotFound(vm_id.into()))?;
        check_mode(&rec.info, &policy)?;
        let old = rec.info.config.clone();
        let new = old.with_network_policy(policy.clone())?;
        let info = self.state()?.set_config(&new)?.info;
        let live = matches!(
            info.status,
            VmState::Created | VmState::Running | VmState::Paused
        );
        if let (true, Some(net)) = (live, info.network.as_ref()) {
            let plan = self.egress_plan(vm_id, &policy);
            if let Err(e) = self.host_network().set_egress(vm_id, net, &plan) {
                if let Err(undo) = self.state()?.set_config(&old) {
                    tracing::warn!(error = %undo, vm_id, "could not restore the stored policy");
                }
                return Err(e.into());
            }
        }
        Ok(info)
    }

    /// Re-resolves the VM's allow-listed domains through smolvm's resolver and replaces their
    /// addresses in its rules (one transaction). Call again after `next_refresh`: the addresses expire
    /// a little after their TTL (fail closed when nobody refreshes). A VM without domains or without
    /// live rules gets nothing changed.
    pub fn refresh_network_policy(&self, vm_id: &str) -> Result<DomainRefresh> {
        let info = self.get(vm_id)?;
        let policy = info.config.network_policy().clone();
        let (addrs, refresh) = resolve_domains(&policy);
        let live = matches!(
            info.status,
            VmState::Created | VmState::Running | VmState::Paused
        );
        let has_domains = matches!(&policy, NetworkPolicy::Allow(l) if !l.domains.is_empty());
        if live && has_domains && info.network.is_some() {
            self.host_network().refresh_domains(vm_id, &addrs)?;
        }
        Ok(refresh)
    }

    /// The VM's policy and what it dropped.
    pub fn network_policy_status(&self, vm_id: &str) -> Result<EgressStatus> {
        let info = self.get(vm_id)?;
        let tap = info
            .network
            .as_ref()
            .is_some_and(|n| n.mode == NetworkMode::Tap);
        let live = matches!(
            info.status,
            VmState::Created | VmState::Running | VmState::Paused
        );
        let drops = if tap && live && !info.config.network_policy().is_open() {
            self.host_network().egress_drops(vm_id)?
        } else {
            None
        };
        Ok(EgressStatus {
            vm_id: info.vm_id.clone(),
            policy: info.config.network_policy().clone(),
            active: tap && live,
            dropped_packets: drops.map(|d| d.0),
            dropped_bytes: drops.map(|d| d.1),
        })
    }

    /// The plan a VM's network is set up with: its policy, the guest's name servers and the current
    /// addresses of its domains (a failed lookup is logged and leaves the domain without addresses
    /// until the next refresh).
    pub(crate) fn egress_plan(&self, vm_id: &str, policy: &NetworkPolicy) -> EgressPlan {
        if policy.is_open() {
            return EgressPlan::open();
        }
        let (domain_addrs, refresh) = resolve_domains(policy);
        for (name, why) in &refresh.failures {
            tracing::warn!(vm_id, domain = %name, error = %why, "allow-listed domain not resolved");
        }
        EgressPlan {
            policy: policy.clone(),
            dns_servers: resolv::host_upstream_servers(),
            domain_addrs,
        }
    }
}

/// Refuses a non-open policy for a VM that has no TAP network to enforce it on.
pub(crate) fn check_mode(info: &VmInfo, policy: &NetworkPolicy) -> Result<()> {
    check_mode_for(info.network.as_ref().map(|n| n.mode), policy)
}

/// [`check_mode`] for a VM about to be created with network `mode`.
pub(crate) fn check_mode_for(mode: Option<NetworkMode>, policy: &NetworkPolicy) -> Result<()> {
    if policy.is_open() {
        return Ok(());
    }
    match mode {
        Some(NetworkMode::Tap) => Ok(()),
        Some(_) => Err(ValidationError::new(
            FIELD,
            "only TAP networking can enforce a policy (this VM uses QEMU user-mode networking, \
             which smolvm chooses when it may not create TAP devices: run as root)",
        )
        .into()),
        None => Err(ValidationError::new(
            FIELD,
            "this VM has no network; a policy needs TAP networking",
        )
        .into()),
    }
}

/// Resolves every domain of `policy` at the host's upstream servers: (address, TTL) pairs for the nft
/// set and the per-domain outcome.
fn resolve_domains(policy: &NetworkPolicy) -> (Vec<(Ipv4Addr, u32)>, DomainRefresh) {
    let servers: Vec<SocketAddr> = resolv::host_upstream_servers()
        .into_iter()
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect();
    let mut addrs = Vec::new();
    let mut refresh = DomainRefresh {
        domains: Vec::new(),
        failures: Vec::new(),
        next_refresh: Duration::from_secs(u64::from(dns::NEGATIVE_TTL)),
    };
    let NetworkPolicy::Allow(list) = policy else {
        return (addrs, refresh);
    };
    let mut next = u32::MAX;
    for name in &list.domains {
        match dns::resolve_a(name, &servers) {
            Ok(r) => {
                next = next.min(r.ttl);
                addrs.extend(r.addrs.iter().map(|a| (*a, r.ttl)));
                refresh.domains.push((name.clone(), r.addrs));
            }
            Err(e) => {
                next = next.min(dns::NEGATIVE_TTL);
                refresh.domains.push((name.clone(), Vec::new()));
                refresh.failures.push((name.clone(), e.to_string()));
            }
        }
    }
    if next != u32::MAX {
        refresh.next_refresh = Duration::from_secs(u64::from(next.max(egress::MIN_TTL_SECS)));
    }
    (addrs, refresh)
}
