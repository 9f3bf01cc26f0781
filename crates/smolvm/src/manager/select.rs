//! Backend choice: the config's `backend`, then the manager's (`--backend` / `SMOLVM_BACKEND`), then auto:
//! Firecracker when its binary is found and KVM is usable for standard guests, else QEMU. An explicit
//! choice the host cannot run is refused before anything is created, with the reason.

use crate::config::BackendKind;

/// What the host offers, as far as the choice is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAvailability {
    /// Firecracker binary found.
    pub firecracker_binary: bool,
    /// QEMU binary found.
    pub qemu_binary: bool,
    /// KVM usable for standard guests; `Err(reason)` when not.
    pub kvm: Result<(), String>,
}

/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The backend asked for (or the best auto choice).
    pub backend: BackendKind,
    /// Why, and what to do.
    pub reason: String,
}

/// Resolves the backend for one VM.
pub fn resolve_backend(
    config_choice: Option<BackendKind>,
    manager_choice: Option<BackendKind>,
    host: &BackendAvailability,
) -> Result<BackendKind, Unavailable> {
    match config_choice.or(manager_choice) {
        Some(BackendKind::Firecracker) => {
            if !host.firecracker_binary {
                return Err(Unavailable {
                    backend: BackendKind::Firecracker,
                    reason: "the firecracker binary was not found (set SMOLVM_FIRECRACKER_BIN or put it on PATH)"
                        .into(),
                });
            }
            host.kvm.clone().map_err(|why| Unavailable {
                backend: BackendKind::Firecracker,
                reason: format!("Firecracker needs usable KVM: {why}"),
            })?;
            Ok(BackendKind::Firecracker)
        }
        Some(BackendKind::Qemu) => qemu_or_err(host),
        None if host.firecracker_binary && host.kvm.is_ok() => Ok(BackendKind::Firecracker),
        None => qemu_or_err(host),
    }
}

fn qemu_or_err(host: &BackendAvailability) -> Result<BackendKind, Unavailable> {
    if host.qemu_binary {
        Ok(BackendKind::Qemu)
    } else {
        Err(Unavailable {
            backend: BackendKind::Qemu,
            reason: "qemu-system-x86_64 was not found (apt-get install qemu-system-x86)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendKind::*;

    fn host(fc: bool, qemu: bool, kvm: bool) -> BackendAvailability {
        BackendAvailability {
            firecracker_binary: fc,
            qemu_binary: qemu,
            kvm: if kvm { Ok(()) } else { Err("no vmx/svm".into()) },
        }
    }

    #[test]
    fn auto_prefers_firecracker_only_with_usable_kvm() {
        assert_eq!(resolve_backend(None, None, &host(true, true, true)), Ok(Firecracker));
        assert_eq!(resolve_backend(None, None, &host(true, true, false)), Ok(Qemu));
        assert_eq!(resolve_backend(None, None, &host(false, true, true)), Ok(Qemu));
        assert!(resolve_backend(None, None, &host(false, false, false)).is_err());
    }

    #[test]
    fn config_beats_manager_and_explicit_choices_are_checked() {
        assert_eq!(
            resolve_backend(Some(Qemu), Some(Firecracker), &host(true, true, true)),
            Ok(Qemu)
        );
        assert_eq!(resolve_backend(None, Some(Qemu), &host(true, true, true)), Ok(Qemu));
        let e = resolve_backend(Some(Firecracker), None, &host(true, true, false)).unwrap_err();
        assert!(e.reason.contains("no vmx/svm"), "{}", e.reason);
        let e = resolve_backend(None, Some(Firecracker), &host(false, true, true)).unwrap_err();
        assert!(e.reason.contains("SMOLVM_FIRECRACKER_BIN"));
        assert!(resolve_backend(Some(Qemu), None, &host(true, false, true)).is_err());
    }
}
