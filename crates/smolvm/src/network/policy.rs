//! [`NetworkPolicy`]: what a TAP guest may reach beyond its gateway (egress).
//!
//! * `open`: everything (NAT to the uplink, smolvm's behaviour before policies existed).
//! * `none`: nothing beyond the gateway. The agent channel is not a network path (vsock/serial), so
//!   commands, files and env still work.
//! * an allow-list: destinations given as CIDRs (`10.0.0.0/8`, `192.0.2.7`) or domain names
//!   (`example.com`), optionally limited to TCP/UDP destination ports. A destination passes if its address
//!   is in a CIDR or among the current addresses of a domain, and (when ports are given) its port is one
//!   of them. Domains are resolved on the host by smolvm's own resolver (see [`super::dns`]), never by
//!   the guest, and re-resolved when their TTL runs out.
//!
//! Guest<->guest and guest->host rules are the same under every policy (dropped / only replies).
//!
//! JSON form (VM config field `network_policy`): `"open"`, `"none"` or
//! `{"cidrs": [...], "domains": [...], "ports": [...]}` (each list optional, at least one destination).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Field name used in validation errors.
pub(crate) const FIELD: &str = "network_policy";
/// Most entries an allow-list may hold in each list (keeps nft scripts and resolution bounded).
pub(crate) const MAX_ENTRIES: usize = 256;

/// An IPv4 network in CIDR notation; a bare address is a `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits are zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0-32.
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR"))?;
        let prefix = match p {
            None => 32,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 32 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?} has a prefix length outside 0-32")),
            },
        };
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Checks a domain name: 1-253 characters, dot-separated labels of 1-63 letters, digits and `-` (not at
/// a label's ends), at least two labels, not an IP address. Returns it lowercased without a final dot.
pub(crate) fn validate_domain(name: &str) -> Result<String, String> {
    let d = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if d.is_empty() || d.len() > 253 {
        return Err(format!("{name:?} is not 1-253 characters long"));
    }
    if !d.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a domain name (labels of letters, digits and '-')"
        ));
    }
    if !d.contains('.') {
        return Err(format!("{name:?} needs at least two labels (example.com)"));
    }
    if d.parse::<Ipv4Addr>().is_ok() {
        return Err(format!("{name:?} is an address: list it as a CIDR"));
    }
    Ok(d)
}

/// The allow-list of a [`NetworkPolicy::Allow`]. Build one with [`NetworkPolicy::allow`] (validates).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// Destination networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Destination domain names, resolved by smolvm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// TCP/UDP destination ports; empty = every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl AllowList {
    /// The networks (all of them once the policy went through [`NetworkPolicy::validated`]).
    pub fn networks(&self) -> Vec<Cidr> {
        self.cidrs.iter().filter_map(|c| c.parse().ok()).collect()
    }
}

/// What a VM's guest may reach beyond its gateway. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// Everything (NAT to the uplink).
    #[default]
    Open,
    /// Nothing beyond the gateway.
    None,
    /// Only the listed destinations.
    Allow(AllowList),
}

impl NetworkPolicy {
    /// True for [`NetworkPolicy::Open`].
    pub fn is_open(&self) -> bool {
        matches!(self, NetworkPolicy::Open)
    }

    /// An allow-list policy from CLI-style entries: each `cidrs` entry a CIDR or address, each
    /// `domains` entry a name, `ports` 1-65535. Validated and normalised.
    pub fn allow(
        cidrs: impl IntoIterator<Item = impl Into<String>>,
        domains: impl IntoIterator<Item = impl Into<String>>,
        ports: impl IntoIterator<Item = u16>,
    ) -> Result<Self, ValidationError> {
        NetworkPolicy::Allow(AllowList {
            cidrs: cidrs.into_iter().map(Into::into).collect(),
            domains: domains.into_iter().map(Into::into).collect(),
            ports: ports.into_iter().collect(),
        })
        .validated()
    }

