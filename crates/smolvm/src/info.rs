//! Runtime information about a VM (spec: vm-info): `VmState`, `NetworkConfig`, `VmInfo`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::types::ValidationError;
pub(crate) use crate::types::VmState;

/// How a VM's network is provided. Serialised as `tap` or `user`; rows written before the mode existed
/// read as `tap` (the only mode then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A host TAP device with NAT and a loopback SSH forward made by smolvm (needs CAP_NET_ADMIN). The
    /// guest is reachable from the host at its own IP.
    #[default]
    Tap,
    /// QEMU's user-mode networking: NAT inside the VMM, SSH forwarded from 127.0.0.1 by QEMU. No
    /// privileges needed; QEMU only; every VM has its own private network (guest `10.0.2.15`), so the
    /// guest is not reachable at its IP from the host, only through the forwarded SSH port.
    User,
}

impl NetworkMode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Tap => "tap",
            NetworkMode::User => "user",
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
            "tap" => Ok(NetworkMode::Tap),
            "user" => Ok(NetworkMode::User),
            other => Err(ValidationError::new(
                "network_mode",
                format!("must be tap or user; got {other:?}"),
            )),
        }
    }
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
    /// Host TAP device name (at most 15 characters); empty in user mode, which has no TAP.
    pub tap_device: String,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx`, locally administered.
    pub guest_mac: String,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port, when reserved.
    pub ssh_host_port: Option<u16>,
    /// How the network is provided (smolvm extension of the spec).
    #[serde(default)]
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
