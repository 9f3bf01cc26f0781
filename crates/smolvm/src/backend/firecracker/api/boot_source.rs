//! `PUT /boot-source` (definition `BootSource`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// The guest kernel, its initrd and command line. Pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootSource {
    /// Host path of the kernel: an uncompressed ELF vmlinux on x86_64.
    pub kernel_image_path: PathBuf,
    /// Host path of the initrd, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; Firecracker uses its own default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl ApiRequest for BootSource {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/boot-source".to_string()
    }
}
