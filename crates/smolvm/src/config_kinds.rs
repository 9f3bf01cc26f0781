//! The two choice enums of a `VmConfig`: which VMM (`backend`) and the disk lifecycle (`disk_mode`),
//! with their spec names, parsing and the optional clap derive the CLI parses them with.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::ValidationError;

/// Which virtual machine monitor runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Firecracker, configured over its REST API on a Unix socket.
    Firecracker,
    /// QEMU with the `microvm` machine type.
    Qemu,
}

impl BackendKind {
    /// The lowercase name used in configs, the CLI and the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Firecracker => "firecracker",
            BackendKind::Qemu => "qemu",
        }
    }

    /// Parses a backend choice: `firecracker`, `qemu`, or `auto` (returned as `None`).
    pub fn parse_choice(s: &str) -> Result<Option<BackendKind>, ValidationError> {
        match s {
            "auto" => Ok(None),
            other => other.parse().map(Some),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "firecracker" => Ok(BackendKind::Firecracker),
            "qemu" => Ok(BackendKind::Qemu),
            _ => Err(ValidationError::new(
                "backend",
                format!("must be one of \"firecracker\", \"qemu\", \"auto\" or none, got {s:?}"),
            )),
        }
    }
}

/// Disk lifecycle mode (spec: `disk_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// Clone the rootfs per VM, so each VM has its own writable copy.
    #[default]
    Isolated,
    /// Boot directly from `rootfs_path`; several VMs may share the image.
    Shared,
}

impl DiskMode {
    /// The lowercase name used in configs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::Isolated => "isolated",
            DiskMode::Shared => "shared",
        }
    }
}

impl FromStr for DiskMode {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "isolated" => Ok(DiskMode::Isolated),
            "shared" => Ok(DiskMode::Shared),
            _ => Err(ValidationError::new(
                "disk_mode",
                format!("must be \"isolated\" or \"shared\", got {s:?}"),
            )),
        }
    }
}
