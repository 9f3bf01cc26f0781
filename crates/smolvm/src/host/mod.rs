//! Host prerequisites and capabilities: is KVM usable, which VMMs and tools are installed, which
//! accelerator QEMU would use, and may we create network devices.
//!
//! [`HostCapabilities::detect`] looks at the host honestly and never assumes: a `/dev/kvm` that opens is
//! not enough, because a nested paravirtual hypervisor (`kvm_pvm`) provides one that cannot boot standard
//! kernels. KVM counts as usable only with a `vmx`/`svm` CPU flag and no such module.
//!
//! Environment overrides, for people who know better than the heuristics:
//! * `SMOLVM_KVM=on|off`: force KVM usable (if `/dev/kvm` opens) or unusable.
//! * `SMOLVM_QEMU_BIN`, `SMOLVM_FIRECRACKER_BIN`: the VMM binaries (a path, or a name on `PATH`).

pub(crate) mod cpu;
pub(crate) mod kvm;
pub(crate) mod tools;

use serde::Serialize;

use crate::config::BackendKind;

pub(crate) use kvm::KvmStatus;
pub(crate) use tools::Tools;
pub use tools::{ToolError, ToolInfo};

/// How QEMU would execute guest code on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator (slower, works everywhere).
    Tcg,
}

impl Accelerator {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether this process may create TAP devices and nftables rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Privileges {
    /// Effective uid 0.
    pub root: bool,
    /// `CAP_NET_ADMIN` in the effective capability set.
    pub cap_net_admin: bool,
}

impl Privileges {
    /// The current process's privileges.
    pub fn detect() -> Privileges {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| cpu::cap_eff(&s))
            .unwrap_or(0);
        Privileges {
            root,
            cap_net_admin: cpu::has_cap(mask, cpu::CAP_NET_ADMIN),
        }
    }

    /// May manage network devices (root, or `CAP_NET_ADMIN`).
    pub fn can_admin_network(&self) -> bool {
        self.root || self.cap_net_admin
    }
}

/// Everything smolvm knows about the host. Serialisable for `smolvm doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCapabilities {
    /// KVM presence and usability.
    pub kvm: KvmStatus,
    /// Installed programs.
    pub tools: Tools,
    /// What QEMU would use: KVM if usable, else TCG.
    pub accelerator: Accelerator,
    /// Host TSC frequency in kHz (for `tsc_early_khz` under TCG), if known.
    pub tsc_khz: Option<u64>,
    /// Root / `CAP_NET_ADMIN`.
    pub privileges: Privileges,
}

impl HostCapabilities {
    /// Looks at the host. Cheap enough to call per command: file checks, one ioctl and the VMM version
    /// probes, which run once per process (cached).
    pub fn detect() -> HostCapabilities {
        Self::detect_inner(false)
    }

    /// Like [`detect`](Self::detect), but also probes the versions of the non-VMM tools (for `doctor`).
    pub fn detect_with_versions() -> HostCapabilities {
        Self::detect_inner(true)
    }

    fn detect_inner(all_versions: bool) -> HostCapabilities {
        let kvm = kvm::assess(&kvm::KvmFacts::probe());
        HostCapabilities {
            accelerator: if kvm.usable {
                Accelerator::Kvm
            } else {
                Accelerator::Tcg
            },
            kvm,
            tools: Tools::detect(all_versions),
            tsc_khz: cpu::tsc_khz(),
            privileges: Privileges::detect(),
        }
    }

    /// What is missing for `backend`, one readable line each (empty if it can run VMs).
    pub fn check_prerequisites(&self, backend: BackendKind) -> Vec<String> {
        check_prerequisites(self, backend)
    }

