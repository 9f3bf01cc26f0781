//! `ip` argv builders and the parsing of `ip -j -d link show`.

use serde_json::Value;

use crate::info::NetworkConfig;

/// One network interface from `ip -j -d link show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Link alias (smolvm puts `smolvm:<vm_id>` there).
    pub alias: Option<String>,
    /// Link kind (`tun`, `veth`, ...), if any.
    pub kind: Option<String>,
}

/// Parses `ip -j -d link show`. Empty output is no links.
pub(super) fn parse_links(json: &str) -> Result<Vec<LinkInfo>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Vec<Value> = serde_json::from_str(json)?;
    Ok(v.iter()
        .map(|l| LinkInfo {
            name: l
                .get("ifname")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            alias: l
                .get("ifalias")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .map(str::to_string),
            kind: l
                .get("linkinfo")
                .and_then(|i| i.get("info_kind"))
                .and_then(Value::as_str)
                .map(str::to_string),
        })
        .collect())
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `ip -j -d link show`.
pub(super) fn list_links() -> Vec<String> {
    argv(&["-j", "-d", "link", "show"])
}

/// `ip tuntap add dev <tap> mode tap user <uid>`: the owner lets a VMM without CAP_NET_ADMIN attach.
pub(super) fn add_tap(tap: &str, owner_uid: u32) -> Vec<String> {
    argv(&[
        "tuntap",
        "add",
        "dev",
        tap,
        "mode",
        "tap",
        "user",
        &owner_uid.to_string(),
    ])
}

/// `ip link set dev <tap> alias <tag> up`.
pub(super) fn tag_and_up(tap: &str, tag: &str) -> Vec<String> {
    argv(&["link", "set", "dev", tap, "alias", tag, "up"])
}

/// `ip addr replace <gateway>/32 dev <tap>`: the shared gateway address, idempotent.
pub(super) fn gateway_addr(net: &NetworkConfig) -> Vec<String> {
    argv(&[
        "addr",
        "replace",
        &format!("{}/32", net.gateway_ip),
        "dev",
        net.tap_name(),
    ])
}

/// `ip route replace <guest>/32 dev <tap> src <gateway>`, idempotent.
pub(super) fn guest_route(net: &NetworkConfig) -> Vec<String> {
    argv(&[
        "route",
        "replace",
        &format!("{}/32", net.guest_ip),
        "dev",
        net.tap_name(),
        "src",
        &net.gateway_ip.to_string(),
    ])
}

/// `ip link del dev <name>`.
pub(super) fn delete_link(name: &str) -> Vec<String> {
    argv(&["link", "del", "dev", name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_listing() {
        // Trimmed output of iproute2 6.1 for a loopback, a tagged TAP and an untagged TAP.
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
          {"ifindex":2,"ifname":"smv-1","linkinfo":{"info_kind":"tun","info_data":{"type":"tap"}},"ifalias":"smolvm:vm1"},
          {"ifindex":3,"ifname":"smv-2","linkinfo":{"info_kind":"tun"}}]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].kind, None);
        assert_eq!(links[1].alias.as_deref(), Some("smolvm:vm1"));
        assert_eq!(links[1].kind.as_deref(), Some("tun"));
        assert_eq!(links[2].alias, None);
        assert!(parse_links("").unwrap().is_empty());
        assert!(parse_links("{").is_err());
    }
}
