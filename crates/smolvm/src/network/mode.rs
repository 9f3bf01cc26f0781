//! Which kind of guest networking a VM gets.

use super::commands::NetCapabilities;
use super::NetworkError;
use crate::config::BackendKind;
pub(crate) use crate::info::NetworkMode;

/// Decides the network mode of a VM: `None` for no network, else `Tap` or `User`. `Auto`: TAP when
/// this process may create TAP devices and `nft` and `ip` exist, else (QEMU only) user-mode
/// networking. An explicit request is honoured or refused with the reason; it never silently changes.
pub(crate) fn choose_network_mode(
    requested: NetworkMode,
    backend: BackendKind,
    caps: &NetCapabilities,
) -> Result<Option<NetworkMode>, NetworkError> {
    let user_ok = backend == BackendKind::Qemu;
    let mode = match requested {
        NetworkMode::None => return Ok(None),
        NetworkMode::Tap => caps.check_tap().map(|()| NetworkMode::Tap),
        NetworkMode::User if user_ok => Ok(NetworkMode::User),
        NetworkMode::User => Err(NetworkError::ModeUnavailable {
            mode: NetworkMode::User,
            backend,
            reason:
                "user-mode networking is a QEMU feature; use the qemu backend or TAP networking"
                    .into(),
        }),
        NetworkMode::Auto => match caps.check_tap() {
            Ok(()) => Ok(NetworkMode::Tap),
            Err(_) if user_ok => Ok(NetworkMode::User),
            // Firecracker has no fallback: say why TAP is impossible.
            Err(e) => Err(e),
        },
    };
    mode.map(Some)
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
            choose_network_mode(NetworkMode::Auto, BackendKind::Qemu, &all).unwrap(),
            Some(NetworkMode::Tap)
        );
        assert_eq!(
            choose_network_mode(NetworkMode::Auto, BackendKind::Qemu, &unprivileged()).unwrap(),
            Some(NetworkMode::User)
        );
        let no_nft = NetCapabilities {
            nft: false,
            ..NetCapabilities::all()
        };
        assert_eq!(
            choose_network_mode(NetworkMode::Auto, BackendKind::Qemu, &no_nft).unwrap(),
            Some(NetworkMode::User)
        );
        let e = choose_network_mode(NetworkMode::Auto, BackendKind::Firecracker, &unprivileged())
            .unwrap_err();
        assert!(e.is_permission(), "{e}");
    }

    #[test]
    fn explicit_choice_is_honoured_or_refused() {
        let all = NetCapabilities::all();
        assert_eq!(
            choose_network_mode(NetworkMode::User, BackendKind::Qemu, &all).unwrap(),
            Some(NetworkMode::User)
        );
        assert!(matches!(
            choose_network_mode(NetworkMode::User, BackendKind::Firecracker, &all),
            Err(NetworkError::ModeUnavailable { .. })
        ));
        let e =
            choose_network_mode(NetworkMode::Tap, BackendKind::Qemu, &unprivileged()).unwrap_err();
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    }

    #[test]
    fn no_network_is_always_possible() {
        assert_eq!(
            choose_network_mode(NetworkMode::None, BackendKind::Firecracker, &unprivileged())
                .unwrap(),
            None
        );
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("tap".parse::<NetworkMode>().unwrap(), NetworkMode::Tap);
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!(NetworkMode::default(), NetworkMode::Auto);
        assert!(NetworkMode::parse_configured("auto").is_err());
        assert_eq!(
            NetworkMode::parse_configured("user").unwrap(),
            NetworkMode::User
        );
        assert_eq!(NetworkMode::User.to_string(), "user");
        assert!("bridge".parse::<NetworkMode>().is_err());
        assert_eq!(
            serde_json::to_string(&NetworkMode::User).unwrap(),
            "\"user\""
        );
    }
}
