//! `VmConfig`: the validated, immutable configuration of one microVM (spec: vm-config).
//!
//! Users describe a VM with [`VmConfigSpec`] (plain public fields, serde-friendly, the shape a
//! config file or an API request has) and turn it into a [`VmConfig`] with [`VmConfigSpec::build`], which
//! applies every rule of the specification. A `VmConfig` cannot be changed afterwards; [`VmConfig::with`]
//! makes a re-validated copy with changes instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::network::NetworkPolicy;
use crate::types::ValidationError;

#[path = "config_kinds.rs"]
mod kinds;
#[path = "config_limits.rs"]
mod limits;
pub use kinds::{BackendKind, DiskMode};
pub use limits::HostLimits;

/// Default kernel command line (spec: `boot_args` default).
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Default number of virtual CPUs.
pub const DEFAULT_VCPU_COUNT: u32 = 2;
/// Default guest memory in MiB.
pub const DEFAULT_MEM_SIZE_MIB: u32 = 512;
/// Allowed range of `vcpu_count`.
pub(crate) const VCPU_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
/// Allowed range of `mem_size_mib`.
pub(crate) const MEM_SIZE_MIB_RANGE: std::ops::RangeInclusive<u32> = 128..=16384;
/// Allowed `disk_size_mib` (64 MiB to 1 TiB; disks are sparse, so only the apparent size).
pub(crate) const DISK_SIZE_MIB_RANGE: std::ops::RangeInclusive<u64> = 64..=(1 << 20);
/// Longest allowed VM id.
pub(crate) const VM_ID_MAX_LEN: usize = 64;

/// The unvalidated description of a VM: every field of the spec, public and serde-friendly.
///
/// Missing optional fields take the spec's defaults; `vm_id: None` means "generate `vm-<8 hex>`".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigSpec {
    /// VM identifier; `None` generates `vm-<8 hex>`.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// Virtual CPUs, 1-32.
    #[serde(default = "default_vcpu_count")]
    pub vcpu_count: u32,
    /// Guest memory in MiB, 128-16384.
    #[serde(default = "default_mem_size_mib")]
    pub mem_size_mib: u32,
    /// Kernel image; must exist and be a regular file.
    pub kernel_path: PathBuf,
    /// Optional initial ramdisk; must exist and be a regular file when given.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// Root filesystem image; must exist and be a regular file.
    pub rootfs_path: PathBuf,
    /// Kernel command line.
    #[serde(default = "default_boot_args")]
    pub boot_args: String,
    /// The guest runs smolvm's agent as PID 1, so the manager talks to it (exec, files, graceful stop)
    /// (smolvm extension). `None`: derived from `boot_args` (`init=/init` hands over to the agent), the
    /// default for a hand-written config; auto-configuration sets it from the image record. `true`
    /// needs boot args whose `init=` runs the agent; `false` suits an image with an `/init` of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<bool>,
    /// Backend override; `None` means auto-detect. Deserialises `"auto"` as `None`, as the spec allows.
    #[serde(default, deserialize_with = "backend_choice")]
    pub backend: Option<BackendKind>,
    /// Disk lifecycle mode.
    #[serde(default)]
    pub disk_mode: DiskMode,
    /// Keep an isolated disk after delete so a later create with the same id reuses it.
    #[serde(default)]
    pub retain_disk_on_delete: bool,
    /// Environment variables written into the guest at start; keys are shell identifiers.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Size of the VM's own root disk in MiB when larger than the image's rootfs: the isolated copy is
    /// grown and its ext4 resized before the first boot. `None` keeps the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mib: Option<u64>,
    /// Host limits of the VM's VMM (cgroup); `None`: the defaults, where the host allows a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_limits: Option<HostLimits>,
    /// What the guest may reach beyond its gateway (smolvm extension; TAP networking only for anything
    /// but `open`). Changeable while the VM runs: `SmolVmManager::set_network_policy`.
    #[serde(default, skip_serializing_if = "NetworkPolicy::is_open")]
    pub network_policy: NetworkPolicy,
}

fn backend_choice<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BackendKind>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => BackendKind::parse_choice(&s).map_err(serde::de::Error::custom),
    }
}

