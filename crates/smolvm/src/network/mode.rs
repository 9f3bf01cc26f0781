//! Which kind of guest networking a VM gets.

use super::commands::NetCapabilities;
use super::NetworkError;
use crate::config::BackendKind;
pub(crate) use crate::info::NetworkMode;

/// Decides the network mode of a VM. `requested: None` means automatic: TAP when this process may
/// create TAP devices and `nft` and `ip` exist, else (QEMU only) user-mode networking. An explicit
/// request is honoured or refused with the reason; it never silently changes.
pub(crate) fn choose_network_mode(
    requested: Option<NetworkMode>,
    backend: BackendKind,
    caps: &NetCapabilities,
) -> Result<NetworkMode, NetworkError> {
    let user_ok = backend == BackendKind::Qemu;
    match requested {
        Some(NetworkMode::Tap) => caps.check_tap().map(|()| NetworkMode::Tap),
        Some(NetworkMode::User) if user_ok => Ok(NetworkMode::User),
        Some(NetworkMode::User) => Err(NetworkError::ModeUnavailable {
            mode: NetworkMode::User,
            backend,
            reason:
                "user-mode networking is a QEMU feature; use the qemu backend or TAP networking"
                    .into(),
        }),
        None => match caps.check_tap() {
            Ok(()) => Ok(NetworkMode::Tap),
            Err(_) if user_ok => Ok(NetworkMode::User),
            // Firecracker has no fallback: say why TAP is impossible.
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unprivileged() -> NetCapabilities {
        NetCapabilities {
            euid: 1000,
            net_admin: false,
            ..NetCapabilities::all()
        }
    }

    #[test]
    fn automatic_choice_prefers_tap_and_falls_back_for_qemu_only() {
        let all = NetCapabilities::all();
        assert_eq!(
            choose_network_mode(None, BackendKind::Qemu, &all).unwrap(),
            NetworkMode::Tap
        );
        assert_eq!(
            choose_network_mode(None, BackendKind::Qemu, &unprivileged()).unwrap(),
            NetworkMode::User
        );
        let no_nft = NetCapabilities {
            nft: false,
            ..NetCapabilities::all()
        };
        assert_eq!(
            choose_network_mode(None, BackendKind::Qemu, &no_nft).unwrap(),
            NetworkMode::User
        );
        let e = choose_network_mode(None, BackendKind::Firecracker, &unprivileged()).unwrap_err();
        assert!(e.is_permission(), "{e}");
    }

    #[test]
    fn explicit_choice_is_honoured_or_refused() {
        let all = NetCapabilities::all();
        assert_eq!(
            choose_network_mode(Some(NetworkMode::User), BackendKind::Qemu, &all).unwrap(),
            NetworkMode::User
        );
        assert!(matches!(
            choose_network_mode(Some(NetworkMode::User), BackendKind::Firecracker, &all),
            Err(NetworkError::ModeUnavailable { .. })
        ));
        let e = choose_network_mode(Some(NetworkMode::Tap), BackendKind::Qemu, &unprivileged())
            .unwrap_err();
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("tap".parse::<NetworkMode>().unwrap(), NetworkMode::Tap);
        assert_eq!(NetworkMode::User.to_string(), "user");
        assert!("bridge".parse::<NetworkMode>().is_err());
        assert_eq!(
            serde_json::to_string(&NetworkMode::User).unwrap(),
            "\"user\""
        );
    }
}
