//! smolvm: disposable, hardware-isolated Linux microVMs for programs (AI agents first).
//!
//! Layers, top to bottom (dependencies point down): facade (`SmolVm`) -> manager (`SmolVmManager`) ->
//! state, backend, network, exec, image, host. See the README's architecture section.

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod config;
pub mod dirs;
pub mod error;
pub mod exec;
pub mod facade;
pub mod host;
pub mod image;
pub mod info;
pub mod manager;
pub mod network;
pub mod process;
pub mod snapshot;
pub mod ssh;
pub mod state;
#[cfg(test)]
mod test_tools;
pub mod tool;

pub use config::{BackendKind, DiskMode, VmConfig, VmConfigSpec, DEFAULT_BOOT_ARGS};
pub use error::{Error, Result, ValidationError};
pub use exec::CommandResult;
pub use facade::{SmolVm, SmolVmBuilder};
pub use image::{ImageBuilder, SSH_BOOT_ARGS};
pub use info::{NetworkConfig, VmInfo, VmState};
pub use manager::SmolVmManager;
pub use network::NetworkPolicy;
