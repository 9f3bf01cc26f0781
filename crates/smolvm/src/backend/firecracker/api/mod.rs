//! Typed request bodies of Firecracker's API (Swagger definition v1.16.1), one module per API resource
//! as in Firecracker's own `vmm_config`. Bodies are `#[serde(deny_unknown_fields)]` and skip `None`
//! fields, so what is sent is exactly what the schema's definitions allow.

mod actions;
mod boot_source;
mod drive;
mod instance_info;
mod logger;
mod machine_config;
mod network_interface;
mod rate_limiter;
mod serial;
mod snapshot;
mod vm_state;
mod vsock;

pub use actions::{ActionType, InstanceActionInfo};
pub use boot_source::BootSource;
pub use drive::{CacheType, Drive, IoEngine};
pub use instance_info::{FirecrackerVersion, InstanceInfo};
pub use logger::{LogLevel, Logger};
pub use machine_config::{HugePages, MachineConfiguration};
pub use network_interface::NetworkInterface;
pub use rate_limiter::{RateLimiter, TokenBucket};
pub use serial::SerialDevice;
pub use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};
pub use vm_state::{Vm, VmRunState};
pub use vsock::Vsock;

use super::http::Method;

/// A request body together with where it is sent.
pub trait ApiRequest: serde::Serialize {
    /// The HTTP method.
    const METHOD: Method;
    /// The request path, with path parameters (drive or interface id) filled in.
    fn path(&self) -> String;
}
