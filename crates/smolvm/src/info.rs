//! Runtime information about a VM (spec: vm-info): `VmState`, `NetworkConfig`, `VmInfo`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::types::ValidationError;
pub(crate) use crate::types::VmState;

/// How a VM's network is provided: the one network enum, for the request (`auto`, `tap`, `user`,
/// `none`: [`CreateOptions::network`](crate::CreateOptions), the CLI's `--network`, Python's
/// `network=`) and for what a VM got ([`NetworkConfig::mode`], always `Tap` or `User`: `Auto` is
/// resolved at create and a VM without network has `VmInfo::network == None`). Serialised in
/// lowercase; stored network rows written before the mode existed read as `tap` (the only mode then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Request only: TAP + NAT when this process may create them, else QEMU user-mode networking.
    #[default]
    Auto,
    /// A host TAP device with NAT and a loopback SSH forward made by smolvm (needs CAP_NET_ADMIN). The
    /// guest is reachable from the host at its own IP.
    Tap,
    /// QEMU's user-mode networking: NAT inside the VMM, SSH forwarded from 127.0.0.1 by QEMU. No
    /// privileges needed; QEMU only; every VM has its own private network (guest `10.0.2.15`), so the
    /// guest is not reachable at its IP from the host, only through the forwarded SSH port.
    User,
    /// Request only: no network interface at all (`VmInfo::network` is `None`); commands still run
    /// through the agent.
    None,
}

impl NetworkMode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Auto => "auto",
            NetworkMode::Tap => "tap",
            NetworkMode::User => "user",
            NetworkMode::None => "none",
        }
    }

    /// The mode of a configured network (a stored row, `NetworkConfig::mode`): `tap` or `user`.
    pub(crate) fn parse_configured(s: &str) -> Result<NetworkMode, ValidationError> {
        match s.parse()? {
            m @ (NetworkMode::Tap | NetworkMode::User) => Ok(m),
            _ => Err(ValidationError::new(
                "network_mode",
                format!("a configured network is tap or user; got {s:?}"),
            )),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(NetworkMode::Auto),
            "tap" => Ok(NetworkMode::Tap),
            "user" => Ok(NetworkMode::User),
            "none" => Ok(NetworkMode::None),
            other => Err(ValidationError::new(
                "network_mode",
                format!("must be auto, tap, user or none; got {other:?}"),
            )),
        }
    }
}

/// `""` (how "no TAP" was written before it was an `Option`) as `None`.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// The mode of network rows serialised before the mode existed.
fn tap_mode() -> NetworkMode {
    NetworkMode::Tap
}

/// Network configuration of a VM (spec: `NetworkConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The guest's IPv4 address.
    pub guest_ip: Ipv4Addr,
    /// The host-side gateway address the guest routes through.
    pub gateway_ip: Ipv4Addr,
    /// Netmask of the guest network, dotted quad.
    pub netmask: Ipv4Addr,
    /// Host TAP device name (at most 15 characters); `None` in user mode, which has no TAP. (Python
    /// keeps the spec's `str` and shows `""` for none.) Older JSON with `""` reads as `None`.
    #[serde(deserialize_with = "empty_as_none")]
    pub tap_device: Option<String>,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx`, locally administered.
    pub guest_mac: String,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port, when reserved.
    pub ssh_host_port: Option<u16>,
    /// How the network is provided (smolvm extension of the spec): `Tap` or `User`.
    #[serde(default = "tap_mode")]
    pub mode: NetworkMode,
}

/// Everything known about one VM (spec: `VMInfo`). Immutable: refresh to get a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM id.
    pub vm_id: String,
    /// Current lifecycle state.
    pub status: VmState,
    /// The configuration the VM was created with.
    pub config: VmConfig,
    /// Network configuration, `None` for a VM without networking.
    pub network: Option<NetworkConfig>,
    /// PID of the VMM process while it runs.
    pub pid: Option<u32>,
    /// The VMM's control socket (Firecracker API socket or QEMU QMP socket) while it runs.
    pub socket_path: Option<PathBuf>,
}

impl NetworkConfig {
    /// The TAP device name, `""` when there is none (user mode). For the TAP-mode code paths, which
    /// check the name with `network::validate_tap_name` first, so `""` never reaches a tool.
    pub(crate) fn tap_name(&self) -> &str {
        self.tap_device.as_deref().unwrap_or("")
    }
}

impl VmInfo {
    /// The guest IP, if the VM has networking.
    pub fn guest_ip(&self) -> Option<Ipv4Addr> {
        self.network.as_ref().map(|n| n.guest_ip)
    }

    /// The control socket path, if the VMM runs.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }
}