fn default_vcpu_count() -> u32 {
    DEFAULT_VCPU_COUNT
}
fn default_mem_size_mib() -> u32 {
    DEFAULT_MEM_SIZE_MIB
}
fn default_boot_args() -> String {
    DEFAULT_BOOT_ARGS.to_string()
}

impl VmConfigSpec {
    /// A spec with the required paths and every other field at its default.
    pub fn new(kernel_path: impl Into<PathBuf>, rootfs_path: impl Into<PathBuf>) -> Self {
        VmConfigSpec {
            vm_id: None,
            vcpu_count: DEFAULT_VCPU_COUNT,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            kernel_path: kernel_path.into(),
            initrd_path: None,
            rootfs_path: rootfs_path.into(),
            boot_args: DEFAULT_BOOT_ARGS.to_string(),
            agent: None,
            backend: None,
            disk_mode: DiskMode::Isolated,
            retain_disk_on_delete: false,
            env_vars: BTreeMap::new(),
            disk_size_mib: None,
            host_limits: None,
            network_policy: NetworkPolicy::Open,
        }
    }

    /// Sets `vm_id`.
    pub fn vm_id(mut self, id: impl Into<String>) -> Self {
        self.vm_id = Some(id.into());
        self
    }
    /// Sets `vcpu_count`.
    pub fn vcpu_count(mut self, n: u32) -> Self {
        self.vcpu_count = n;
        self
    }
    /// Sets `mem_size_mib`.
    pub fn mem_size_mib(mut self, mib: u32) -> Self {
        self.mem_size_mib = mib;
        self
    }
    /// Sets `initrd_path`.
    pub fn initrd_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd_path = Some(path.into());
        self
    }
    /// Sets `boot_args`.
    pub fn boot_args(mut self, args: impl Into<String>) -> Self {
        self.boot_args = args.into();
        self
    }
    /// Sets `agent` (whether the guest runs smolvm's agent; unset: derived from `boot_args`).
    pub fn agent(mut self, runs_agent: bool) -> Self {
        self.agent = Some(runs_agent);
        self
    }
    /// Sets `backend` (`None` = auto).
    pub fn backend(mut self, backend: Option<BackendKind>) -> Self {
        self.backend = backend;
        self
    }
    /// Sets `disk_mode`.
    pub fn disk_mode(mut self, mode: DiskMode) -> Self {
        self.disk_mode = mode;
        self
    }
    /// Sets `retain_disk_on_delete`.
    pub fn retain_disk_on_delete(mut self, retain: bool) -> Self {
        self.retain_disk_on_delete = retain;
        self
    }
    /// Sets `disk_size_mib` (grow the VM's root disk to this size).
    pub fn disk_size_mib(mut self, mib: u64) -> Self {
        self.disk_size_mib = Some(mib);
        self
    }
    /// Sets `host_limits` (the VMM's cgroup limits).
    pub fn host_limits(mut self, limits: HostLimits) -> Self {
        self.host_limits = Some(limits);
        self
    }

    /// Sets `network_policy`.
    pub fn network_policy(mut self, policy: NetworkPolicy) -> Self {
        self.network_policy = policy;
        self
    }
    /// Adds one environment variable.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }

    /// Applies every rule of the specification and returns the immutable config.
    pub fn build(self) -> Result<VmConfig, ValidationError> {
        self.check_paths()?;
        self.build_unchecked_paths()
    }

    /// Checks every rule that does not look at the file system (id, ranges, env keys), so a caller can
    /// reject bad input before a slow step such as building the image the paths will point to.
    pub fn validate_fields(&self) -> Result<(), ValidationError> {
        self.clone().build_unchecked_paths().map(|_| ())
    }

    /// Validates everything except the existence of files. Used when loading a stored config: a VM whose
    /// kernel was removed since must still be listable and deletable.
    pub(crate) fn build_unchecked_paths(self) -> Result<VmConfig, ValidationError> {
        let vm_id = match self.vm_id {
            Some(id) => {
                validate_vm_id(&id)?;
                id
            }
            None => generate_vm_id(),
        };
        if !VCPU_COUNT_RANGE.contains(&self.vcpu_count) {
            return Err(ValidationError::new(
                "vcpu_count",
                format!("must be between 1 and 32, got {}", self.vcpu_count),
            ));
        }
        if !MEM_SIZE_MIB_RANGE.contains(&self.mem_size_mib) {
            return Err(ValidationError::new(
                "mem_size_mib",
                format!("must be between 128 and 16384, got {}", self.mem_size_mib),
            ));
        }
        for key in self.env_vars.keys() {
            validate_env_key(key)?;
        }
        if let Some(mib) = self.disk_size_mib {
            if !DISK_SIZE_MIB_RANGE.contains(&mib) {
                return Err(ValidationError::new(
                    "disk_size_mib",
                    format!(
                        "must be between {} and {}, got {mib}",
                        DISK_SIZE_MIB_RANGE.start(),
                        DISK_SIZE_MIB_RANGE.end()
                    ),
                ));
            }
            if self.disk_mode == DiskMode::Shared {
                return Err(ValidationError::new(
                    "disk_size_mib",
                    "a shared disk is the image itself and cannot be grown; use disk_mode isolated",
                ));
            }
        }
        if let Some(l) = &self.host_limits {
            l.validate(self.mem_size_mib)?;
        }
        let network_policy = self.network_policy.validated()?;
        let init_runs_agent = smolvm_protocol::BootParams::parse(&self.boot_args).runs_agent();
        let agent = self.agent.unwrap_or(init_runs_agent);
        if agent && !init_runs_agent {
            return Err(ValidationError::new(
                "agent",
                format!(
                    "the guest cannot run smolvm's agent: boot_args must hand over to it with                      init={} (got {:?}); set agent to false for an image without the agent",
                    smolvm_protocol::boot::AGENT_INIT,
                    self.boot_args
                ),
            ));
        }
        Ok(VmConfig {
            vm_id,
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            kernel_path: self.kernel_path,
            initrd_path: self.initrd_path,
            rootfs_path: self.rootfs_path,
            boot_args: self.boot_args,
            agent,
            backend: self.backend,
            disk_mode: self.disk_mode,
            retain_disk_on_delete: self.retain_disk_on_delete,
            env_vars: self.env_vars,
            disk_size_mib: self.disk_size_mib,
            host_limits: self.host_limits,
            network_policy,
        })
    }

    fn check_paths(&self) -> Result<(), ValidationError> {
        validate_file("kernel_path", &self.kernel_path)?;
        validate_file("rootfs_path", &self.rootfs_path)?;
        if let Some(initrd) = &self.initrd_path {
            validate_file("initrd_path", initrd)?;
        }
        Ok(())
    }
}

