//! `PUT /serial` (definition `SerialDevice`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ApiRequest, TokenBucket};
use crate::backend::firecracker::http::Method;

/// Where the guest's serial console goes. Without it, Firecracker writes the console to its standard
/// output, mixed with its own log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SerialDevice {
    /// File or named pipe for the console output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Output rate limit (bytes beyond it are dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

impl ApiRequest for SerialDevice {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/serial".to_string()
    }
}
