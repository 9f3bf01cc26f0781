//! Where the host and the agent meet: the names both sides use for the agent channel.

/// Name of the guest's virtio-serial port for the agent under QEMU (the guest finds it in
/// `/sys/class/virtio-ports/*/name`; the host names it in `-device virtserialport,name=...`).
pub const AGENT_PORT_NAME: &str = "org.smolvm.agent";

/// Guest vsock port the agent listens on under Firecracker (the host sends `CONNECT <port>`).
pub const AGENT_VSOCK_PORT: u32 = 52;