/// A validated, immutable VM configuration (spec: `VMConfig`). Build one with [`VmConfigSpec::build`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "VmConfigSpec", into = "VmConfigSpec")]
pub struct VmConfig {
    vm_id: String,
    vcpu_count: u32,
    mem_size_mib: u32,
    kernel_path: PathBuf,
    initrd_path: Option<PathBuf>,
    rootfs_path: PathBuf,
    boot_args: String,
    /// Resolved: the explicit choice, else derived from `boot_args` (stored explicitly from then on).
    agent: bool,
    backend: Option<BackendKind>,
    disk_mode: DiskMode,
    retain_disk_on_delete: bool,
    env_vars: BTreeMap<String, String>,
    disk_size_mib: Option<u64>,
    host_limits: Option<HostLimits>,
    network_policy: NetworkPolicy,
}

impl TryFrom<VmConfigSpec> for VmConfig {
    type Error = ValidationError;
    fn try_from(spec: VmConfigSpec) -> Result<Self, Self::Error> {
        spec.build()
    }
}

impl From<VmConfig> for VmConfigSpec {
    fn from(c: VmConfig) -> Self {
        VmConfigSpec {
            vm_id: Some(c.vm_id),
            vcpu_count: c.vcpu_count,
            mem_size_mib: c.mem_size_mib,
            kernel_path: c.kernel_path,
            initrd_path: c.initrd_path,
            rootfs_path: c.rootfs_path,
            boot_args: c.boot_args,
            agent: Some(c.agent),
            backend: c.backend,
            disk_mode: c.disk_mode,
            retain_disk_on_delete: c.retain_disk_on_delete,
            env_vars: c.env_vars,
            disk_size_mib: c.disk_size_mib,
            host_limits: c.host_limits,
            network_policy: c.network_policy,
        }
    }
}

