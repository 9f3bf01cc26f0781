//! The nftables side: the exact scripts smolvm feeds to `nft -f -` and the parsing of `nft -j` listings.
//!
//! ```text
//! table inet smolvm {
//!   chain forward         filter/forward  prio 0:  guest<->guest drop; into guests only established;
//!                                                  guests -> jump guest_egress; anything else from a TAP drop
//!   chain guest_egress    (regular)                per VM: iifname <tap> ip saddr <guest> accept (policy
//!                                                  open) or jump eg_<id> (none / allow-list)
//!   chain eg_<id>, sets egn_/egd_/egs_<id>, counter egc_<id>: the VM's egress policy (see [`egress`])
//!   chain input           filter/input    prio 0:  from TAPs only established/related, else drop
//!   chain nat_output      nat/output      prio -100: per VM: 127.0.0.1:<port> -> dnat <guest>:22
//!   chain nat_postrouting nat/postrouting prio 100:  per VM: masquerade to the uplink; snat the forwarded
//!                                                  SSH connection to the gateway address
//! }
//! ```
//!
//! The base chains are created with `add` (idempotent) and the two filter chains are flushed and refilled
//! in the same transaction, so running the base script again never duplicates a rule. Per-VM rules carry
//! the comment `smolvm:<vm_id>` and are removed by handle.
//!
//! The SSH forward is loopback-only by construction: the DNAT rule sits in the `output` hook, which sees
//! only locally generated packets, and matches `ip daddr 127.0.0.1`. A packet to 127.0.0.1 from a
//! different interface is a martian and dropped by the kernel. After the DNAT, the reply from the guest
//! is addressed to 127.0.0.1, which the kernel accepts on the TAP only because `route_localnet` is set
//! on that TAP; the SNAT to the gateway gives the guest a source it can answer. `route_localnet` would
//! also let a guest address 127.0.0.1 on the host: the `input` chain drops every new connection from a
//! TAP, so it cannot.

use std::fmt::Write as _;

use serde_json::Value;

use super::commands::NetCommands;
use super::egress;
use super::policy::NetworkPolicy;
use super::{vm_tag, NetworkError, TAP_PREFIX};
use crate::info::NetworkConfig;

/// Family of smolvm's table.
pub(crate) const FAMILY: &str = "inet";
/// Name of smolvm's table.
pub(crate) const TABLE: &str = "smolvm";
/// Comment on the accept rules smolvm adds to another firewall's forward chain.
pub(crate) const FOREIGN_TAG: &str = "smolvm";

/// Creates the table and its chains if missing and (re)writes the static rules, atomically.
pub(crate) fn base_script() -> String {
    let t = format!("{FAMILY} {TABLE}");
    let any = format!("\"{TAP_PREFIX}*\"");
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {t}"));
    line(format!("add chain {t} guest_egress"));
    // Priority 0 (filter). No priority lets an accept here override another table's DROP: see
    // `firewall` for how hosts with a DROP forward policy (Docker) are handled.
    line(format!(
        "add chain {t} forward {{ type filter hook forward priority 0; policy accept; }}"
    ));
    line(format!("flush chain {t} forward"));
    line(format!(
        "add rule {t} forward iifname {any} oifname {any} drop"
    ));
    line(format!(
        "add rule {t} forward oifname {any} ct state established,related accept"
    ));
    line(format!("add rule {t} forward oifname {any} drop"));
    line(format!(
        "add rule {t} forward iifname {any} jump guest_egress"
    ));
    line(format!("add rule {t} forward iifname {any} drop"));
    line(format!(
        "add chain {t} input {{ type filter hook input priority 0; policy accept; }}"
    ));
    line(format!("flush chain {t} input"));
    line(format!(
        "add rule {t} input iifname {any} ct state established,related accept"
    ));
    line(format!("add rule {t} input iifname {any} drop"));
    line(format!(
        "add chain {t} nat_output {{ type nat hook output priority -100; policy accept; }}"
    ));
    line(format!(
        "add chain {t} nat_postrouting {{ type nat hook postrouting priority 100; policy accept; }}"
    ));
    s
}

/// The per-VM rules of `vm_id` under the open egress policy. Names must be validated by the caller
/// (TAP name, VM id).
#[cfg(test)]
pub(crate) fn vm_rules_script(vm_id: &str, net: &NetworkConfig) -> String {
    vm_rules_script_with(vm_id, net, &NetworkPolicy::Open)
}

