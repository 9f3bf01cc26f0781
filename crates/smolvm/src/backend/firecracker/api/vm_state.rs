//! `PATCH /vm` (definition `Vm`): pause or resume a running microVM.

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// The desired run state of the microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Vm {
    /// `Paused` or `Resumed`.
    pub state: VmRunState,
}

/// The `state` enum of `Vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum VmRunState {
    /// Stop the vCPUs (needed before a snapshot).
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

impl Vm {
    /// A request for `state`.
    pub(crate) fn new(state: VmRunState) -> Self {
        Vm { state }
    }
}

impl ApiRequest for Vm {
    const METHOD: Method = Method::Patch;
    fn path(&self) -> String {
        "/vm".to_string()
    }
}
