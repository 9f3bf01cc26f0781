//! `PUT /vsock` (definition `Vsock`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// The virtio-vsock device. Its host side is the Unix socket `uds_path`: host-initiated connections
/// connect there and send `CONNECT <port>\n`. Pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Vsock {
    /// The guest's context id (at least 3).
    pub guest_cid: u32,
    /// Unix socket Firecracker creates and listens on.
    pub uds_path: PathBuf,
}

impl ApiRequest for Vsock {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/vsock".to_string()
    }
}
