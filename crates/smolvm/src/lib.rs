//! smolvm: disposable, hardware-isolated Linux microVMs for programs (AI agents first).
//!
//! Layers, top to bottom (dependencies point down): facade (`SmolVm`) -> manager (`SmolVmManager`) ->
//! state, backend, network, exec, image, host. See the README's architecture section.
//!
//! The public API is what this file re-exports: the spec's types ([`SmolVm`], [`VmConfig`], [`VmInfo`],
//! [`VmState`], [`CommandResult`], the errors), the multi-VM [`SmolVmManager`] with its option and
//! report structs, the [`ImageBuilder`] with its options, and the few host/exec types the CLI and the
//! Python binding show to users. Everything else is crate-private; `internals` is a hidden escape
//! hatch for the sibling crates (CLI, the `smolvm-bench` crate) and integration tests, not a stable API.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
mod cgroup;
mod channel;
mod config;
mod dirs;
mod error;
mod exec;
mod facade;
mod fuzzing;
mod host;
mod image;
mod info;
mod manager;
mod network;
mod process;
mod snapshot;
mod ssh;
mod state;
#[cfg(test)]
mod test_tools;
mod types;
mod vmm_user;

/// Largest size of a VM's `console.log` before it moves to `console.log.1` (the console takes at most
/// twice this on disk).
pub use backend::console_keeper::CONSOLE_LOG_MAX;
pub use backend::BackendError;
pub use config::{
    validate_env_key, BackendKind, DiskMode, HostLimits, VmConfig, VmConfigSpec, DEFAULT_BOOT_ARGS,
    DEFAULT_MEM_SIZE_MIB, DEFAULT_VCPU_COUNT,
};
pub use dirs::{Dirs, STORE_ENV};
pub use error::{Error, Result};
pub use exec::{
    AgentClient, CommandResult, ExecError, ExecRequest, Stream as ExecStream, MAX_OUTPUT_LEN,
};
pub use facade::{SmolVm, SmolVmBuilder, DEFAULT_SSH_USER};
pub use host::{Accelerator, HostCapabilities, ToolError, ToolInfo};
pub use image::{
    runtime_of_rootfs, AutoKernel, DebianOptions, GuestImage, ImageBuilder, ImageError,
    ImageOptions, ImageSource, ImportOptions, ImportSource, Preset, Progress as ImageProgress,
    AUTO_KERNEL_ENV, AUTO_MINIMAL_IMAGE_NAME, DEFAULT_IMAGE_NAME, DEFAULT_KERNEL_PACKAGE,
    DEFAULT_SIZE_MIB as DEFAULT_IMAGE_SIZE_MIB, DEFAULT_SUITE as DEFAULT_IMAGE_SUITE,
    SSH_BOOT_ARGS,
};
pub use info::{NetworkConfig, NetworkMode, VmInfo};
pub use manager::{
    templates_enabled_by_env, BackendFactory, CleanupFailure, CleanupOptions, CleanupReport,
    CleanupScope, CreateOptions, DomainRefresh, EgressStatus, ManagerBuilder, OrphanProcess,
    RetainedDisk, SmolVmManager, SystemBackends, DEFAULT_BOOT_TIMEOUT_SECS,
    DEFAULT_STOP_TIMEOUT_SECS,
};
pub use network::{AllowList, Cidr, NetworkError, NetworkPolicy};
/// Wire types of the host-guest protocol that appear in the exec API (streamed commands, error kinds).
pub use smolvm_protocol::{Command as AgentCommand, ErrorKind as AgentErrorKind};
pub use snapshot::{SnapshotError, SnapshotInfo};
pub use ssh::{ssh_argv, SshError, SshTarget};
pub use state::StateError;
pub use types::{ValidationError, VmState};
pub use vmm_user::{VmmUser, VMM_USER_ENV};

/// Internals the sibling crates (CLI, benchmark) and the integration tests reach into. Hidden from
/// the docs and not a stable API: anything here may change without notice.
#[doc(hidden)]
pub mod internals {
    /// State store internals (integration tests of crash recovery and cleanup).
    pub mod state {
        pub use crate::state::{RunningVmm, StateStore};
    }
    /// Host process helpers.
    pub mod process {
        pub use crate::process::{log_tail, proc_stat, spawn_detached, ProcessIdentity};
    }
    /// Host network helpers (and the one program lookup, which lives with the host probe).
    pub mod network {
        pub use crate::host::tools::find_program;
        pub use crate::network::{
            EgressPlan, ForwardDropManager, HostNetwork, NetCapabilities, NetCommands, NetworkError,
        };
    }
    /// Backends (the QEMU backend test and the benchmark's raw-VMM floor).
    pub mod backend {
        pub use crate::backend::{AgentEndpoint, Backend, BackendError, LaunchSpec, NetAttachment};
        /// The QEMU backend.
        pub mod qemu {
            pub use crate::backend::qemu::{build_argv, QemuAccel, QemuBackend, QemuError};
        }
    }
    /// SSH helpers (the SSH E2E test).
    pub mod ssh {
        pub use crate::ssh::{
            ensure_client_key, ensure_host_key, get_ssh_commands, known_hosts_patterns, run_ssh,
            wait_for_ssh, write_known_hosts, HostKeyFormat, SshTarget,
        };
    }
    /// Snapshot records as stored (state store tests).
    pub mod snapshot {
        pub use crate::snapshot::{MachineShape, SnapshotRecord};
    }
    /// Entry points of the fuzz targets (`fuzz/`) and the seeded `hostile_guest_input` tests.
    pub mod fuzzing {
        pub use crate::fuzzing::{agent_replies, console};
    }
    /// The channel owner switch (the benchmark starts a VM without an owner for its comparison).
    pub mod channel {
        pub use crate::channel::OWNER_ENV;
    }
    /// Disk cloning (the benchmark's raw-VMM floor copies a disk as the manager does).
    pub mod disk {
        pub use crate::manager::disk::{clone_file, isolated_disk_path, CloneMethod};
    }
    /// The kernel command line the manager composes for a VM without network (the benchmark boots
    /// the raw VMM with it).
    pub fn kernel_cmdline(
        boot_args: &str,
        hostname: &str,
    ) -> Result<String, crate::ValidationError> {
        crate::manager::cmdline::kernel_cmdline(boot_args, hostname, None, None)
    }
    /// Where the console keeper moves a full console log (the hostile-guest test).
    pub use crate::backend::console_keeper::rotated_path as rotated_console_log;
    /// The per-VM lock and how long an operation waits for it.
    pub use crate::manager::lock::{VmLock, LOCK_WAIT};
}
