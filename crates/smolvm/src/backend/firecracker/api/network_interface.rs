//! `PUT /network-interfaces/{iface_id}` (definition `NetworkInterface`).

use serde::{Deserialize, Serialize};

use super::{ApiRequest, RateLimiter};
use crate::backend::firecracker::http::Method;

/// A virtio-net interface backed by a host TAP device. Pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkInterface {
    /// Interface id; also the path parameter.
    pub iface_id: String,
    /// Host TAP device name.
    pub host_dev_name: String,
    /// Guest MAC address (`aa:bb:cc:dd:ee:ff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest (68 to 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl ApiRequest for NetworkInterface {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        format!("/network-interfaces/{}", self.iface_id)
    }
}
