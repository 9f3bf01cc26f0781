//! Leaf types shared by the config, info and error modules: the rule-violation error and the VM's
//! lifecycle state. Kept here, depending on nothing else in the crate, so the arrows between
//! `config`, `info` and `error` point one way (all of them into this module).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A config or argument value broke a rule. Names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {rule}")]
pub struct ValidationError {
    /// The field (spec name) that was rejected.
    pub field: String,
    /// What rule it broke, with the offending value.
    pub rule: String,
}

impl ValidationError {
    /// A validation error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Lifecycle state of a VM, serialised as `created`, `running`, `paused`, `stopped` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Configured and allocated but never started.
    Created,
    /// The VMM runs and the guest booted.
    Running,
    /// The VMM process is alive but the guest's vCPUs are stopped (`pause`); `resume` continues it.
    Paused,
    /// Shut down; can be started again.
    Stopped,
    /// Something failed (for example the VMM died unexpectedly); can still be deleted.
    Error,
}

impl VmState {
    /// All states, in lifecycle order.
    pub const ALL: [VmState; 5] = [
        VmState::Created,
        VmState::Running,
        VmState::Paused,
        VmState::Stopped,
        VmState::Error,
    ];

    /// True for the states in which a VMM process belongs to the VM (`running`, `paused`).
    pub fn has_vmm(self) -> bool {
        matches!(self, VmState::Running | VmState::Paused)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "status",
                    format!("must be one of created, running, paused, stopped, error; got {s:?}"),
                )
            })
    }
}
