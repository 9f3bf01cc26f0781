//! Is `/dev/kvm` there, and can it boot a standard Linux guest?
//!
//! "Present" and "usable" differ: a nested paravirtual hypervisor such as `kvm_pvm` provides a working
//! `/dev/kvm` (API version 12) that nevertheless cannot boot stock kernels (no vmx/svm CPU flag, emulation
//! failures). Detection is split into facts gathered from the system ([`KvmFacts::probe`]) and a pure
//! assessment ([`assess`]) so that every combination is unit-tested.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Serialize;

/// The KVM device node.
pub(crate) const KVM_DEVICE: &str = "/dev/kvm";
/// The only KVM API version there has ever been; anything else is not a KVM we understand.
pub(crate) const KVM_API_VERSION: i32 = 12;
/// Environment variable that overrides the usability verdict: `on` or `off`.
pub(crate) const KVM_ENV: &str = "SMOLVM_KVM";
/// Kernel modules that provide `/dev/kvm` without hardware virtualization (paravirtual nesting).
pub(crate) const PARAVIRTUAL_KVM_MODULES: &[&str] = &["kvm_pvm"];

/// `_IO(KVMIO, 0x00)` with `KVMIO = 0xAE`.
const KVM_GET_API_VERSION: u64 = 0xAE00;

/// What smolvm knows about KVM on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmStatus {
    /// `/dev/kvm` exists as a file node (it may still fail to open).
    pub device_exists: bool,
    /// `/dev/kvm` opens read-write and reports API version 12.
    pub present: bool,
    /// The API version the device reported, if it opened.
    pub api_version: Option<i32>,
    /// Why the device is not present (open error, wrong API version).
    pub open_error: Option<String>,
    /// The hardware virtualization flag of the CPU (`vmx` or `svm`), if any.
    pub cpu_virt_flag: Option<String>,
    /// A paravirtual KVM module providing `/dev/kvm` (e.g. `kvm_pvm`), if loaded.
    pub paravirtual_module: Option<String>,
    /// KVM can boot standard guests (after applying any `SMOLVM_KVM` override).
    pub usable: bool,
    /// Why KVM is not usable, as a sentence for humans. `None` when usable.
    pub reason: Option<String>,
    /// The `SMOLVM_KVM` override that was applied (`Some(true)` = on, `Some(false)` = off).
    pub forced: Option<bool>,
}

/// Raw observations about KVM, gathered from the system or made up by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvmFacts {
    /// `/dev/kvm` exists.
    pub device_exists: bool,
    /// The result of opening it and asking for the API version: the version, or the error text.
    pub api: Result<i32, String>,
    /// `vmx` or `svm` from `/proc/cpuinfo` flags.
    pub cpu_virt_flag: Option<String>,
    /// A loaded paravirtual KVM module.
    pub paravirtual_module: Option<String>,
    /// The value of `SMOLVM_KVM`, if set.
    pub env_override: Option<String>,
}

