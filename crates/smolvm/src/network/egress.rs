//! The nft side of egress policies: per-VM chain, sets and drop counter in `inet smolvm`.
//!
//! ```text
//! guest_egress:  iifname <tap> ip saddr <guest> accept              (policy open, as before policies)
//!                iifname <tap> ip saddr <guest> jump eg_<id>        (none / allow-list)
//! eg_<id>:       ip daddr @egs_<id> meta l4proto { tcp, udp } th dport 53 accept   (allow-list: DNS
//!                                                                   to the guest's name servers)
//!                ip daddr @egn_<id> [ports] accept                  (allow-list CIDRs, interval set)
//!                ip daddr @egd_<id> [ports] accept                  (domain addresses, with timeouts)
//!                counter name egc_<id> drop                         (everything else, counted)
//! ```
//!
//! Every object of a VM is created by every non-open script (`add` is idempotent, sets are flushed and
//! refilled), so one script both creates and updates, in one atomic transaction: a policy change never
//! has a moment with no rules or half of them. The counter is only added, never reset by an update.
//! Domain addresses carry an element timeout a little longer than their TTL: if nobody re-resolves, they
//! expire and the domain is denied (fail closed), instead of an old address staying allowed for ever.
//!
//! Names: `eg_`, `egn_`, `egd_`, `egs_`, `egc_` + the VM id (validated: lowercase letters, digits, `-`,
//! which nft accepts in unquoted names).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::nft::{RuleInfo, FAMILY, TABLE};
use super::policy::NetworkPolicy;
use super::vm_tag;
use crate::info::NetworkConfig;

/// Prefix of the per-VM egress chain; the rest is the VM id.
pub(crate) const CHAIN_PREFIX: &str = "eg_";
/// Seconds an element outlives its TTL, so a refresh that runs a little late does not cut traffic.
pub(crate) const TIMEOUT_GRACE_SECS: u32 = 30;
/// Shortest refresh interval: a TTL of 0 or 1 must not make smolvm resolve in a tight loop.
pub(crate) const MIN_TTL_SECS: u32 = 5;

/// The VM's egress chain name.
pub(crate) fn chain(vm_id: &str) -> String {
    format!("{CHAIN_PREFIX}{vm_id}")
}

/// The VM id of an egress chain name, if it is one.
pub(crate) fn chain_vm_id(chain: &str) -> Option<&str> {
    chain
        .strip_prefix(CHAIN_PREFIX)
        .filter(|id| crate::config::validate_vm_id(id).is_ok())
}

/// What the nft objects of one VM's policy are filled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// The policy.
    pub policy: NetworkPolicy,
    /// The guest's name servers (DNS to them passes under an allow-list).
    pub dns_servers: Vec<Ipv4Addr>,
    /// Current addresses of the allow-list's domains with their TTL in seconds.
    pub domain_addrs: Vec<(Ipv4Addr, u32)>,
}

impl EgressPlan {
    /// The plan of the open policy (nothing to fill).
    pub fn open() -> Self {
        EgressPlan {
            policy: NetworkPolicy::Open,
            dns_servers: Vec::new(),
            domain_addrs: Vec::new(),
        }
    }
}

/// The rule in `guest_egress` that sends the VM's traffic to its policy.
pub(crate) fn dispatch_rule(vm_id: &str, net: &NetworkConfig, policy: &NetworkPolicy) -> String {
    let verdict = if policy.is_open() {
        "accept".to_string()
    } else {
        format!("jump {}", chain(vm_id))
    };
    format!(
        "add rule {FAMILY} {TABLE} guest_egress iifname \"{tap}\" ip saddr {guest} {verdict} comment \"{tag}\"\n",
        tap = net.tap_name(),
        guest = net.guest_ip,
        tag = vm_tag(vm_id)
    )
}

