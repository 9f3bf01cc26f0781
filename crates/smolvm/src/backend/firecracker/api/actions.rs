//! `PUT /actions` (definition `InstanceActionInfo`).

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// A synchronous action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstanceActionInfo {
    /// Which action.
    pub action_type: ActionType,
}

/// The `action_type` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ActionType {
    /// Flush the metrics file.
    FlushMetrics,
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard: a graceful reboot request, which a guest
    /// started with `reboot=k` turns into a power-off (Firecracker then exits).
    SendCtrlAltDel,
}

impl InstanceActionInfo {
    /// An action of type `action_type`.
    pub(crate) fn new(action_type: ActionType) -> Self {
        InstanceActionInfo { action_type }
    }
}

impl ApiRequest for InstanceActionInfo {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/actions".to_string()
    }
}
