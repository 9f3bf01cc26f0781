//! Host -> agent: the guest's new identity after a restore from a snapshot. A VM made from a snapshot
//! starts as an exact copy of the snapshotted guest: same address, host name, wall clock (stopped at the
//! snapshot) and kernel random state (two clones would draw the same "random" numbers). Right after the
//! restore, before any command, the host sends [`Identity`]; the agent mixes the entropy into the
//! kernel's pool and forces a reseed, sets the clock, the host name and the network, then answers `Done`
//! (or `Error` naming what it could not apply).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::frame::ProtocolError;

/// Fewest bytes of host entropy accepted (a full reseed of the kernel's CRNG needs 32).
pub const MIN_IDENTITY_ENTROPY: usize = 32;
/// Most bytes of host entropy accepted.
pub const MAX_IDENTITY_ENTROPY: usize = 512;

/// The new identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Host name (1-64 of `[A-Za-z0-9-.]`).
    pub hostname: String,
    /// The new network configuration; `None` leaves the network alone.
    #[serde(default)]
    pub net: Option<NetIdentity>,
    /// Host wall-clock time, nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
    /// Fresh host entropy for the kernel's random pool.
    pub entropy: Vec<u8>,
    /// A new Dropbear-format SSH host key: written to [`DROPBEAR_HOST_KEY_PATH`] (mode 0600), and the
    /// SSH server is restarted to present it. `None` keeps the snapshot's key.
    #[serde(default)]
    pub ssh_host_key: Option<Vec<u8>>,
}

/// Where the guest's Dropbear host key lives.
pub const DROPBEAR_HOST_KEY_PATH: &str = "/etc/dropbear/dropbear_ed25519_host_key";
/// Largest host key accepted.
pub const MAX_HOST_KEY_LEN: usize = 16 * 1024;

/// The guest's network interface configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetIdentity {
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of the guest network.
    pub prefix: u8,
    /// Default gateway.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// MAC address `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// DNS servers for `/etc/resolv.conf` (left alone when empty).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

impl Identity {
    /// Checks the host name, entropy size, prefix and MAC.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(ProtocolError::invalid(
                "hostname",
                format!("{h:?} is not 1-64 of [A-Za-z0-9-.]"),
            ));
        }
        let n = self.entropy.len();
        if !(MIN_IDENTITY_ENTROPY..=MAX_IDENTITY_ENTROPY).contains(&n) {
            return Err(ProtocolError::invalid(
                "entropy",
                format!("{n} bytes is outside {MIN_IDENTITY_ENTROPY}..={MAX_IDENTITY_ENTROPY}"),
            ));
        }
        if let Some(k) = &self.ssh_host_key {
            if k.is_empty() || k.len() > MAX_HOST_KEY_LEN {
                return Err(ProtocolError::invalid(
                    "ssh_host_key",
                    format!("{} bytes is outside 1..={MAX_HOST_KEY_LEN}", k.len()),
                ));
            }
        }
        if let Some(net) = &self.net {
            if net.prefix > 32 {
                return Err(ProtocolError::invalid(
                    "prefix",
                    format!("{} is not a prefix length", net.prefix),
                ));
            }
            parse_mac(&net.mac)?;
        }
        Ok(())
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex, either case).
pub fn parse_mac(mac: &str) -> Result<[u8; 6], ProtocolError> {
    let bad = || ProtocolError::invalid("mac", format!("{mac:?} is not xx:xx:xx:xx:xx:xx"));
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            hostname: "fork-1".into(),
            net: Some(NetIdentity {
                ip: Ipv4Addr::new(172, 16, 0, 5),
                prefix: 16,
                gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
                mac: "02:00:ac:10:00:05".into(),
                dns: vec![],
            }),
            unix_time_ns: 1,
            entropy: vec![7; 32],
            ssh_host_key: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn valid_identity_round_trips_through_a_frame() {
        let id = identity();
        id.validate().unwrap();
        let f = crate::Request::Identity(id.clone()).to_frame(5).unwrap();
        assert_eq!(f.frame_type, crate::FrameType::Identity);
        assert_eq!(
            crate::Request::from_frame(f).unwrap(),
            crate::Request::Identity(id)
        );
    }

    #[test]
    fn bad_identities_are_refused() {
        let mut id = identity();
        id.entropy = vec![0; 31];
        assert!(id.validate().is_err());
        id.entropy = vec![0; 513];
        assert!(id.validate().is_err());
        let mut id = identity();
        id.hostname = "a b".into();
        assert!(id.validate().is_err());
        id.hostname = String::new();
        assert!(id.validate().is_err());
        let mut id = identity();
        id.net.as_mut().unwrap().mac = "02:00:ac:10:00".into();
        assert!(id.validate().is_err());
        id.net.as_mut().unwrap().mac = "02:00:ac:10:00:zz".into();
        assert!(id.validate().is_err());
        let mut id = identity();
        id.net.as_mut().unwrap().prefix = 33;
        assert!(id.validate().is_err());
        let mut id = identity();
        id.ssh_host_key = Some(Vec::new());
        assert!(id.validate().is_err());
        id.ssh_host_key = Some(vec![0; MAX_HOST_KEY_LEN + 1]);
        assert!(id.validate().is_err());
        id.ssh_host_key = None;
        id.validate().unwrap();
        // An invalid identity in a frame is refused when parsing.
        let f = crate::Frame::json(crate::FrameType::Identity, 1, &{
            let mut id = identity();
            id.entropy.clear();
            id
        })
        .unwrap();
        assert!(crate::Request::from_frame(f).is_err());
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:AC:10:00:ff").unwrap(),
            [2, 0, 0xac, 0x10, 0, 0xff]
        );
        assert!(parse_mac("02:00:ac:10:00:05:06").is_err());
    }
}