impl VmConfig {
    /// Starts a spec with the two required paths (shorthand for [`VmConfigSpec::new`]).
    pub fn builder(
        kernel_path: impl Into<PathBuf>,
        rootfs_path: impl Into<PathBuf>,
    ) -> VmConfigSpec {
        VmConfigSpec::new(kernel_path, rootfs_path)
    }

    /// Returns a re-validated copy with the changes `f` makes (the spec's `model_copy(update=...)`).
    pub fn with(&self, f: impl FnOnce(&mut VmConfigSpec)) -> Result<VmConfig, ValidationError> {
        let mut spec = self.to_spec();
        f(&mut spec);
        spec.build()
    }

    /// The config as an editable spec (with the id fixed).
    pub fn to_spec(&self) -> VmConfigSpec {
        self.clone().into()
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }
    /// Number of virtual CPUs.
    pub fn vcpu_count(&self) -> u32 {
        self.vcpu_count
    }
    /// Guest memory in MiB.
    pub fn mem_size_mib(&self) -> u32 {
        self.mem_size_mib
    }
    /// Kernel image path.
    pub fn kernel_path(&self) -> &Path {
        &self.kernel_path
    }
    /// Initial ramdisk path, if any.
    pub fn initrd_path(&self) -> Option<&Path> {
        self.initrd_path.as_deref()
    }
    /// Root filesystem image path.
    pub fn rootfs_path(&self) -> &Path {
        &self.rootfs_path
    }
    /// Kernel command line.
    pub fn boot_args(&self) -> &str {
        &self.boot_args
    }
    /// Backend override (`None` = auto).
    pub fn backend(&self) -> Option<BackendKind> {
        self.backend
    }
    /// Disk lifecycle mode.
    pub fn disk_mode(&self) -> DiskMode {
        self.disk_mode
    }
    /// Whether an isolated disk survives delete.
    pub fn retain_disk_on_delete(&self) -> bool {
        self.retain_disk_on_delete
    }
    /// The VMM's host limits, if the config sets any.
    pub fn host_limits(&self) -> Option<&HostLimits> {
        self.host_limits.as_ref()
    }
    /// The size the VM's root disk is grown to, if any.
    pub fn disk_size_mib(&self) -> Option<u64> {
        self.disk_size_mib
    }
    /// Environment variables injected at start.
    pub fn env_vars(&self) -> &BTreeMap<String, String> {
        &self.env_vars
    }
    /// The egress policy the VM was created with or last given.
    pub fn network_policy(&self) -> &NetworkPolicy {
        &self.network_policy
    }
    /// This config with another egress policy (validated).
    pub fn with_network_policy(&self, policy: NetworkPolicy) -> Result<VmConfig, ValidationError> {
        let mut c = self.clone();
        c.network_policy = policy.validated()?;
        Ok(c)
    }

    /// True when the guest boots smolvm's agent, so the manager talks to it: the config's explicit
    /// `agent` (auto-configuration copies the image's `has_agent`), else what its boot args say
    /// (`init=/init`, [`smolvm_protocol::boot::AGENT_INIT`], parsed as the kernel and the agent parse
    /// them), resolved when the config was built.
    pub fn boots_agent(&self) -> bool {
        self.agent
    }
}

/// Checks a VM id against `^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$` or `^[a-z0-9]$`.
pub(crate) fn validate_vm_id(id: &str) -> Result<(), ValidationError> {
    let rule = "must be 1-64 characters of lowercase letters, digits and hyphens, \
                starting and ending with a letter or digit";
    let b = id.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && b.len() <= VM_ID_MAX_LEN
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("vm_id", format!("{rule}, got {id:?}")))
    }
}

/// Checks an environment variable name against `^[a-zA-Z_][a-zA-Z0-9_]*$`.
pub fn validate_env_key(key: &str) -> Result<(), ValidationError> {
    let b = key.as_bytes();
    let ok = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "env_vars",
            format!("key {key:?} must match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
        ))
    }
}

fn validate_file(field: &'static str, path: &Path) -> Result<(), ValidationError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ValidationError::new(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(ValidationError::new(
            field,
            format!("{} does not exist or cannot be read ({e})", path.display()),
        )),
    }
}

/// A fresh `vm-<8 lowercase hex>` id.
pub(crate) fn generate_vm_id() -> String {
    format!("vm-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
