//! [`HostNetwork`]: set up, tear down and clean up the host side of VM networks.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use super::commands::{NetCapabilities, NetCommands, SystemCommands};
use super::egress::{self, EgressPlan};
use super::firewall::{self, ForwardDropChain};
use super::links::{self, LinkInfo};
use super::nft::{self, Ruleset};
use super::{check_vm_id, parse_vm_tag, validate_tap_name, vm_tag, NetworkError, TAP_PREFIX};
use crate::info::NetworkConfig;

/// The host side of VM networks. Cheap to clone; every operation is idempotent.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    cmds: Arc<dyn NetCommands>,
}

/// A TAP device [`HostNetwork::cleanup_orphans`] found (and removed unless dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanTap {
    /// Device name.
    pub name: String,
    /// The VM its tag names; `None` for an untagged `smv-*` TAP (a setup interrupted before tagging).
    pub vm_id: Option<String>,
}

/// An nft rule [`HostNetwork::cleanup_orphans`] found (and removed unless dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanRule {
    /// The VM its tag names.
    pub vm_id: String,
    /// Chain in `inet smolvm`.
    pub chain: String,
    /// Rule handle.
    pub handle: u64,
}

/// What [`HostNetwork::cleanup_orphans`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// True if nothing was removed (only listed).
    pub dry_run: bool,
    /// Orphaned TAP devices.
    pub taps: Vec<OrphanTap>,
    /// Orphaned rules.
    pub rules: Vec<OrphanRule>,
}

impl CleanupReport {
    /// True if there were no orphans.
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty() && self.rules.is_empty()
    }
}

