//! Network leases: guest IP, TAP device, MAC and SSH host port of each VM, and the host port pool.
//!
//! Allocation runs inside the caller's `BEGIN IMMEDIATE` transaction, so two processes never pick the
//! same free entry; the UNIQUE constraints of the tables are a backstop should that ever break.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use rusqlite::{Connection, OptionalExtension};

use crate::info::{NetworkConfig, NetworkMode};
use crate::state::error::{Fail, StateError};
use crate::state::forwards::Protocol;
use crate::state::StateStore;

/// The guest network, 172.16.0.0/16.
pub(crate) const GUEST_NETWORK: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);
/// Netmask of the guest network.
pub(crate) const GUEST_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 0, 0);
/// The host side of every guest's link; never handed out to a guest.
pub(crate) const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);

/// Guest address of every user-mode VM: QEMU's default `dhcpstart` in its default `10.0.2.0/24`. Each
/// user-mode VM has a private network inside its own QEMU, so they never collide.
pub(crate) const USER_GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Gateway of QEMU's user-mode network (QEMU's default host address, `net` + 2).
pub(crate) const USER_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Netmask of QEMU's user-mode network.
pub(crate) const USER_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// DNS server of QEMU's user-mode network (QEMU's default, `net` + 3; it relays to the host's resolver).
pub(crate) const USER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// One VM's network lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The VM holding it.
    pub vm_id: String,
    /// What was leased.
    pub network: NetworkConfig,
}

impl StateStore {
    /// All leases, ordered by guest IP (for cleanup: which TAP devices and ports smolvm owns).
    pub fn list_leases(&self) -> Result<Vec<Lease>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT vm_id, guest_ip, gateway_ip, netmask, tap_device, guest_mac, ssh_host_port,
                     mode
                 FROM leases",
            )?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        RawLease {
                            guest_ip: r.get(1)?,
                            gateway_ip: r.get(2)?,
                            netmask: r.get(3)?,
                            tap_device: r.get(4)?,
                            guest_mac: r.get(5)?,
                            ssh_host_port: r.get(6)?,
                            mode: r.get(7)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = raws
                .into_iter()
                .map(|(vm_id, raw)| {
                    let network = raw.into_network(&vm_id)?;
                    Ok(Lease { vm_id, network })
                })
                .collect::<Result<Vec<_>, StateError>>()?;
            out.sort_by_key(|l| u32::from(l.network.guest_ip));
            Ok(out)
        })
    }
}

/// A lease row as stored, before parsing.
#[derive(Debug)]
pub(crate) struct RawLease {
    pub guest_ip: String,
    pub gateway_ip: String,
    pub netmask: String,
    pub tap_device: Option<String>,
    pub guest_mac: String,
    pub ssh_host_port: Option<i64>,
    pub mode: String,
}

impl RawLease {
    pub(crate) fn into_network(self, vm_id: &str) -> Result<NetworkConfig, StateError> {
        let ip = |column: &'static str, s: &str| {
            s.parse::<Ipv4Addr>()
                .map_err(|e| StateError::bad_row(vm_id, column, e))
        };
        let ssh_host_port = self
            .ssh_host_port
            .map(|p| u16::try_from(p).map_err(|e| StateError::bad_row(vm_id, "ssh_host_port", e)))
            .transpose()?;
        let mode = NetworkMode::parse_configured(&self.mode)
            .map_err(|e| StateError::bad_row(vm_id, "mode", e))?;
        Ok(NetworkConfig {
            guest_ip: ip("guest_ip", &self.guest_ip)?,
            gateway_ip: ip("gateway_ip", &self.gateway_ip)?,
            netmask: ip("netmask", &self.netmask)?,
            tap_device: self.tap_device,
            guest_mac: self.guest_mac,
            ssh_host_port,
            mode,
        })
    }
}

/// The TAP device name for `guest_ip`: the prefix and its host number in the guest network
/// (`smv-2` for 172.16.0.2, at most `smv-65534`: 9 bytes, well within Linux's 15).
pub(crate) fn tap_name(guest_ip: Ipv4Addr) -> String {
    // The prefix the network layer recognises as smolvm's; the host number keeps names within 15 bytes.
    format!("{}{}", crate::network::TAP_PREFIX, host_number(guest_ip))
}

