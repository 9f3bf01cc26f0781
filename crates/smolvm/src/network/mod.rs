//! Host networking of VMs: one TAP device per VM, NAT to the uplink and a loopback-only SSH forward,
//! all in one nftables table owned by smolvm.
//!
//! # Layout on the host
//! * TAP `smv-<n>` per VM (name leased by the state store), tagged with the link alias `smolvm:<vm_id>`
//!   so that ownership is visible to `ip link` and to [`HostNetwork::cleanup_orphans`].
//! * Every TAP carries the same gateway address as a `/32` (`172.16.0.1/32`) plus a `/32` route to its
//!   guest. Linux allows one address on many interfaces: each TAP answers the guest's ARP for the gateway,
//!   and deleting one TAP keeps the address (and its local route) on the others.
//! * nftables table `inet smolvm` (see [`nft`]): guest -> uplink allowed and masqueraded, guest <-> guest
//!   dropped, guest -> host only for established traffic, `127.0.0.1:<ssh_host_port>` -> `<guest>:22`.
//!   Per-VM rules carry the comment `smolvm:<vm_id>`; adding and removing them is idempotent.
//! * A VM whose egress policy ([`policy`]) is not `open` gets its own chain, sets and drop counter
//!   ([`egress`]); its allow-listed domains are resolved by smolvm's resolver ([`dns`]).
//!
//! # Lifetime
//! The TAP and rules live from create to delete: [`HostNetwork::setup_vm`] is idempotent, so calling it
//! again on start repairs what a host reboot removed; [`HostNetwork::teardown_vm`] removes everything of
//! one VM. The table with its static base rules stays (it only matches `smv-*` interfaces);
//! [`HostNetwork::remove_all`] removes it.
//!
//! Without the privilege to do any of this (not root, no `CAP_NET_ADMIN`), QEMU VMs use QEMU's user-mode
//! networking instead: see [`choose_network_mode`].

mod commands;
pub(crate) mod dns;
pub(crate) mod egress;
mod error;
mod firewall;
mod host;
mod links;
mod mode;
pub(crate) mod nft;
pub(crate) mod policy;
#[cfg(test)]
mod recording;
pub(crate) mod resolv;

pub use commands::{NetCapabilities, NetCommands};
pub use egress::EgressPlan;
pub use error::NetworkError;
pub use firewall::ForwardDropManager;
pub(crate) use host::CleanupReport;
pub use host::HostNetwork;
pub(crate) use mode::{choose_network_mode, NetworkMode};
pub use policy::{AllowList, Cidr, NetworkPolicy};
#[cfg(test)]
pub(crate) use recording::RecordingCommands;

/// Prefix of every TAP device smolvm creates. The static nft rules match `smv-*`.
pub(crate) const TAP_PREFIX: &str = "smv-";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub(crate) const MAX_IFNAME_LEN: usize = 15;
/// Prefix of the tags on smolvm's link aliases and nft rule comments: `smolvm:<vm_id>`.
pub(crate) const TAG_PREFIX: &str = "smolvm:";

/// The tag smolvm puts on the TAP alias and every per-VM nft rule of `vm_id`.
pub(crate) fn vm_tag(vm_id: &str) -> String {
    format!("{TAG_PREFIX}{vm_id}")
}

/// The VM id of a tag made by [`vm_tag`], if `tag` is one.
pub(crate) fn parse_vm_tag(tag: &str) -> Option<&str> {
    tag.strip_prefix(TAG_PREFIX).filter(|id| valid_vm_id(id))
}

/// Checks that `name` is a TAP name smolvm may own: `smv-` followed by letters, digits or `-`, at most
/// 15 characters. Only such names are matched by the static rules and considered by cleanup.
pub(crate) fn validate_tap_name(name: &str) -> Result<(), NetworkError> {
    let reason = if !name.starts_with(TAP_PREFIX) || name.len() == TAP_PREFIX.len() {
        Some(format!(
            "must start with {TAP_PREFIX:?} followed by a suffix"
        ))
    } else if name.len() > MAX_IFNAME_LEN {
        Some(format!("must be at most {MAX_IFNAME_LEN} characters"))
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        Some("may hold only lowercase letters, digits and '-'".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetworkError::InvalidName {
            what: "TAP device name",
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Same rule as `config::validate_vm_id`; repeated here because the id goes into nft scripts and link
/// aliases, where anything else would be an injection.
fn valid_vm_id(id: &str) -> bool {
    crate::config::validate_vm_id(id).is_ok()
}

fn check_vm_id(id: &str) -> Result<(), NetworkError> {
    if valid_vm_id(id) {
        Ok(())
    } else {
        Err(NetworkError::InvalidName {
            what: "VM id",
            name: id.to_string(),
            reason: "must be lowercase letters, digits and '-' (1-64 characters)".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked() {
        validate_tap_name("smv-1").unwrap();
        validate_tap_name("smv-12345678901").unwrap();
        for bad in [
            "smv-",
            "tap0",
            "smv-123456789012",
            "smv-A",
            "smv-1;x",
            "smv-1 2",
        ] {
            assert!(validate_tap_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(vm_tag("vm-1"), "smolvm:vm-1");
        assert_eq!(parse_vm_tag("smolvm:vm-1"), Some("vm-1"));
        assert_eq!(parse_vm_tag("smolvm:"), None);
        assert_eq!(parse_vm_tag("smolvm:Bad\""), None);
        assert_eq!(parse_vm_tag("other:vm-1"), None);
    }
}