/// The per-VM rules of `vm_id`; its traffic to the uplink goes through `policy` (see [`egress`]).
pub(crate) fn vm_rules_script_with(
    vm_id: &str,
    net: &NetworkConfig,
    policy: &NetworkPolicy,
) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let tag = vm_tag(vm_id);
    let tap = net.tap_name();
    let guest = net.guest_ip;
    let mut s = egress::dispatch_rule(vm_id, net, policy);
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "add rule {t} nat_postrouting ip saddr {guest} oifname != \"{TAP_PREFIX}*\" masquerade comment \"{tag}\""
    );
    if let Some(port) = net.ssh_host_port {
        let _ = writeln!(
            s,
            "add rule {t} nat_output ip daddr 127.0.0.1 tcp dport {port} dnat ip to {guest}:22 comment \"{tag}\""
        );
        let _ = writeln!(
            s,
            "add rule {t} nat_postrouting oifname \"{tap}\" ip saddr 127.0.0.0/8 ip daddr {guest} tcp dport 22 snat ip to {gw} comment \"{tag}\"",
            gw = net.gateway_ip
        );
    }
    s
}

/// Deletes the given rules by handle.
pub(crate) fn delete_script(rules: &[RuleInfo]) -> String {
    rules
        .iter()
        .map(|r| {
            format!(
                "delete rule {} {} {} handle {}\n",
                r.family, r.table, r.chain, r.handle
            )
        })
        .collect()
}

/// The whole setup transaction of one VM under the open policy: base, removal of its stale rules, its
/// rules.
#[cfg(test)]
pub(crate) fn setup_script(vm_id: &str, net: &NetworkConfig, stale: &[RuleInfo]) -> String {
    setup_script_with(vm_id, net, stale, &egress::EgressPlan::open(), false)
}

/// The whole setup transaction of one VM: base, removal of its stale rules, its egress objects (or
/// their removal when the policy is open and `had_chain`: a change made while the VM was down), its
/// rules.
pub(crate) fn setup_script_with(
    vm_id: &str,
    net: &NetworkConfig,
    stale: &[RuleInfo],
    plan: &egress::EgressPlan,
    had_chain: bool,
) -> String {
    let objects = if plan.policy.is_open() {
        if had_chain {
            egress::remove_objects_script(vm_id)
        } else {
            String::new()
        }
    } else {
        egress::objects_script(vm_id, plan)
    };
    format!(
        "{}{}{}{}",
        base_script(),
        delete_script(stale),
        objects,
        vm_rules_script_with(vm_id, net, &plan.policy)
    )
}

/// Accept rules for guest traffic in another firewall's forward chain, as an `nft -j -f -` document.
/// JSON because other tables' names are not ours to validate: a chain may be named like an nft keyword
/// (`fwd`), which the text syntax cannot express, and JSON needs no quoting.
pub(crate) fn foreign_accept_json(family: &str, table: &str, chain: &str) -> String {
    let any = format!("{TAP_PREFIX}*");
    let rule = |expr: Value| {
        serde_json::json!({"insert": {"rule": {
            "family": family, "table": table, "chain": chain, "comment": FOREIGN_TAG, "expr": expr
        }}})
    };
    // `insert` puts them first, ahead of the other table's own drops; inserted in reverse order.
    let replies = rule(serde_json::json!([
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": any}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
        {"accept": null}
    ]));
    let from_guests = rule(serde_json::json!([
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": any}},
        {"accept": null}
    ]));
    serde_json::json!({"nftables": [replies, from_guests]}).to_string()
}

/// Deletes rules by handle, as an `nft -j -f -` document (any table and chain names).
pub(crate) fn delete_json(rules: &[RuleInfo]) -> String {
    let cmds: Vec<Value> = rules
        .iter()
        .map(|r| {
            serde_json::json!({"delete": {"rule": {
                "family": r.family, "table": r.table, "chain": r.chain, "handle": r.handle
            }}})
        })
        .collect();
    serde_json::json!({ "nftables": cmds }).to_string()
}

/// Runs `nft -j list ruleset` and parses it.
pub(crate) fn list_ruleset(cmds: &dyn NetCommands) -> Result<Ruleset, NetworkError> {
    let args = ["-j", "list", "ruleset"].map(str::to_string);
    let out = cmds.run("nft", &args, None)?;
    Ruleset::parse(&out).map_err(|source| NetworkError::Parse {
        command: "nft -j list ruleset".into(),
        source,
    })
}

/// Feeds `script` to `nft -f -` (one atomic transaction). An empty script is not run.
pub(crate) fn apply(cmds: &dyn NetCommands, script: &str) -> Result<(), NetworkError> {
    if script.is_empty() {
        return Ok(());
    }
    cmds.run("nft", &["-f".to_string(), "-".to_string()], Some(script))
        .map(drop)
}

