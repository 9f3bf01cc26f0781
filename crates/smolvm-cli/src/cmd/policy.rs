//! `smolvm policy set|show|refresh` and the `--egress/--allow/--allow-port` options of `create`/`run`:
//! what a VM's guest may reach beyond its gateway (see `smolvm::network::policy`).
//!
//! One shape for both places: `--egress open|none`, or an allow-list given by repeating `--allow DEST`
//! (a CIDR, an address or a domain name) and optionally `--allow-port PORT` (TCP/UDP destination ports;
//! none = all). Every value is checked before anything changes, and a bad one is named.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use smolvm::{Cidr, NetworkPolicy};

use super::common::manager;
use crate::output::print_json;
use crate::Cli;

/// `--egress` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EgressWord {
    /// Everything (NAT to the uplink).
    Open,
    /// Nothing beyond the gateway (commands through the agent still work).
    None,
}

/// The policy options shared by `create`, `run` and `policy set`.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Egress policy: open (default) or none. For an allow-list use --allow instead.
    #[arg(long, value_enum, conflicts_with_all = ["allow", "allow_port"])]
    pub egress: Option<EgressWord>,
    /// Allow traffic to this destination: a CIDR (10.0.0.0/8), an address or a domain name (resolved
    /// by smolvm on the host, re-resolved on its TTL). Repeatable; implies an allow-list policy.
    #[arg(long, value_name = "DEST")]
    pub allow: Vec<String>,
    /// Limit the allowed destinations to these TCP/UDP ports (repeatable; default: every port).
    #[arg(long, value_name = "PORT", requires = "allow")]
    pub allow_port: Vec<u16>,
}

impl PolicyArgs {
    /// The policy the options describe, validated; `None` when none of them was given.
    pub fn policy(&self) -> anyhow::Result<Option<NetworkPolicy>> {
        if let Some(w) = self.egress {
            return Ok(Some(match w {
                EgressWord::Open => NetworkPolicy::Open,
                EgressWord::None => NetworkPolicy::None,
            }));
        }
        if self.allow.is_empty() {
            return Ok(None);
        }
        let (cidrs, domains): (Vec<&String>, Vec<&String>) =
            self.allow.iter().partition(|d| looks_like_address(d));
        Ok(Some(NetworkPolicy::allow(
            cidrs.into_iter().cloned(),
            domains.into_iter().cloned(),
            self.allow_port.iter().copied(),
        )?))
    }
}

/// Digits, dots and a slash only: meant as an address or CIDR (so `10.0.0.1/8` is reported as a bad
/// CIDR, not as a bad domain name).
fn looks_like_address(d: &str) -> bool {
    d.parse::<Cidr>().is_ok()
        || d.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
}

/// Arguments of `smolvm policy`.
#[derive(Debug, Args)]
pub struct PolicyCmd {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The `smolvm policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace a VM's egress policy; in force when the command returns if the VM is running (else at
    /// its next start): `smolvm policy set ID --egress none`, `... --allow 10.0.0.0/8 --allow-port 443`.
    Set {
        /// The VM id.
        id: String,
        /// The new policy.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Print the new status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's policy and how many packets it dropped.
    Show {
        /// The VM id.
        id: String,
        /// Print JSON: {"vm_id", "policy", "active", "dropped_packets", "dropped_bytes"}.
        #[arg(long)]
        json: bool,
    },
    /// Re-resolve the allow-listed domains now and update the VM's rules; with --watch keep doing it on
    /// each TTL until the VM stops or is deleted (domain addresses expire shortly after their TTL
    /// when nothing refreshes them).
    Refresh {
        /// The VM id.
        id: String,
        /// Keep refreshing on each TTL.
        #[arg(long)]
        watch: bool,
        /// Print each refresh as a JSON line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `smolvm policy ...`.
pub fn run(cli: &Cli, a: &PolicyCmd) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    match &a.command {
        PolicyCommand::Set { id, policy, json } => {
            let Some(p) = policy.policy()? else {
                anyhow::bail!(
                    "give the policy: --egress open|none, or --allow DEST [--allow-port PORT]"
                );
            };
            m.set_network_policy(id, p)?;
            show(&m, id, *json)?;
        }
        PolicyCommand::Show { id, json } => show(&m, id, *json)?,
        PolicyCommand::Refresh { id, watch, json } => loop {
            let r = m.refresh_network_policy(id)?;
            if *json {
                print_json(&r)?;
            } else {
                for (name, addrs) in &r.domains {
                    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    println!("{name}: {}", list.join(", "));
                }
                for (name, why) in &r.failures {
                    eprintln!("warning: {name}: {why}");
                }
            }
            if !*watch {
                break;
            }
            std::thread::sleep(r.next_refresh.max(Duration::from_secs(1)));
            // A VM that was deleted or stopped meanwhile ends the watch normally.
            let live = match m.get(id) {
                Ok(info) => matches!(
                    info.status,
                    smolvm::VmState::Created | smolvm::VmState::Running | smolvm::VmState::Paused
                ),
                Err(smolvm::Error::VmNotFound(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if !live {
                break;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn show(m: &smolvm::SmolVmManager, id: &str, json: bool) -> anyhow::Result<()> {
    let s = m.network_policy_status(id)?;
    if json {
        return print_json(&s);
    }
    println!("policy:  {}", s.policy);
    println!("active:  {}", s.active);
    if let (Some(p), Some(b)) = (s.dropped_packets, s.dropped_bytes) {
        println!("dropped: {p} packets, {b} bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(egress: Option<EgressWord>, allow: &[&str], ports: &[u16]) -> PolicyArgs {
        PolicyArgs {
            egress,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_port: ports.to_vec(),
        }
    }

    #[test]
    fn options_make_policies() {
        assert_eq!(args(None, &[], &[]).policy().unwrap(), None);
        assert_eq!(
            args(Some(EgressWord::None), &[], &[]).policy().unwrap(),
            Some(NetworkPolicy::None)
        );
        assert_eq!(
            args(None, &["10.0.0.0/8", "Example.com", "192.0.2.1"], &[443])
                .policy()
                .unwrap(),
            Some(
                NetworkPolicy::allow(["10.0.0.0/8", "192.0.2.1"], ["example.com"], [443]).unwrap()
            )
        );
        let e = args(None, &["10.0.0.1/8"], &[])
            .policy()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network_policy") && e.contains("10.0.0.1/8"),
            "{e}"
        );
        let e = args(None, &["bad_name.com"], &[])
            .policy()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad_name.com"), "{e}");
    }
}