/// Creates or refills the VM's chain, sets and counter for a non-open plan; empty for open.
pub(crate) fn objects_script(vm_id: &str, plan: &EgressPlan) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    let allow = match &plan.policy {
        NetworkPolicy::Open => return s,
        NetworkPolicy::None => None,
        NetworkPolicy::Allow(l) => Some(l),
    };
    let (ch, nets, doms, dns, ctr) = names(vm_id);
    let _ = writeln!(s, "add chain {t} {ch}");
    let _ = writeln!(s, "flush chain {t} {ch}");
    let _ = writeln!(
        s,
        "add set {t} {nets} {{ type ipv4_addr; flags interval; auto-merge; }}"
    );
    let _ = writeln!(s, "flush set {t} {nets}");
    let _ = writeln!(s, "add set {t} {doms} {{ type ipv4_addr; flags timeout; }}");
    let _ = writeln!(s, "flush set {t} {doms}");
    let _ = writeln!(s, "add set {t} {dns} {{ type ipv4_addr; }}");
    let _ = writeln!(s, "flush set {t} {dns}");
    let _ = writeln!(s, "add counter {t} {ctr}");
    if let Some(list) = allow {
        let cidrs: Vec<String> = list.networks().iter().map(ToString::to_string).collect();
        add_elements(&mut s, &t, &nets, &cidrs);
        let mut seen = Vec::new();
        let doms_elems: Vec<String> = plan
            .domain_addrs
            .iter()
            .filter(|(a, _)| {
                let new = !seen.contains(a);
                seen.push(*a);
                new
            })
            .map(|(a, ttl)| format!("{a} timeout {}s", element_timeout(*ttl)))
            .collect();
        add_elements(&mut s, &t, &doms, &doms_elems);
        let servers: Vec<String> = plan.dns_servers.iter().map(ToString::to_string).collect();
        add_elements(&mut s, &t, &dns, &servers);
        let ports = if list.ports.is_empty() {
            String::new()
        } else {
            let p: Vec<String> = list.ports.iter().map(ToString::to_string).collect();
            format!(
                " meta l4proto {{ tcp, udp }} th dport {{ {} }}",
                p.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "add rule {t} {ch} ip daddr @{dns} meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
        let _ = writeln!(s, "add rule {t} {ch} ip daddr @{nets}{ports} accept");
        let _ = writeln!(s, "add rule {t} {ch} ip daddr @{doms}{ports} accept");
    }
    let _ = writeln!(s, "add rule {t} {ch} counter name \"{ctr}\" drop");
    s
}

/// Removes the VM's egress chain, sets and counter (absent ones are fine: each is added before it is
/// deleted). The rule jumping to the chain must be deleted earlier in the same transaction.
pub(crate) fn remove_objects_script(vm_id: &str) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let (ch, nets, doms, dns, ctr) = names(vm_id);
    let mut s = String::new();
    let _ = writeln!(s, "add chain {t} {ch}");
    let _ = writeln!(s, "flush chain {t} {ch}");
    let _ = writeln!(s, "delete chain {t} {ch}");
    for (set, spec) in [
        (&nets, "type ipv4_addr; flags interval; auto-merge;"),
        (&doms, "type ipv4_addr; flags timeout;"),
        (&dns, "type ipv4_addr;"),
    ] {
        let _ = writeln!(s, "add set {t} {set} {{ {spec} }}");
        let _ = writeln!(s, "delete set {t} {set}");
    }
    let _ = writeln!(s, "add counter {t} {ctr}");
    let _ = writeln!(s, "delete counter {t} {ctr}");
    s
}

/// Changes the policy of a VM whose network is set up: deletes its current `guest_egress` rules
/// (`current`, by handle), then writes the new dispatch rule and objects (or removes the objects when
/// the new policy is open and `had_chain`). One transaction.
pub(crate) fn update_script(
    vm_id: &str,
    net: &NetworkConfig,
    plan: &EgressPlan,
    current: &[RuleInfo],
    had_chain: bool,
) -> String {
    let mut s = String::new();
    let dispatch: Vec<RuleInfo> = current
        .iter()
        .filter(|r| r.chain == "guest_egress")
        .cloned()
        .collect();
    s.push_str(&super::nft::delete_script(&dispatch));
    if plan.policy.is_open() {
        if had_chain {
            s.push_str(&remove_objects_script(vm_id));
        }
    } else {
        s.push_str(&objects_script(vm_id, plan));
    }
    s.push_str(&dispatch_rule(vm_id, net, &plan.policy));
    s
}

/// Refills only the domain set (re-resolution); one transaction, so no moment without addresses.
pub(crate) fn refresh_domains_script(vm_id: &str, domain_addrs: &[(Ipv4Addr, u32)]) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let (_, _, doms, _, _) = names(vm_id);
    let mut s = format!("flush set {t} {doms}\n");
    let mut elems: Vec<String> = Vec::new();
    for (a, ttl) in domain_addrs {
        let e = format!("{a} timeout {}s", element_timeout(*ttl));
        if !elems.iter().any(|x| x.starts_with(&format!("{a} "))) {
            elems.push(e);
        }
    }
    add_elements(&mut s, &t, &doms, &elems);
    s
}

/// The element timeout for a TTL: the refresh interval plus grace.
pub(crate) fn element_timeout(ttl: u32) -> u32 {
    ttl.max(MIN_TTL_SECS).saturating_add(TIMEOUT_GRACE_SECS)
}

/// Parses `nft -j list counter inet smolvm egc_<id>`: (packets, bytes).
pub(crate) fn parse_counter(json: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("nftables")?.as_array()?.iter().find_map(|item| {
        let c = item.get("counter")?;
        Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))
    })
}

/// The counter's name of a VM.
pub(crate) fn counter_name(vm_id: &str) -> String {
    names(vm_id).4
}

fn names(vm_id: &str) -> (String, String, String, String, String) {
    (
        chain(vm_id),
        format!("egn_{vm_id}"),
        format!("egd_{vm_id}"),
        format!("egs_{vm_id}"),
        format!("egc_{vm_id}"),
    )
}

fn add_elements(s: &mut String, t: &str, set: &str, elems: &[String]) {
    if !elems.is_empty() {
        let _ = writeln!(s, "add element {t} {set} {{ {} }}", elems.join(", "));
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
