//! `smolvm env set|unset|list`: the guest's persisted environment variables.
//!
//! They live in the guest's `/etc/profile.d/smolvm_env.sh` (written atomically by the agent, every value
//! quoted so that any text round-trips exactly and never executes) and apply to every later
//! `smolvm exec` (argv and `--shell` alike) and to login shells (SSH). Keys are checked on this side
//! before anything is sent, so a bad key fails at once and is named.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::exec::{parse_env_pair, Attached};
use crate::output::print_json;
use crate::Cli;

/// Arguments of `smolvm env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EnvCommand,
}

/// The `smolvm env` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set (add or replace) variables: `smolvm env set ID KEY=VALUE...`.
    Set {
        /// The VM id (running).
        id: String,
        /// Variables; the value is everything after the first `=` (may be empty).
        #[arg(required = true, value_name = "KEY=VALUE")]
        vars: Vec<String>,
    },
    /// Remove variables (absent ones are ignored): `smolvm env unset ID KEY...`.
    Unset {
        /// The VM id (running).
        id: String,
        /// Keys to remove.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Print the variables, sorted by key: `KEY=value` lines, each value shell-quoted when it needs it
    /// (so the output can be pasted into a shell), or a JSON object with `--json`.
    List {
        /// The VM id (running).
        id: String,
        /// Print a JSON object {"KEY": "value", ...}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `smolvm env ...`.
pub fn run(cli: &Cli, a: &EnvArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        EnvCommand::Set { id, vars } => {
            let vars = parse_vars(vars)?;
            let vm = Attached::open(cli, id)?;
            vm.vm()
                .with_agent(|c| Ok(c.set_env_vars(&vars)?))
                .with_context(|| format!("set environment variables in VM {id}"))?;
        }
        EnvCommand::Unset { id, keys } => {
            for k in keys {
                smolvm::validate_env_key(k)?;
            }
            let vm = Attached::open(cli, id)?;
            vm.vm()
                .with_agent(|c| Ok(c.unset_env_vars(keys)?))
                .with_context(|| format!("unset environment variables in VM {id}"))?;
        }
        EnvCommand::List { id, json } => {
            let vm = Attached::open(cli, id)?;
            let vars = vm
                .vm()
                .with_agent(|c| Ok(c.list_env_vars()?))
                .with_context(|| format!("list environment variables of VM {id}"))?;
            if *json {
                print_json(&vars)?;
            } else {
                print!("{}", render(&vars));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY=VALUE` arguments to a map (a key given twice: the last value wins, as in a shell).
fn parse_vars(vars: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|kv| parse_env_pair(kv).with_context(|| format!("environment variable {kv:?}")))
        .collect()
}

/// The text listing: one `KEY=value` line per variable.
fn render(vars: &BTreeMap<String, String>) -> String {
    vars.iter()
        .map(|(k, v)| format!("{k}={}\n", shell_word(v)))
        .collect()
}

/// `v` as one shell word: as is when it holds only characters no shell treats specially, else
/// single-quoted (values from the guest never contain NUL, so quoting cannot fail; if one did, the
/// debug form is shown instead).
fn shell_word(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,=".contains(&b));
    if plain {
        v.to_string()
    } else {
        smolvm_protocol::shell::quote_str(v).unwrap_or_else(|_| format!("{v:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_arguments_are_parsed_and_bad_keys_named() {
        let v = parse_vars(&["A=1".into(), "B=".into(), "A=x=y".into()]).unwrap();
        assert_eq!(v.get("A").map(String::as_str), Some("x=y"));
        assert_eq!(v.get("B").map(String::as_str), Some(""));
        let e = format!(
            "{:#}",
            parse_vars(&["OK=1".into(), "9LIVES=x".into()]).unwrap_err()
        );
        assert!(e.contains("\"9LIVES\""), "{e}");
        let e = format!("{:#}", parse_vars(&["JUSTKEY".into()]).unwrap_err());
        assert!(e.contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn listing_quotes_only_what_needs_it() {
        let vars: BTreeMap<String, String> = [
            ("PLAIN", "/usr/bin:/bin"),
            ("EMPTY", ""),
            ("Q", "it's $(x) `y`\nz"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            render(&vars),
            "EMPTY=''\nPLAIN=/usr/bin:/bin\nQ='it'\\''s $(x) `y`\nz'\n"
        );
    }
}