fn sysctl_path(family: &str, tap: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{tap}/{key}")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl HostNetwork {
    /// Uses the given tools (a [`RecordingCommands`](super::RecordingCommands) in unit tests).
    pub fn new(cmds: Arc<dyn NetCommands>) -> Self {
        HostNetwork { cmds }
    }

    /// Uses the real system tools.
    pub fn system() -> Self {
        Self::new(Arc::new(SystemCommands))
    }

    /// What this process may do (for the network-mode decision).
    pub fn capabilities(&self) -> NetCapabilities {
        self.cmds.capabilities()
    }

    fn ip(&self, args: Vec<String>) -> Result<String, NetworkError> {
        self.cmds.run("ip", &args, None)
    }

    fn links(&self) -> Result<Vec<LinkInfo>, NetworkError> {
        let out = self.ip(links::list_links())?;
        links::parse_links(&out).map_err(|source| NetworkError::Parse {
            command: "ip -j -d link show".into(),
            source,
        })
    }

    /// Creates the TAP, gateway address, route, sysctls and nft rules of one VM. Idempotent: running
    /// it again repairs what is missing. On failure, what this call created is removed again.
    pub fn setup_vm(&self, vm_id: &str, net: &NetworkConfig) -> Result<(), NetworkError> {
        self.setup_vm_with(vm_id, net, &EgressPlan::open())
    }

    /// [`setup_vm`](Self::setup_vm) with the VM's egress policy `plan` in the same nft transaction.
    pub fn setup_vm_with(
        &self,
        vm_id: &str,
        net: &NetworkConfig,
        plan: &EgressPlan,
    ) -> Result<(), NetworkError> {
        check_vm_id(vm_id)?;
        validate_tap_name(net.tap_name())?;
        self.capabilities().check_tap()?;
        let tag = vm_tag(vm_id);
        let tap = net.tap_name();
        let ruleset = nft::list_ruleset(&*self.cmds)?;
        if let Some(port) = net.ssh_host_port {
            self.check_port(&ruleset, &tag, port)?;
        }
        let created = match self.links()?.into_iter().find(|l| l.name == tap) {
            Some(l) if l.alias.as_deref() == Some(tag.as_str()) => false,
            Some(l) => {
                return Err(NetworkError::TapTaken {
                    tap: tap.to_string(),
                    vm_id: vm_id.to_string(),
                    owner: describe_owner(&l),
                })
            }
            None => {
                self.ip(links::add_tap(tap, self.capabilities().euid))?;
                true
            }
        };
        match self.configure(vm_id, net, &ruleset, plan) {
            Ok(()) => Ok(()),
            Err(e) if created => match self.ip(links::delete_link(tap)) {
                Ok(_) => Err(e),
                Err(undo) => {
                    tracing::warn!(error = %undo, tap, "rollback could not delete the TAP");
                    Err(NetworkError::RollbackFailed {
                        vm_id: vm_id.to_string(),
                        leftover: format!("TAP {tap}"),
                        source: Box::new(e),
                    })
                }
            },
            Err(e) => Err(e),
        }
    }

    /// Everything after the TAP exists. The nft transaction comes last and is atomic, so on failure
    /// only the TAP (with its address, route and sysctls, which go with it) needs undoing.
    fn configure(
        &self,
        vm_id: &str,
        net: &NetworkConfig,
        ruleset: &Ruleset,
        plan: &EgressPlan,
    ) -> Result<(), NetworkError> {
        let tap = net.tap_name();
        self.ip(links::tag_and_up(tap, &vm_tag(vm_id)))?;
        if net.ssh_host_port.is_some() {
            // Lets the replies of the DNATed SSH forward (addressed to 127.0.0.1) in on this TAP.
            self.cmds
                .write_file(&sysctl_path("ipv4", tap, "route_localnet"), "1")?;
        }
        // The guest network is IPv4 only; no link-local IPv6 path to the host either.
        let v6 = sysctl_path("ipv6", tap, "disable_ipv6");
        if self.cmds.read_file(&v6)?.is_some() {
            self.cmds.write_file(&v6, "1")?;
        }
        self.ip(links::gateway_addr(net))?;
        self.ip(links::guest_route(net))?;
        // Forwarding is host-wide; it is needed for NAT to the uplink and never switched off again
        // (other software may rely on it by then).
        if self.cmds.read_file(IP_FORWARD)?.as_deref().map(str::trim) != Some("1") {
            self.cmds.write_file(IP_FORWARD, "1")?;
        }
        let drops = firewall::detect(&*self.cmds, ruleset)?;
        firewall::ensure_accepts(&*self.cmds, &drops, ruleset)?;
        nft::apply(
            &*self.cmds,
            &nft::setup_script_with(
                vm_id,
                net,
                &ruleset.vm_rules(vm_id),
                plan,
                ruleset.has_egress_chain(vm_id),
            ),
        )
    }

    /// Replaces the egress policy of a VM whose network is set up, in one nft transaction (on failure
    /// the old policy stays in force). A VM without rules (stopped) is refused: its policy is applied
    /// by the next [`setup_vm_with`](Self::setup_vm_with).
    pub fn set_egress(
        &self,
        vm_id: &str,
        net: &NetworkConfig,
        plan: &EgressPlan,
    ) -> Result<(), NetworkError> {
        check_vm_id(vm_id)?;
        validate_tap_name(net.tap_name())?;
        self.capabilities().check_tap()?;
        let ruleset = nft::list_ruleset(&*self.cmds)?;
        let current = ruleset.vm_rules(vm_id);
        if !current.iter().any(|r| r.chain == "guest_egress") {
            return Err(NetworkError::NotSetUp {
                vm_id: vm_id.to_string(),
            });
        }
        let script =
            egress::update_script(vm_id, net, plan, &current, ruleset.has_egress_chain(vm_id));
        nft::apply(&*self.cmds, &script)
    }

    /// Replaces the addresses of a VM's allow-listed domains (after re-resolving them).
    pub fn refresh_domains(
        &self,
        vm_id: &str,
        domain_addrs: &[(std::net::Ipv4Addr, u32)],
    ) -> Result<(), NetworkError> {
        check_vm_id(vm_id)?;
        self.capabilities().check_tap()?;
        nft::apply(
            &*self.cmds,
            &egress::refresh_domains_script(vm_id, domain_addrs),
        )
    }

    /// Packets and bytes the VM's policy dropped since its network was set up; `None` when the VM has
    /// no egress counter (open policy, or no network set up).
    pub fn egress_drops(&self, vm_id: &str) -> Result<Option<(u64, u64)>, NetworkError> {
        check_vm_id(vm_id)?;
        self.capabilities().check_tap()?;
        if !nft::list_ruleset(&*self.cmds)?.has_egress_chain(vm_id) {
            return Ok(None);
        }
        let args = [
            "-j".to_string(),
            "list".into(),
            "counter".into(),
            nft::FAMILY.into(),
            nft::TABLE.into(),
            egress::counter_name(vm_id),
        ];
        let out = self.cmds.run("nft", &args, None)?;
        Ok(egress::parse_counter(&out))
    }

    fn check_port(&self, ruleset: &Ruleset, tag: &str, port: u16) -> Result<(), NetworkError> {
        let other = ruleset.smolvm_rules().find(|r| {
            r.chain == "nat_output"
                && r.tcp_dports.contains(&port)
                && r.comment.as_deref() != Some(tag)
        });
        if let Some(r) = other {
            let owner = r.comment.as_deref().and_then(parse_vm_tag).unwrap_or("?");
            return Err(NetworkError::PortTaken {
                port,
                holder: format!("smolvm forwards it to VM {owner:?}"),
            });
        }
        if self.cmds.loopback_port_in_use(port) {
            return Err(NetworkError::PortTaken {
                port,
                holder: "a process on this host is bound to it".into(),
            });
        }
        Ok(())
    }

    /// Removes the nft rules, TAP and route of one VM. Absent pieces are fine. A device with the TAP's
    /// name that is not this VM's is left alone.
    pub fn teardown_vm(&self, vm_id: &str, net: &NetworkConfig) -> Result<(), NetworkError> {
        check_vm_id(vm_id)?;
        validate_tap_name(net.tap_name())?;
        self.capabilities().check_tap()?;
        let ruleset = nft::list_ruleset(&*self.cmds)?;
        let mut script = nft::delete_script(&ruleset.vm_rules(vm_id));
        if ruleset.has_egress_chain(vm_id) {
            script.push_str(&egress::remove_objects_script(vm_id));
        }
        nft::apply(&*self.cmds, &script)?;
        let tag = vm_tag(vm_id);
        if let Some(l) = self.links()?.into_iter().find(|l| l.name == net.tap_name()) {
            let ours = l.alias.as_deref() == Some(tag.as_str())
                || (l.alias.is_none() && l.kind.as_deref() == Some("tun"));
            if ours {
                self.delete_link(&l.name)?;
            } else {
                tracing::warn!(tap = %l.name, owner = %describe_owner(&l), "not deleting a device that is not this VM's TAP");
            }
        }
        Ok(())
    }

    /// Deletes a link; one that vanished meanwhile is fine.
    fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        match self.ip(links::delete_link(name)) {
            Ok(_) => Ok(()),
            Err(e) if self.links()?.iter().all(|l| l.name != name) => {
                tracing::debug!(error = %e, name, "link already gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Finds TAPs named `smv-*` and rules tagged for VMs not in `known_vm_ids` (plus untagged `smv-*`
    /// TAPs, left by a setup interrupted before tagging) and removes them unless `dry_run`. Pass the ids
    /// of every VM that uses this host's network, whichever data directory it lives in.
    pub fn cleanup_orphans(
        &self,
        known_vm_ids: &BTreeSet<String>,
        dry_run: bool,
    ) -> Result<CleanupReport, NetworkError> {
        self.cleanup_where(
            &|id: Option<&str>| id.is_none_or(|id| !known_vm_ids.contains(id)),
            dry_run,
        )
    }

    /// Finds the TAP and rules tagged for `vm_id` and removes them unless `dry_run`: for a VM whose row
    /// is gone, without touching anything else.
    pub fn cleanup_vm(&self, vm_id: &str, dry_run: bool) -> Result<CleanupReport, NetworkError> {
        check_vm_id(vm_id)?;
        self.cleanup_where(&|id: Option<&str>| id == Some(vm_id), dry_run)
    }

    /// Removes tagged TAPs and rules whose VM id `orphan` accepts, and untagged `smv-*` TAPs if it
    /// accepts `None`.
    fn cleanup_where(
        &self,
        orphan: &dyn Fn(Option<&str>) -> bool,
        dry_run: bool,
    ) -> Result<CleanupReport, NetworkError> {
        self.capabilities().check_tap()?;
        let unknown = |id: &str| orphan(Some(id));
        let ruleset = nft::list_ruleset(&*self.cmds)?;
        let orphan_rules: Vec<_> = ruleset
            .smolvm_rules()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .and_then(parse_vm_tag)
                    .is_some_and(unknown)
            })
            .cloned()
            .collect();
        let mut report = CleanupReport {
            dry_run,
            taps: Vec::new(),
            rules: orphan_rules
                .iter()
                .map(|r| OrphanRule {
                    vm_id: r
                        .comment
                        .as_deref()
                        .and_then(parse_vm_tag)
                        .unwrap_or_default()
                        .to_string(),
                    chain: r.chain.clone(),
                    handle: r.handle,
                })
                .collect(),
        };
        for l in self.links()? {
            if !l.name.starts_with(TAP_PREFIX) {
                continue;
            }
            let vm_id = l.alias.as_deref().and_then(parse_vm_tag);
            let is_orphan = match vm_id {
                Some(id) => unknown(id),
                None => l.alias.is_none() && l.kind.as_deref() == Some("tun") && orphan(None),
            };
            if is_orphan {
                report.taps.push(OrphanTap {
                    name: l.name.clone(),
                    vm_id: vm_id.map(str::to_string),
                });
            }
        }
        let orphan_chains: Vec<String> = ruleset
            .chains
            .iter()
            .filter(|c| c.family == nft::FAMILY && c.table == nft::TABLE)
            .filter_map(|c| egress::chain_vm_id(&c.name))
            .filter(|id| unknown(id))
            .map(str::to_string)
            .collect();
        for id in &orphan_chains {
            report.rules.push(OrphanRule {
                vm_id: id.clone(),
                chain: egress::chain(id),
                handle: 0,
            });
        }
        if !dry_run {
            let mut script = nft::delete_script(&orphan_rules);
            for id in &orphan_chains {
                script.push_str(&egress::remove_objects_script(id));
            }
            nft::apply(&*self.cmds, &script)?;
            for t in &report.taps {
                self.delete_link(&t.name)?;
            }
        }
        Ok(report)
    }

    /// Forward chains of other firewalls whose policy is DROP (Docker). `setup_vm` adds accept rules for
    /// guest traffic to them; `doctor` reports them.
    pub fn detect_forward_drop(&self) -> Result<Vec<ForwardDropChain>, NetworkError> {
        self.capabilities().check_tap()?;
        let ruleset = nft::list_ruleset(&*self.cmds)?;
        firewall::detect(&*self.cmds, &ruleset)
    }

    /// Removes smolvm's table and the accept rules it added to other firewalls (uninstall). TAPs are
    /// removed by [`cleanup_orphans`](Self::cleanup_orphans).
    pub fn remove_all(&self) -> Result<(), NetworkError> {
        self.capabilities().check_tap()?;
        if nft::list_ruleset(&*self.cmds)?.has_smolvm_table() {
            nft::apply(
                &*self.cmds,
                &format!("delete table {} {}\n", nft::FAMILY, nft::TABLE),
            )?;
        }
        firewall::remove_accepts(&*self.cmds)
    }
}

fn describe_owner(l: &LinkInfo) -> String {
    let kind = l.kind.as_deref().unwrap_or("plain");
    match (
        l.alias.as_deref(),
        l.alias.as_deref().and_then(parse_vm_tag),
    ) {
        (_, Some(id)) => format!("{kind} device tagged for smolvm VM {id:?}"),
        (Some(a), None) => format!("{kind} device with alias {a:?}"),
        (None, None) => format!("untagged {kind} device"),
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "host_egress_tests.rs"]
mod egress_tests;