    /// Checks every entry (the error names the field `network_policy` and the bad entry) and returns
    /// the policy normalised: CIDRs in canonical form, domains lowercased, lists sorted without
    /// duplicates.
    pub fn validated(self) -> Result<Self, ValidationError> {
        let NetworkPolicy::Allow(list) = self else {
            return Ok(self);
        };
        let bad = |rule: String| ValidationError::new(FIELD, rule);
        if list.cidrs.is_empty() && list.domains.is_empty() {
            return Err(bad(
                "an allow-list needs at least one CIDR or domain (use \"none\" to allow nothing)"
                    .into(),
            ));
        }
        for (what, n) in [
            ("cidrs", list.cidrs.len()),
            ("domains", list.domains.len()),
            ("ports", list.ports.len()),
        ] {
            if n > MAX_ENTRIES {
                return Err(bad(format!("at most {MAX_ENTRIES} {what}, got {n}")));
            }
        }
        let mut nets = Vec::new();
        for c in &list.cidrs {
            nets.push(c.parse::<Cidr>().map_err(bad)?);
        }
        nets.sort();
        nets.dedup();
        let mut domains = Vec::new();
        for d in &list.domains {
            domains.push(validate_domain(d).map_err(bad)?);
        }
        domains.sort();
        domains.dedup();
        let mut ports = list.ports.clone();
        if ports.contains(&0) {
            return Err(bad("port 0 is not a destination port (1-65535)".into()));
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(NetworkPolicy::Allow(AllowList {
            cidrs: nets.iter().map(ToString::to_string).collect(),
            domains,
            ports,
        }))
    }
}

impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkPolicy::Open => f.write_str("open"),
            NetworkPolicy::None => f.write_str("none"),
            NetworkPolicy::Allow(l) => {
                let dests: Vec<&str> = l
                    .cidrs
                    .iter()
                    .chain(&l.domains)
                    .map(String::as_str)
                    .collect();
                write!(f, "allow {}", dests.join(","))?;
                if !l.ports.is_empty() {
                    let ports: Vec<String> = l.ports.iter().map(ToString::to_string).collect();
                    write!(f, " ports {}", ports.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// The JSON shapes: a word or an allow-list object.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Word(String),
    Allow(AllowList),
}

impl Serialize for NetworkPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NetworkPolicy::Open => Repr::Word("open".into()),
            NetworkPolicy::None => Repr::Word("none".into()),
            NetworkPolicy::Allow(l) => Repr::Allow(l.clone()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let policy = match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "network_policy must be \"open\", \"none\" or {\"cidrs\": [..], \"domains\": [..], \"ports\": [..]}",
            )
        })? {
            Repr::Word(w) if w == "open" => NetworkPolicy::Open,
            Repr::Word(w) if w == "none" => NetworkPolicy::None,
            Repr::Word(w) => {
                return Err(serde::de::Error::custom(format!(
                    "network_policy must be \"open\", \"none\" or an allow-list, got {w:?}"
                )))
            }
            Repr::Allow(l) => NetworkPolicy::Allow(l),
        };
        policy
            .validated()
            .map_err(|e| serde::de::Error::custom(e.rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_refuse_bad_ones() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!(
            "192.0.2.7/32".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7"
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_checked_and_normalised() {
        assert_eq!(validate_domain("Example.COM.").unwrap(), "example.com");
        assert_eq!(validate_domain("a-b.c1.test").unwrap(), "a-b.c1.test");
        for bad in [
            "",
            "localhost",
            "-a.com",
            "a-.com",
            "a..com",
            "a b.com",
            "a;b.com",
            "1.2.3.4",
            "\"x\".com",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad}");
        }
        assert!(validate_domain(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn allow_lists_are_validated_naming_the_field_and_entry() {
        let p = NetworkPolicy::allow(
            ["10.1.0.0/16", "10.1.0.0/16", "192.0.2.7"],
            ["B.test"],
            [443, 80, 443],
        )
        .unwrap();
        assert_eq!(
            p,
            NetworkPolicy::Allow(AllowList {
                cidrs: vec!["10.1.0.0/16".into(), "192.0.2.7".into()],
                domains: vec!["b.test".into()],
                ports: vec![80, 443],
            })
        );
        assert_eq!(
            p.to_string(),
            "allow 10.1.0.0/16,192.0.2.7,b.test ports 80,443"
        );
        let e = NetworkPolicy::allow(["10.0.0.1/8"], Vec::<String>::new(), []).unwrap_err();
        assert_eq!(e.field, "network_policy");
        assert!(e.rule.contains("10.0.0.1/8"), "{}", e.rule);
        let e = NetworkPolicy::allow(["10.0.0.0/8"], ["bad_name.com"], []).unwrap_err();
        assert!(e.rule.contains("bad_name.com"), "{}", e.rule);
        let e = NetworkPolicy::allow(["10.0.0.0/8"], Vec::<String>::new(), [0]).unwrap_err();
        assert!(e.rule.contains("port 0"), "{}", e.rule);
        let e = NetworkPolicy::allow(Vec::<String>::new(), Vec::<String>::new(), [80]).unwrap_err();
        assert!(e.rule.contains("at least one"), "{}", e.rule);
    }

    #[test]
    fn json_round_trips_and_refuses_garbage() {
        for (json, p) in [
            ("\"open\"", NetworkPolicy::Open),
            ("\"none\"", NetworkPolicy::None),
            (
                r#"{"cidrs":["10.0.0.0/8"],"domains":["a.test"],"ports":[443]}"#,
                NetworkPolicy::allow(["10.0.0.0/8"], ["a.test"], [443]).unwrap(),
            ),
        ] {
            assert_eq!(serde_json::from_str::<NetworkPolicy>(json).unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), json);
        }
        for bad in [
            "\"closed\"",
            "5",
            r#"{"cidrs":["10.0.0.1/8"]}"#,
            r#"{"cidrs":["10.0.0.0/8"],"hosts":[]}"#,
            r#"{"ports":[80]}"#,
            r#"{"cidrs":["10.0.0.0/8"],"ports":[70000]}"#,
        ] {
            assert!(serde_json::from_str::<NetworkPolicy>(bad).is_err(), "{bad}");
        }
    }
}
