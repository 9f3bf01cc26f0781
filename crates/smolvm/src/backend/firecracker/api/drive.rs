//! `PUT /drives/{drive_id}` (definition `Drive`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ApiRequest, RateLimiter};
use crate::backend::firecracker::http::Method;

/// A virtio-block drive (or a vhost-user-block one when `socket` is set). Pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drive {
    /// Drive id; also the path parameter.
    pub drive_id: String,
    /// Backing file on the host (required for virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether this is the root device (Firecracker then adds `root=` to the command line).
    pub is_root_device: bool,
    /// Read-only block device (required for virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Unique id of the boot partition, only used for the root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// I/O rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// vhost-user-block backend socket (mutually exclusive with `path_on_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Drive {
    /// A virtio-block drive backed by `path_on_host`.
    pub(crate) fn virtio_block(
        drive_id: impl Into<String>,
        path_on_host: impl Into<PathBuf>,
        is_root_device: bool,
        is_read_only: bool,
    ) -> Drive {
        Drive {
            drive_id: drive_id.into(),
            path_on_host: Some(path_on_host.into()),
            is_root_device,
            is_read_only: Some(is_read_only),
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        }
    }
}

/// The `cache_type` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CacheType {
    /// Flushes are ignored (default).
    Unsafe,
    /// Flushes reach the host file.
    Writeback,
}

/// The `io_engine` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum IoEngine {
    /// Blocking I/O (default).
    Sync,
    /// io_uring (host kernels newer than 5.10.51).
    Async,
}

impl ApiRequest for Drive {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        format!("/drives/{}", self.drive_id)
    }
}
