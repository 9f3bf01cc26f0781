//! The kernel command line a VM boots with: the config's `boot_args` plus smolvm's own parameters, which
//! the guest agent reads (network, hostname, SSH key). The parameters are the protocol crate's typed
//! [`BootParams`], rendered by the same code whose parser the agent runs; rendering refuses any value
//! the agent would reject, so nothing can inject another parameter.

use std::net::Ipv4Addr;

use smolvm_protocol::boot::{self, BootParams};

use crate::error::ValidationError;
use crate::info::{NetworkConfig, NetworkMode};

/// Guest-side network parameters handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestNet {
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Prefix length of the guest network.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Name servers (the agent writes them to `/etc/resolv.conf`); may be empty.
    pub dns: Vec<Ipv4Addr>,
}

impl GuestNet {
    /// The guest side of a network. User mode gets QEMU's built-in DNS relay; TAP mode the host's
    /// upstream servers (read now, see [`crate::network::resolv`]).
    pub(crate) fn from_network(net: &NetworkConfig) -> GuestNet {
        let host_dns = match net.mode {
            // Auto and None are requests: a configured network is TAP or user mode.
            NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => {
                crate::network::resolv::host_upstream_servers()
            }
            NetworkMode::User => Vec::new(),
        };
        GuestNet::with_host_dns(net, host_dns)
    }

    /// [`GuestNet::from_network`] with the host's servers given (TAP mode uses them).
    pub(crate) fn with_host_dns(net: &NetworkConfig, host_dns: Vec<Ipv4Addr>) -> GuestNet {
        GuestNet {
            ip: net.guest_ip,
            // At most 32, so the narrowing never truncates.
            prefix: u32::from(net.netmask).count_ones() as u8,
            gateway: net.gateway_ip,
            dns: match net.mode {
                NetworkMode::User => vec![crate::state::USER_DNS_IP],
                // Auto and None are requests: a configured network is TAP or user mode.
                NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => host_dns,
            },
        }
    }
}

/// Composes the full command line: `boot_args`, then smolvm's parameters (host name, network, and for a
/// shared-disk VM the SSH client key line). Fails (naming `boot_args`) when the line would not fit
/// the kernel's limit, or a value cannot be passed.
pub(crate) fn kernel_cmdline(
    boot_args: &str,
    hostname: &str,
    net: Option<&GuestNet>,
    authorized_key: Option<&str>,
) -> Result<String, ValidationError> {
    let params = BootParams {
        hostname: Some(hostname.to_string()),
        ip: net.map(|n| (n.ip, n.prefix)),
        gateway: net.map(|n| n.gateway),
        dns: net.map(|n| n.dns.clone()).unwrap_or_default(),
        authorized_key: authorized_key.map(|k| k.trim_end().to_string()),
        ..BootParams::default()
    };
    params
        .render()
        .and_then(|ours| boot::compose(boot_args, &ours))
        .map_err(|e| ValidationError::new("boot_args", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_boot_args_and_our_parameters() {
        let net = NetworkConfig {
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
            netmask: Ipv4Addr::new(255, 255, 0, 0),
            tap_device: Some("smv-2".into()),
            guest_mac: "02:00:00:00:00:02".into(),
            ssh_host_port: Some(42000),
            mode: NetworkMode::Tap,
        };
        assert_eq!(
            kernel_cmdline(
                "console=ttyS0 init=/init ",
                "vm-1",
                Some(&GuestNet::with_host_dns(&net, vec![])),
                None
            )
            .unwrap(),
            "console=ttyS0 init=/init smolvm.hostname=vm-1 smolvm.ip=172.16.0.2/16 smolvm.gw=172.16.0.1"
        );
        // TAP mode: the host's upstream servers, comma-separated as the agent parses them.
        let dns = vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
        assert_eq!(
            kernel_cmdline("", "t", Some(&GuestNet::with_host_dns(&net, dns.clone())), None)
                .unwrap(),
            "smolvm.hostname=t smolvm.ip=172.16.0.2/16 smolvm.gw=172.16.0.1 smolvm.dns=192.0.2.1,192.0.2.2"
        );
        assert_eq!(
            kernel_cmdline("", "a", None, None).unwrap(),
            "smolvm.hostname=a"
        );
        let user = NetworkConfig {
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            tap_device: None,
            mode: NetworkMode::User,
            ..net
        };
        assert_eq!(
            kernel_cmdline("", "u", Some(&GuestNet::with_host_dns(&user, dns)), None).unwrap(),
            "smolvm.hostname=u smolvm.ip=10.0.2.15/24 smolvm.gw=10.0.2.2 smolvm.dns=10.0.2.3"
        );
    }

    #[test]
    fn the_agent_parses_back_what_the_host_wrote() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA smolvm@host\n";
        let net = GuestNet {
            ip: Ipv4Addr::new(172, 16, 0, 9),
            prefix: 30,
            gateway: Ipv4Addr::new(172, 16, 0, 10),
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        };
        let line =
            kernel_cmdline("console=ttyS0 init=/init", "vm-9", Some(&net), Some(key)).unwrap();
        let p = BootParams::parse(&line);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p.runs_agent());
        assert_eq!(p.hostname.as_deref(), Some("vm-9"));
        assert_eq!(p.ip, Some((net.ip, 30)));
        assert_eq!(p.gateway, Some(net.gateway));
        assert_eq!(p.dns, net.dns);
        assert_eq!(p.authorized_key.as_deref(), Some(key.trim_end()));
    }

    #[test]
    fn a_line_over_the_kernel_limit_is_refused_naming_boot_args() {
        let long = "x".repeat(boot::KERNEL_CMDLINE_MAX);
        let e = kernel_cmdline(&long, "vm-1", None, None).unwrap_err();
        assert_eq!(e.field, "boot_args");
        assert!(e.rule.contains("2047"), "{e}");
    }
}
