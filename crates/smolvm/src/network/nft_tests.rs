use std::net::Ipv4Addr;

use super::*;

pub(crate) fn net(n: u8, port: Option<u16>) -> NetworkConfig {
    NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, n),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some(format!("smv-{n}")),
        guest_mac: format!("02:00:ac:10:00:{n:02x}"),
        ssh_host_port: port,
        mode: crate::info::NetworkMode::Tap,
    }
}

pub(crate) const BASE: &str = "\
add table inet smolvm
add chain inet smolvm guest_egress
add chain inet smolvm forward { type filter hook forward priority 0; policy accept; }
flush chain inet smolvm forward
add rule inet smolvm forward iifname \"smv-*\" oifname \"smv-*\" drop
add rule inet smolvm forward oifname \"smv-*\" ct state established,related accept
add rule inet smolvm forward oifname \"smv-*\" drop
add rule inet smolvm forward iifname \"smv-*\" jump guest_egress
add rule inet smolvm forward iifname \"smv-*\" drop
add chain inet smolvm input { type filter hook input priority 0; policy accept; }
flush chain inet smolvm input
add rule inet smolvm input iifname \"smv-*\" ct state established,related accept
add rule inet smolvm input iifname \"smv-*\" drop
add chain inet smolvm nat_output { type nat hook output priority -100; policy accept; }
add chain inet smolvm nat_postrouting { type nat hook postrouting priority 100; policy accept; }
";

pub(crate) const VM5_RULES: &str = "\
add rule inet smolvm guest_egress iifname \"smv-5\" ip saddr 172.16.0.5 accept comment \"smolvm:vm-5\"
add rule inet smolvm nat_postrouting ip saddr 172.16.0.5 oifname != \"smv-*\" masquerade comment \"smolvm:vm-5\"
add rule inet smolvm nat_output ip daddr 127.0.0.1 tcp dport 2222 dnat ip to 172.16.0.5:22 comment \"smolvm:vm-5\"
add rule inet smolvm nat_postrouting oifname \"smv-5\" ip saddr 127.0.0.0/8 ip daddr 172.16.0.5 tcp dport 22 snat ip to 172.16.0.1 comment \"smolvm:vm-5\"
";

#[test]
fn base_script_is_exact() {
    assert_eq!(base_script(), BASE);
}

#[test]
fn vm_rules_are_exact_and_the_forward_needs_a_port() {
    assert_eq!(vm_rules_script("vm-5", &net(5, Some(2222))), VM5_RULES);
    assert_eq!(
        vm_rules_script("vm-5", &net(5, None)),
        "add rule inet smolvm guest_egress iifname \"smv-5\" ip saddr 172.16.0.5 accept comment \"smolvm:vm-5\"\n\
         add rule inet smolvm nat_postrouting ip saddr 172.16.0.5 oifname != \"smv-*\" masquerade comment \"smolvm:vm-5\"\n"
    );
}

#[test]
fn setup_script_replaces_stale_rules_in_one_transaction() {
    let stale = vec![RuleInfo {
        family: "inet".into(),
        table: "smolvm".into(),
        chain: "nat_output".into(),
        handle: 17,
        comment: Some("smolvm:vm-5".into()),
        tcp_dports: vec![2222],
    }];
    assert_eq!(
        setup_script("vm-5", &net(5, Some(2222)), &stale),
        format!("{BASE}delete rule inet smolvm nat_output handle 17\n{VM5_RULES}")
    );
    assert_eq!(delete_script(&[]), "");
}

#[test]
fn foreign_accepts_are_exact_json() {
    let doc: serde_json::Value =
        serde_json::from_str(&foreign_accept_json("inet", "fw", "fwd")).unwrap();
    let want = serde_json::json!({"nftables": [
        {"insert": {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "comment": "smolvm", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "smv-*"}},
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": null}]}}},
        {"insert": {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "comment": "smolvm", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "smv-*"}},
            {"accept": null}]}}}
    ]});
    assert_eq!(doc, want);
    let rule = RuleInfo {
        family: "ip".into(),
        table: "filter".into(),
        chain: "fwd".into(),
        handle: 3,
        comment: None,
        tcp_dports: vec![],
    };
    assert_eq!(
        delete_json(&[rule]),
        r#"{"nftables":[{"delete":{"rule":{"chain":"fwd","family":"ip","handle":3,"table":"filter"}}}]}"#
    );
}

/// Real `nft -j list ruleset` output of nftables 1.0.6 (trimmed to what the parser looks at).
pub(crate) const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"table": {"family": "ip", "name": "filter", "handle": 2}},
 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"table": {"family": "inet", "name": "smolvm", "handle": 1}},
 {"chain": {"family": "inet", "table": "smolvm", "name": "nat_output", "handle": 1, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
 {"chain": {"family": "inet", "table": "smolvm", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "smolvm", "chain": "nat_output", "handle": 6, "comment": "smolvm:vm1", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2222}}, {"dnat": {"family": "ip", "addr": "172.16.0.5", "port": 22}}]}},
 {"rule": {"family": "inet", "table": "smolvm", "chain": "nat_postrouting", "handle": 7, "comment": "smolvm:vm1", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "smv-1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"snat": {"family": "ip", "addr": "172.16.0.1"}}]}},
 {"rule": {"family": "inet", "table": "smolvm", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "smv-*"}}, {"drop": null}]}}
]}"#;

#[test]
fn parses_a_real_listing() {
    let r = Ruleset::parse(LISTING).unwrap();
    assert!(r.has_smolvm_table());
    assert_eq!(r.chains.len(), 3);
    assert_eq!(r.chains[0].policy.as_deref(), Some("drop"));
    assert_eq!(r.chains[0].hook.as_deref(), Some("forward"));
    let vm1 = r.vm_rules("vm1");
    assert_eq!(vm1.len(), 2);
    assert_eq!(vm1[0].chain, "nat_output");
    assert_eq!(vm1[0].handle, 6);
    assert_eq!(vm1[0].tcp_dports, vec![2222]);
    assert_eq!(vm1[1].tcp_dports, vec![22]);
    assert!(r.vm_rules("vm2").is_empty());
    assert_eq!(r.smolvm_rules().count(), 3);
    assert_eq!(Ruleset::parse("").unwrap(), Ruleset::default());
    assert!(Ruleset::parse("not json").is_err());
}