/// Feeds a JSON document to `nft -j -f -` (one atomic transaction).
pub(crate) fn apply_json(cmds: &dyn NetCommands, doc: &str) -> Result<(), NetworkError> {
    let args = ["-j", "-f", "-"].map(str::to_string);
    cmds.run("nft", &args, Some(doc)).map(drop)
}

/// A base chain or regular chain from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainInfo {
    /// Family (`ip`, `inet`, ...).
    pub family: String,
    /// Table name.
    pub table: String,
    /// Chain name.
    pub name: String,
    /// Hook of a base chain.
    pub hook: Option<String>,
    /// Policy of a base chain.
    pub policy: Option<String>,
}

/// A rule from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleInfo {
    /// Family.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// Handle, for deletion.
    pub handle: u64,
    /// Comment, if any.
    pub comment: Option<String>,
    /// TCP destination ports the rule matches.
    pub tcp_dports: Vec<u16>,
}

/// Chains and rules of an `nft -j list ...` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ruleset {
    /// Tables as (family, name).
    pub tables: Vec<(String, String)>,
    /// All chains.
    pub chains: Vec<ChainInfo>,
    /// All rules.
    pub rules: Vec<RuleInfo>,
}

impl Ruleset {
    /// Parses `nft -j list ruleset` (or `list table ...`). Empty output is an empty ruleset.
    pub(crate) fn parse(json: &str) -> Result<Ruleset, serde_json::Error> {
        if json.trim().is_empty() {
            return Ok(Ruleset::default());
        }
        let v: Value = serde_json::from_str(json)?;
        let mut out = Ruleset::default();
        let items = v.get("nftables").and_then(Value::as_array);
        for item in items.into_iter().flatten() {
            if let Some(t) = item.get("table") {
                out.tables.push((s(t, "family"), s(t, "name")));
            } else if let Some(c) = item.get("chain") {
                out.chains.push(ChainInfo {
                    family: s(c, "family"),
                    table: s(c, "table"),
                    name: s(c, "name"),
                    hook: c.get("hook").and_then(Value::as_str).map(str::to_string),
                    policy: c.get("policy").and_then(Value::as_str).map(str::to_string),
                });
            } else if let Some(r) = item.get("rule") {
                out.rules.push(RuleInfo {
                    family: s(r, "family"),
                    table: s(r, "table"),
                    chain: s(r, "chain"),
                    handle: r.get("handle").and_then(Value::as_u64).unwrap_or(0),
                    comment: r.get("comment").and_then(Value::as_str).map(str::to_string),
                    tcp_dports: tcp_dports(r.get("expr")),
                });
            }
        }
        Ok(out)
    }

    /// True if smolvm's table exists.
    pub(crate) fn has_smolvm_table(&self) -> bool {
        self.tables.iter().any(|(f, n)| f == FAMILY && n == TABLE)
    }

    /// Rules in smolvm's table.
    pub(crate) fn smolvm_rules(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules
            .iter()
            .filter(|r| r.family == FAMILY && r.table == TABLE)
    }

    /// True if the egress chain of `vm_id` exists (its policy is not open).
    pub(crate) fn has_egress_chain(&self, vm_id: &str) -> bool {
        let name = egress::chain(vm_id);
        self.chains
            .iter()
            .any(|c| c.family == FAMILY && c.table == TABLE && c.name == name)
    }

    /// Rules in smolvm's table tagged for `vm_id`.
    pub(crate) fn vm_rules(&self, vm_id: &str) -> Vec<RuleInfo> {
        let tag = vm_tag(vm_id);
        self.smolvm_rules()
            .filter(|r| r.comment.as_deref() == Some(tag.as_str()))
            .cloned()
            .collect()
    }
}

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Ports of `tcp dport == N` matches in a rule's expression list.
fn tcp_dports(expr: Option<&Value>) -> Vec<u16> {
    let mut ports = Vec::new();
    for e in expr.and_then(Value::as_array).into_iter().flatten() {
        let Some(m) = e.get("match") else { continue };
        let payload = m.get("left").and_then(|l| l.get("payload"));
        let is_dport = payload.is_some_and(|p| {
            p.get("protocol").and_then(Value::as_str) == Some("tcp")
                && p.get("field").and_then(Value::as_str) == Some("dport")
        });
        if let Some(port) = m
            .get("right")
            .and_then(Value::as_u64)
            .filter(|_| is_dport)
            .and_then(|p| u16::try_from(p).ok())
        {
            ports.push(port);
        }
    }
    ports
}

#[cfg(test)]
#[path = "nft_tests.rs"]
pub(crate) mod tests;
