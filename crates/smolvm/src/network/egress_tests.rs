use std::net::Ipv4Addr;

use super::*;
use crate::network::nft::tests::net;
use crate::network::policy::NetworkPolicy;

fn allow_plan() -> EgressPlan {
    EgressPlan {
        policy: NetworkPolicy::allow(["10.1.0.0/16", "192.0.2.7"], ["a.test"], [80, 443]).unwrap(),
        dns_servers: vec![Ipv4Addr::new(10, 99, 0, 2)],
        domain_addrs: vec![
            (Ipv4Addr::new(198, 51, 100, 1), 60),
            (Ipv4Addr::new(198, 51, 100, 2), 0),
            (Ipv4Addr::new(198, 51, 100, 1), 60),
        ],
    }
}

const OBJECTS_HEAD: &str = "\
add chain inet smolvm eg_vm-5
flush chain inet smolvm eg_vm-5
add set inet smolvm egn_vm-5 { type ipv4_addr; flags interval; auto-merge; }
flush set inet smolvm egn_vm-5
add set inet smolvm egd_vm-5 { type ipv4_addr; flags timeout; }
flush set inet smolvm egd_vm-5
add set inet smolvm egs_vm-5 { type ipv4_addr; }
flush set inet smolvm egs_vm-5
add counter inet smolvm egc_vm-5
";

const ALLOW_OBJECTS_TAIL: &str = "\
add element inet smolvm egn_vm-5 { 10.1.0.0/16, 192.0.2.7 }
add element inet smolvm egd_vm-5 { 198.51.100.1 timeout 90s, 198.51.100.2 timeout 35s }
add element inet smolvm egs_vm-5 { 10.99.0.2 }
add rule inet smolvm eg_vm-5 ip daddr @egs_vm-5 meta l4proto { tcp, udp } th dport 53 accept
add rule inet smolvm eg_vm-5 ip daddr @egn_vm-5 meta l4proto { tcp, udp } th dport { 80, 443 } accept
add rule inet smolvm eg_vm-5 ip daddr @egd_vm-5 meta l4proto { tcp, udp } th dport { 80, 443 } accept
add rule inet smolvm eg_vm-5 counter name \"egc_vm-5\" drop
";

const REMOVE: &str = "\
add chain inet smolvm eg_vm-5
flush chain inet smolvm eg_vm-5
delete chain inet smolvm eg_vm-5
add set inet smolvm egn_vm-5 { type ipv4_addr; flags interval; auto-merge; }
delete set inet smolvm egn_vm-5
add set inet smolvm egd_vm-5 { type ipv4_addr; flags timeout; }
delete set inet smolvm egd_vm-5
add set inet smolvm egs_vm-5 { type ipv4_addr; }
delete set inet smolvm egs_vm-5
add counter inet smolvm egc_vm-5
delete counter inet smolvm egc_vm-5
";

const JUMP: &str = "add rule inet smolvm guest_egress iifname \"smv-5\" ip saddr 172.16.0.5 jump eg_vm-5 comment \"smolvm:vm-5\"\n";
const ACCEPT: &str = "add rule inet smolvm guest_egress iifname \"smv-5\" ip saddr 172.16.0.5 accept comment \"smolvm:vm-5\"\n";

fn rule(chain: &str, handle: u64) -> RuleInfo {
    RuleInfo {
        family: "inet".into(),
        table: "smolvm".into(),
        chain: chain.into(),
        handle,
        comment: Some("smolvm:vm-5".into()),
        tcp_dports: vec![],
    }
}

#[test]
fn open_has_no_objects_and_accepts() {
    assert_eq!(objects_script("vm-5", &EgressPlan::open()), "");
    assert_eq!(
        dispatch_rule("vm-5", &net(5, None), &NetworkPolicy::Open),
        ACCEPT
    );
}

#[test]
fn none_is_a_counted_drop() {
    let plan = EgressPlan {
        policy: NetworkPolicy::None,
        ..EgressPlan::open()
    };
    assert_eq!(
        objects_script("vm-5", &plan),
        format!("{OBJECTS_HEAD}add rule inet smolvm eg_vm-5 counter name \"egc_vm-5\" drop\n")
    );
    assert_eq!(dispatch_rule("vm-5", &net(5, None), &plan.policy), JUMP);
}

#[test]
fn allow_list_scripts_are_exact() {
    assert_eq!(
        objects_script("vm-5", &allow_plan()),
        format!("{OBJECTS_HEAD}{ALLOW_OBJECTS_TAIL}")
    );
    // Without ports every protocol passes to the listed destinations; no domains, no elements.
    let plan = EgressPlan {
        policy: NetworkPolicy::allow(["0.0.0.0/0"], Vec::<String>::new(), []).unwrap(),
        dns_servers: vec![],
        domain_addrs: vec![],
    };
    assert_eq!(
        objects_script("vm-5", &plan),
        format!(
            "{OBJECTS_HEAD}add element inet smolvm egn_vm-5 {{ 0.0.0.0/0 }}\n\
             add rule inet smolvm eg_vm-5 ip daddr @egs_vm-5 meta l4proto {{ tcp, udp }} th dport 53 accept\n\
             add rule inet smolvm eg_vm-5 ip daddr @egn_vm-5 accept\n\
             add rule inet smolvm eg_vm-5 ip daddr @egd_vm-5 accept\n\
             add rule inet smolvm eg_vm-5 counter name \"egc_vm-5\" drop\n"
        )
    );
}

#[test]
fn updates_swap_the_dispatch_rule_in_one_script() {
    let current = [rule("guest_egress", 7), rule("nat_postrouting", 8)];
    // open -> allow: the accept goes, objects and the jump come.
    assert_eq!(
        update_script("vm-5", &net(5, None), &allow_plan(), &current, false),
        format!(
            "delete rule inet smolvm guest_egress handle 7\n{OBJECTS_HEAD}{ALLOW_OBJECTS_TAIL}{JUMP}"
        )
    );
    // allow -> open: the jump goes, then the objects, then the accept comes back.
    assert_eq!(
        update_script("vm-5", &net(5, None), &EgressPlan::open(), &current, true),
        format!("delete rule inet smolvm guest_egress handle 7\n{REMOVE}{ACCEPT}")
    );
    assert_eq!(remove_objects_script("vm-5"), REMOVE);
}

#[test]
fn refresh_refills_only_the_domain_set() {
    assert_eq!(
        refresh_domains_script("vm-5", &allow_plan().domain_addrs),
        "flush set inet smolvm egd_vm-5\n\
         add element inet smolvm egd_vm-5 { 198.51.100.1 timeout 90s, 198.51.100.2 timeout 35s }\n"
    );
    assert_eq!(
        refresh_domains_script("vm-5", &[]),
        "flush set inet smolvm egd_vm-5\n"
    );
}

#[test]
fn chain_names_map_back_to_vm_ids() {
    assert_eq!(chain("vm-5"), "eg_vm-5");
    assert_eq!(chain_vm_id("eg_vm-5"), Some("vm-5"));
    assert_eq!(chain_vm_id("guest_egress"), None);
    assert_eq!(chain_vm_id("eg_Bad"), None);
}

#[test]
fn counters_parse() {
    let j = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "egc_vm-5", "table": "smolvm", "handle": 4, "packets": 3, "bytes": 180}}]}"#;
    assert_eq!(parse_counter(j), Some((3, 180)));
    assert_eq!(parse_counter("{}"), None);
}