    /// Things that work but are not what smolvm is tested with (for example an older QEMU), one readable
    /// line each. Unlike [`check_prerequisites`](Self::check_prerequisites), none of them stops a VM.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = self
            .tools
            .qemu_system
            .as_ref()
            .and_then(|t| t.version.as_deref())
        {
            match parse_major_minor(v) {
                Some(found) if found < QEMU_TESTED => out.push(format!(
                    "QEMU {v} is older than the tested {}.{}: VMs should run{}; on Debian 12, \
                     scripts/install-host-packages.sh installs QEMU 10 from bookworm-backports",
                    QEMU_TESTED.0,
                    QEMU_TESTED.1,
                    if found.0 < 9 {
                        ", but snapshots need QEMU >= 9"
                    } else {
                        ""
                    }
                )),
                Some(_) => {}
                None => out.push(format!("QEMU reports an unrecognised version {v:?}")),
            }
        }
        out
    }

    /// The backend `auto` resolves to: Firecracker where it can run (real KVM), else QEMU if it can run,
    /// else `None`.
    pub fn auto_backend(&self) -> Option<BackendKind> {
        [BackendKind::Firecracker, BackendKind::Qemu]
            .into_iter()
            .find(|b| check_prerequisites(self, *b).is_empty())
    }

    /// Resolves a backend choice (`None` = auto). An explicit choice is returned as is (its
    /// prerequisites are checked where it is used); auto falls back to QEMU when nothing is ready, so that
    /// the error names QEMU's missing pieces.
    pub fn resolve_backend(&self, choice: Option<BackendKind>) -> BackendKind {
        choice
            .or_else(|| self.auto_backend())
            .unwrap_or(BackendKind::Qemu)
    }
}

/// The QEMU version (major, minor) the test suite runs on; older ones get a warning from `doctor`.
pub(crate) const QEMU_TESTED: (u32, u32) = (10, 0);

/// `"10.0.2"` -> `(10, 0)`.
fn parse_major_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// What is missing on the host for `backend` (spec: `check_prerequisites`), one readable line per
/// problem saying what is missing and how to fix it. Empty when the backend can run VMs.
///
/// * firecracker: usable KVM, Linux networking (`ip`, `nft`, root or `CAP_NET_ADMIN`), the binary.
/// * qemu: the `qemu-system-x86_64` binary and an SSH client (KVM is optional: TCG works everywhere).
pub(crate) fn check_prerequisites(caps: &HostCapabilities, backend: BackendKind) -> Vec<String> {
    let mut out = Vec::new();
    let t = &caps.tools;
    match backend {
        BackendKind::Firecracker => {
            if !caps.kvm.usable {
                let reason = caps.kvm.reason.as_deref().unwrap_or("unknown reason");
                out.push(format!("KVM is not usable: {reason}"));
            }
            if t.ip.is_none() {
                out.push("ip not found: apt-get install iproute2".to_string());
            }
            if t.nft.is_none() {
                out.push("nft not found: apt-get install nftables".to_string());
            }
            if !caps.privileges.can_admin_network() {
                out.push(
                    "creating TAP devices and NAT rules needs root or CAP_NET_ADMIN: run as root"
                        .to_string(),
                );
            }
            if t.firecracker.is_none() {
                out.push(missing_override(
                    t.firecracker_bin_env.as_deref(),
                    tools::FIRECRACKER_BIN_ENV,
                    "firecracker",
                    "install a release binary from https://github.com/firecracker-microvm/\
                     firecracker/releases on PATH or point SMOLVM_FIRECRACKER_BIN at it",
                ));
            }
        }
        BackendKind::Qemu => {
            if t.qemu_system.is_none() {
                out.push(missing_override(
                    t.qemu_bin_env.as_deref(),
                    tools::QEMU_BIN_ENV,
                    tools::QEMU_SYSTEM,
                    "apt-get install qemu-system-x86",
                ));
            }
            if t.ssh.is_none() {
                out.push("ssh not found: apt-get install openssh-client".to_string());
            }
        }
    }
    out
}

fn missing_override(env_value: Option<&str>, env: &str, name: &str, fix: &str) -> String {
    match env_value {
        Some(v) => format!("{env}={v} is not an executable program: fix the variable or unset it"),
        None => format!("{name} not found: {fix}"),
    }
}

#[cfg(test)]
mod tests;
