//! Other firewalls whose forward policy is DROP (Docker's iptables rules, some hand-written nft setups).
//!
//! Netfilter runs every base chain registered on a hook, in priority order. An `accept` verdict ends
//! only the chain that issued it; the packet then enters the next base chain on the hook. A `drop`
//! anywhere is final. Docker sets the policy of iptables' `FORWARD` chain (table `ip filter`, priority 0)
//! to DROP and accepts only its own bridges' traffic, so forwarded guest traffic that our own `forward`
//! chain accepts is still dropped there: no priority of our chain can change that. What works is an
//! accept inside that chain, before its policy applies. Docker reserves the `DOCKER-USER` chain (jumped to
//! first from `FORWARD`) for exactly this, so smolvm inserts there, through the `iptables` tool that owns
//! the table (native nft rules in an iptables-nft table could confuse iptables when it lists them);
//! without `DOCKER-USER` it inserts into `FORWARD`. A native nft table with a DROP forward policy gets the
//! same two rules with `nft insert` (as JSON, which takes any chain name). The rules accept only traffic from `smv-*` and replies to it: our
//! own chain still drops guest<->guest and unsolicited inbound traffic, and a drop in any chain wins.

use super::commands::NetCommands;
use super::nft::{self, Ruleset, FOREIGN_TAG};
use super::NetworkError;

/// Which tool manages a chain with a DROP forward policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDropManager {
    /// The `iptables` tool (Docker): table `ip filter`, via iptables-nft or iptables-legacy.
    Iptables,
    /// A native nftables table.
    Nft,
}

/// A forward base chain of another firewall whose policy is DROP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardDropChain {
    /// nft family (`ip`, `inet`, ...).
    pub family: String,
    /// Table name.
    pub table: String,
    /// Chain name.
    pub chain: String,
    /// Who manages it (and so how smolvm adds its accept rules).
    pub manager: ForwardDropManager,
}

impl std::fmt::Display for ForwardDropChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = match self.manager {
            ForwardDropManager::Iptables => "iptables",
            ForwardDropManager::Nft => "nftables",
        };
        write!(
            f,
            "{} {} {} (policy drop, managed by {by})",
            self.family, self.table, self.chain
        )
    }
}

/// Which `iptables` variant is installed, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iptables {
    Absent,
    Nft,
    Legacy,
}

fn iptables_variant(cmds: &dyn NetCommands) -> Iptables {
    match cmds.run("iptables", &["-V".to_string()], None) {
        Ok(v) if v.contains("legacy") => Iptables::Legacy,
        Ok(_) => Iptables::Nft,
        Err(_) => Iptables::Absent,
    }
}

fn ipt(cmds: &dyn NetCommands, args: &[&str]) -> Result<String, NetworkError> {
    // -w: wait for the xtables lock instead of failing while Docker holds it.
    let argv: Vec<String> = std::iter::once("-w")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect();
    cmds.run("iptables", &argv, None)
}

/// Finds forward chains of other firewalls with a DROP policy. `ruleset` is `nft -j list ruleset`.
pub(crate) fn detect(
    cmds: &dyn NetCommands,
    ruleset: &Ruleset,
) -> Result<Vec<ForwardDropChain>, NetworkError> {
    let variant = iptables_variant(cmds);
    let mut out: Vec<ForwardDropChain> = ruleset
        .chains
        .iter()
        .filter(|c| c.hook.as_deref() == Some("forward") && c.policy.as_deref() == Some("drop"))
        .filter(|c| !(c.family == nft::FAMILY && c.table == nft::TABLE))
        .map(|c| ForwardDropChain {
            family: c.family.clone(),
            table: c.table.clone(),
            chain: c.name.clone(),
            manager: if variant == Iptables::Nft && c.family == "ip" && c.table == "filter" {
                ForwardDropManager::Iptables
            } else {
                ForwardDropManager::Nft
            },
        })
        .collect();
    // iptables-legacy tables are invisible to nft. Only ask when the legacy filter table is loaded, so
    // that the question does not load kernel modules on hosts that never used it.
    if variant == Iptables::Legacy {
        let loaded = cmds
            .read_file("/proc/net/ip_tables_names")?
            .unwrap_or_default();
        if loaded.lines().any(|l| l.trim() == "filter") {
            let rules = ipt(cmds, &["-S", "FORWARD"])?;
            if rules.lines().any(|l| l.trim() == "-P FORWARD DROP") {
                out.push(ForwardDropChain {
                    family: "ip".into(),
                    table: "filter".into(),
                    chain: "FORWARD".into(),
                    manager: ForwardDropManager::Iptables,
                });
            }
        }
    }
    Ok(out)
}

const IN_RULE: [&str; 8] = [
    "-i",
    "smv-+",
    "-m",
    "comment",
    "--comment",
    FOREIGN_TAG,
    "-j",
    "ACCEPT",
];
const REPLY_RULE: [&str; 12] = [
    "-o",
    "smv-+",
    "-m",
    "conntrack",
    "--ctstate",
    "RELATED,ESTABLISHED",
    "-m",
    "comment",
    "--comment",
    FOREIGN_TAG,
    "-j",
    "ACCEPT",
];

/// Makes sure every chain in `drops` accepts guest traffic (idempotent).
pub(crate) fn ensure_accepts(
    cmds: &dyn NetCommands,
    drops: &[ForwardDropChain],
    ruleset: &Ruleset,
) -> Result<(), NetworkError> {
    let mut iptables_done = false;
    for d in drops {
        match d.manager {
            ForwardDropManager::Iptables if !iptables_done => {
                iptables_done = true;
                let chain = if ipt(cmds, &["-S", "DOCKER-USER"]).is_ok() {
                    "DOCKER-USER"
                } else {
                    d.chain.as_str()
                };
                for rule in [&REPLY_RULE[..], &IN_RULE[..]] {
                    let check: Vec<&str> = ["-C", chain].iter().chain(rule).copied().collect();
                    if ipt(cmds, &check).is_err() {
                        let insert: Vec<&str> = ["-I", chain].iter().chain(rule).copied().collect();
                        ipt(cmds, &insert)?;
                    }
                }
            }
            ForwardDropManager::Iptables => {}
            ForwardDropManager::Nft => {
                let present = ruleset.rules.iter().any(|r| {
                    r.family == d.family
                        && r.table == d.table
                        && r.chain == d.chain
                        && r.comment.as_deref() == Some(FOREIGN_TAG)
                });
                if !present {
                    let doc = nft::foreign_accept_json(&d.family, &d.table, &d.chain);
                    nft::apply_json(cmds, &doc)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes every accept rule smolvm added to other firewalls.
pub(crate) fn remove_accepts(cmds: &dyn NetCommands) -> Result<(), NetworkError> {
    if iptables_variant(cmds) != Iptables::Absent {
        for chain in ["DOCKER-USER", "FORWARD"] {
            for rule in [&REPLY_RULE[..], &IN_RULE[..]] {
                let del: Vec<&str> = ["-D", chain].iter().chain(rule).copied().collect();
                // -D removes one copy per call; stop when none is left (or the chain is absent).
                for _ in 0..8 {
                    if ipt(cmds, &del).is_err() {
                        break;
                    }
                }
            }
        }
    }
    // Listed after the iptables removal, so its rules are gone from the listing too.
    let ruleset = nft::list_ruleset(cmds)?;
    let ours: Vec<_> = ruleset
        .rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some(FOREIGN_TAG))
        .filter(|r| !(r.family == nft::FAMILY && r.table == nft::TABLE))
        .cloned()
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    nft::apply_json(cmds, &nft::delete_json(&ours))
}