impl KvmFacts {
    /// Looks at `/dev/kvm`, `/proc/cpuinfo`, `/sys/module` and `/proc/modules`, and `SMOLVM_KVM`.
    pub(crate) fn probe() -> KvmFacts {
        let device_exists = Path::new(KVM_DEVICE).exists();
        let api = if device_exists {
            api_version(Path::new(KVM_DEVICE))
        } else {
            Err("does not exist".to_string())
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        let paravirtual_module = PARAVIRTUAL_KVM_MODULES
            .iter()
            .find(|m| Path::new("/sys/module").join(m).exists() || module_listed(&modules, m))
            .map(|m| m.to_string());
        KvmFacts {
            device_exists,
            api,
            cpu_virt_flag: super::cpu::virt_flag(&cpuinfo),
            paravirtual_module,
            env_override: std::env::var(KVM_ENV).ok(),
        }
    }
}

/// Opens `dev` read-write and returns `KVM_GET_API_VERSION`, or a human description of the failure.
fn api_version(dev: &Path) -> Result<i32, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        })?;
    // KVM rejects this ioctl with EINVAL unless its argument is 0, and ioctl is variadic: pass the 0
    // explicitly or a register's leftover value goes along.
    // SAFETY: KVM_GET_API_VERSION reads no memory and only returns an int; the fd is valid for the
    // duration of the call because `file` lives until the end of this function.
    let v = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            KVM_GET_API_VERSION as _,
            0 as libc::c_ulong,
        )
    };
    if v < 0 {
        return Err(format!(
            "KVM_GET_API_VERSION failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v)
}

/// True if `/proc/modules` text lists `module` (first column).
pub(crate) fn module_listed(proc_modules: &str, module: &str) -> bool {
    proc_modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some(module))
}

/// Parses an `SMOLVM_KVM` value: `Some(true)` for on, `Some(false)` for off, `None` if unrecognised.
pub(crate) fn parse_override(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Decides presence and usability from `facts`. Pure.
pub(crate) fn assess(facts: &KvmFacts) -> KvmStatus {
    let (present, api_version, open_error) = match &facts.api {
        Ok(v) if *v == KVM_API_VERSION => (true, Some(*v), None),
        Ok(v) => (
            false,
            Some(*v),
            Some(format!(
                "reports KVM API version {v}, expected {KVM_API_VERSION}"
            )),
        ),
        Err(e) => (false, None, Some(e.clone())),
    };
    let forced = facts.env_override.as_deref().and_then(parse_override);
    if let Some(raw) = facts.env_override.as_deref() {
        if forced.is_none() {
            tracing::warn!("ignoring {KVM_ENV}={raw:?}: expected on or off");
        }
    }

    let natural_reason = if !facts.device_exists {
        Some(format!(
            "{KVM_DEVICE} does not exist: enable VT-x/AMD-V in the firmware and load kvm_intel or \
             kvm_amd, or use a host with nested virtualization"
        ))
    } else if !present {
        let why = open_error.clone().unwrap_or_default();
        if why == "permission denied" {
            Some(format!(
                "{KVM_DEVICE} cannot be opened (permission denied): add your user to the kvm group \
                 (usermod -aG kvm $USER) or run as root"
            ))
        } else {
            Some(format!("{KVM_DEVICE} is not usable: {why}"))
        }
    } else {
        match (&facts.paravirtual_module, &facts.cpu_virt_flag) {
            (Some(m), None) => Some(format!(
                "{KVM_DEVICE} is provided by {m} (nested paravirtual KVM) and no vmx/svm CPU flag: \
                 it cannot boot standard kernels"
            )),
            (Some(m), Some(_)) => Some(format!(
                "{KVM_DEVICE} is provided by {m} (nested paravirtual KVM): it cannot boot standard \
                 kernels"
            )),
            (None, None) => Some(format!(
                "the CPU has no vmx/svm flag: {KVM_DEVICE} cannot run hardware-virtualized guests"
            )),
            (None, Some(_)) => None,
        }
    };

    let reason = match forced {
        Some(false) => Some(format!("disabled by {KVM_ENV}=off")),
        // Forcing on can override our judgement about the CPU, but not a device that does not open.
        Some(true) if present => None,
        Some(true) => natural_reason.map(|r| format!("{KVM_ENV}=on ignored: {r}")),
        None => natural_reason,
    };
    KvmStatus {
        device_exists: facts.device_exists,
        present,
        api_version,
        open_error,
        cpu_virt_flag: facts.cpu_virt_flag.clone(),
        paravirtual_module: facts.paravirtual_module.clone(),
        usable: reason.is_none(),
        reason,
        forced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KvmFacts {
        KvmFacts {
            device_exists: true,
            api: Ok(12),
            cpu_virt_flag: Some("vmx".into()),
            paravirtual_module: None,
            env_override: None,
        }
    }

    #[test]
    fn real_hardware_kvm_is_usable() {
        let s = assess(&facts());
        assert!(s.present && s.usable);
        assert_eq!(s.reason, None);
        assert_eq!(s.api_version, Some(12));
    }

    #[test]
    fn pvm_without_flag_is_present_but_not_usable() {
        let f = KvmFacts {
            cpu_virt_flag: None,
            paravirtual_module: Some("kvm_pvm".into()),
            ..facts()
        };
        let s = assess(&f);
        assert!(s.present);
        assert!(!s.usable);
        assert_eq!(
            s.reason.as_deref(),
            Some(
                "/dev/kvm is provided by kvm_pvm (nested paravirtual KVM) and no vmx/svm CPU flag: \
                 it cannot boot standard kernels"
            )
        );
    }

    #[test]
    fn pvm_with_flag_is_still_not_usable() {
        let f = KvmFacts {
            paravirtual_module: Some("kvm_pvm".into()),
            ..facts()
        };
        assert!(!assess(&f).usable);
    }

    #[test]
    fn missing_flag_missing_device_and_permissions() {
        let no_flag = assess(&KvmFacts {
            cpu_virt_flag: None,
            ..facts()
        });
        assert!(!no_flag.usable);
        assert!(no_flag.reason.unwrap().contains("no vmx/svm flag"));

        let missing = assess(&KvmFacts {
            device_exists: false,
            api: Err("does not exist".into()),
            ..facts()
        });
        assert!(!missing.present && !missing.usable);
        assert!(missing.reason.unwrap().contains("does not exist"));

        let denied = assess(&KvmFacts {
            api: Err("permission denied".into()),
            ..facts()
        });
        assert!(!denied.present);
        assert!(denied.reason.unwrap().contains("kvm group"));

        let wrong_api = assess(&KvmFacts {
            api: Ok(11),
            ..facts()
        });
        assert!(!wrong_api.present);
        assert!(wrong_api.reason.unwrap().contains("API version 11"));
    }

    #[test]
    fn env_override() {
        let pvm = KvmFacts {
            cpu_virt_flag: None,
            paravirtual_module: Some("kvm_pvm".into()),
            ..facts()
        };
        let on = assess(&KvmFacts {
            env_override: Some("on".into()),
            ..pvm.clone()
        });
        assert!(on.usable);
        assert_eq!(on.forced, Some(true));

        let off = assess(&KvmFacts {
            env_override: Some("off".into()),
            ..facts()
        });
        assert!(!off.usable);
        assert_eq!(off.reason.as_deref(), Some("disabled by SMOLVM_KVM=off"));

        // On cannot conjure a device.
        let on_missing = assess(&KvmFacts {
            device_exists: false,
            api: Err("does not exist".into()),
            env_override: Some("on".into()),
            ..facts()
        });
        assert!(!on_missing.usable);
        assert!(on_missing
            .reason
            .unwrap()
            .starts_with("SMOLVM_KVM=on ignored"));

        // Garbage is ignored.
        let junk = assess(&KvmFacts {
            env_override: Some("maybe".into()),
            ..pvm
        });
        assert!(!junk.usable);
        assert_eq!(junk.forced, None);
    }

    #[test]
    fn module_listing() {
        let m = "kvm_pvm 1234 0 - Live 0x0\nkvm 1000 1 kvm_pvm, Live 0x0\n";
        assert!(module_listed(m, "kvm_pvm"));
        assert!(module_listed(m, "kvm"));
        assert!(!module_listed(m, "kvm_intel"));
    }
}