/// The guest MAC for `guest_ip`: locally administered unicast (`02:`), then `00`, then the four IP
/// octets, so it is unique exactly when the IP is.
pub(crate) fn mac_for(guest_ip: Ipv4Addr) -> String {
    let [a, b, c, d] = guest_ip.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn host_number(ip: Ipv4Addr) -> u32 {
    u32::from(ip).wrapping_sub(u32::from(GUEST_NETWORK))
}

/// Host numbers a guest may get: not the network address (0), not the gateway (1), not broadcast.
fn guest_hosts() -> RangeInclusive<u32> {
    let size = !u32::from(GUEST_NETMASK) + 1;
    2..=size - 2
}

/// Leases the network of `vm_id` for `mode`: in TAP mode the lowest free guest IP (with its TAP name and
/// MAC), in user mode the fixed user-network addresses (no TAP); in both an SSH host port.
pub(crate) fn allocate(
    conn: &Connection,
    vm_id: &str,
    mode: NetworkMode,
    ports: &RangeInclusive<u16>,
    probe_ports: bool,
) -> Result<NetworkConfig, Fail> {
    let net = match mode {
        // Auto and None are requests: a configured network is TAP or user mode.
        NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => {
            let guest_ip = free_guest_ip(conn)?;
            NetworkConfig {
                guest_ip,
                gateway_ip: GATEWAY_IP,
                netmask: GUEST_NETMASK,
                tap_device: Some(tap_name(guest_ip)),
                guest_mac: mac_for(guest_ip),
                ssh_host_port: None,
                mode,
            }
        }
        NetworkMode::User => NetworkConfig {
            guest_ip: USER_GUEST_IP,
            gateway_ip: USER_GATEWAY_IP,
            netmask: USER_NETMASK,
            tap_device: None,
            guest_mac: mac_for(USER_GUEST_IP),
            ssh_host_port: None,
            mode,
        },
    };
    let probe = probe_ports.then_some((Ipv4Addr::LOCALHOST, Protocol::Tcp));
    let ssh_port = free_host_port(conn, ports, probe)?;
    let net = NetworkConfig {
        ssh_host_port: Some(ssh_port),
        ..net
    };
    conn.execute(
        "INSERT INTO leases (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac,
             ssh_host_port)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            vm_id,
            mode.as_str(),
            net.guest_ip.to_string(),
            net.gateway_ip.to_string(),
            net.netmask.to_string(),
            net.tap_device,
            net.guest_mac,
            ssh_port,
        ],
    )?;
    Ok(net)
}

/// The lowest guest IP of the TAP network that no TAP-mode lease holds (by IP, TAP name or MAC).
fn free_guest_ip(conn: &Connection) -> Result<Ipv4Addr, Fail> {
    let mut used_ips = HashSet::new();
    let mut used_names = HashSet::new();
    let mut stmt = conn
        .prepare("SELECT vm_id, guest_ip, tap_device, guest_mac FROM leases WHERE mode = 'tap'")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let holder: String = r.get(0)?;
        let ip: String = r.get(1)?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|e| StateError::bad_row(&holder, "guest_ip", e))?;
        used_ips.insert(u32::from(ip));
        // Names are derived from the IP today; checking them too keeps older or hand-made leases safe.
        used_names.insert(r.get::<_, String>(2)?);
        used_names.insert(r.get::<_, String>(3)?);
    }
    let base = u32::from(GUEST_NETWORK);
    guest_hosts()
        .map(|h| Ipv4Addr::from(base + h))
        .find(|ip| {
            !used_ips.contains(&u32::from(*ip))
                && !used_names.contains(&tap_name(*ip))
                && !used_names.contains(&mac_for(*ip))
        })
        .ok_or_else(|| {
            StateError::Exhausted {
                what: format!("guest IP address in {GUEST_NETWORK}/16"),
            }
            .into()
        })
}

/// The lowest port of `range` that no lease (SSH) and no forward (any address or protocol) holds, and,
/// with `probe`, that this host lets us bind right now (another program may hold it).
pub(crate) fn free_host_port(
    conn: &Connection,
    range: &RangeInclusive<u16>,
    probe: Option<(Ipv4Addr, Protocol)>,
) -> Result<u16, Fail> {
    let mut used = HashSet::new();
    let mut stmt = conn.prepare(
        "SELECT ssh_host_port FROM leases WHERE ssh_host_port IS NOT NULL
         UNION SELECT host_port FROM port_forwards",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        used.insert(r.get::<_, i64>(0)?);
    }
    range
        .clone()
        .filter(|p| *p != 0 && !used.contains(&i64::from(*p)))
        .find(|p| match probe {
            Some((addr, proto)) => bindable(addr, *p, proto),
            None => true,
        })
        .ok_or_else(|| {
            StateError::Exhausted {
                what: format!("host port in {}..={}", range.start(), range.end()),
            }
            .into()
        })
}

/// Whether `addr:port` is free now (the probe socket is closed again at once). Only EADDRINUSE means
/// taken: with loopback down (a fresh network namespace) binding fails with EADDRNOTAVAIL for every port.
fn bindable(addr: Ipv4Addr, port: u16, proto: Protocol) -> bool {
    let in_use =
        |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    !match proto {
        Protocol::Tcp => in_use(TcpListener::bind((addr, port)).map(drop)),
        Protocol::Udp => in_use(UdpSocket::bind((addr, port)).map(drop)),
    }
}

/// The VM holding `port` as its SSH port, if any.
pub(crate) fn ssh_port_holder(conn: &Connection, port: u16) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT vm_id FROM leases WHERE ssh_host_port = ?1",
        [port],
        |r| r.get(0),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_ip() {
        let ip = Ipv4Addr::new(172, 16, 0, 2);
        assert_eq!(tap_name(ip), "smv-2");
        assert_eq!(mac_for(ip), "02:00:ac:10:00:02");
        let last = Ipv4Addr::new(172, 16, 255, 254);
        assert_eq!(tap_name(last), "smv-65534");
        assert!(tap_name(last).len() <= 15);
        assert_eq!(mac_for(last), "02:00:ac:10:ff:fe");
    }

    #[test]
    fn host_range_excludes_network_gateway_and_broadcast() {
        let r = guest_hosts();
        assert_eq!(*r.start(), 2);
        assert_eq!(*r.end(), 65534);
    }
}
