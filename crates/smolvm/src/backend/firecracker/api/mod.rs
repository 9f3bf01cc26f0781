//! Typed request bodies of Firecracker's API (Swagger definition v1.16.1), one module per API resource
//! as in Firecracker's own `vmm_config`. Bodies are `#[serde(deny_unknown_fields)]` and skip `None`
//! fields, so what is sent is exactly what the schema's definitions allow.

mod actions;
mod boot_source;
mod drive;
#[cfg(test)]
mod instance_info;
mod logger;
mod machine_config;
mod network_interface;
mod rate_limiter;
mod serial;
mod snapshot;
mod vm_state;
mod vsock;

pub(crate) use actions::{ActionType, InstanceActionInfo};
pub(crate) use boot_source::BootSource;
pub(crate) use drive::Drive;
pub(crate) use logger::Logger;
pub(crate) use machine_config::MachineConfiguration;
pub(crate) use network_interface::NetworkInterface;
pub(crate) use rate_limiter::{RateLimiter, TokenBucket};
pub(crate) use serial::SerialDevice;
pub(crate) use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};
pub(crate) use vm_state::{Vm, VmRunState};
pub(crate) use vsock::Vsock;
// Parts of the API smolvm does not send, kept for the schema tests that check every body.
#[cfg(test)]
pub(crate) use drive::{CacheType, IoEngine};
#[cfg(test)]
pub(crate) use instance_info::{FirecrackerVersion, InstanceInfo};
#[cfg(test)]
pub(crate) use logger::LogLevel;
#[cfg(test)]
pub(crate) use machine_config::HugePages;

use super::http::Method;

/// A request body together with where it is sent.
pub(crate) trait ApiRequest: serde::Serialize {
    /// The HTTP method.
    const METHOD: Method;
    /// The request path, with path parameters (drive or interface id) filled in.
    fn path(&self) -> String;
}
