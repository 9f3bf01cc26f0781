//! `HostNetwork` with egress policies: the exact commands and nft scripts, against recorded tools.

use std::sync::Arc;

use super::*;
use crate::network::nft::tests::{net, BASE};
use crate::network::{NetworkPolicy, RecordingCommands};

fn fake() -> (Arc<RecordingCommands>, HostNetwork) {
    let f = Arc::new(RecordingCommands::new());
    f.set_file(IP_FORWARD, "1\n");
    f.fail_once(&["iptables", "-V"], "not found");
    (f.clone(), HostNetwork::new(f))
}

fn none_plan() -> EgressPlan {
    EgressPlan {
        policy: NetworkPolicy::None,
        ..EgressPlan::open()
    }
}

/// A listing where vm-5's network is set up with a non-open policy (its jump rule has handle 7).
const LIVE: &str = r#"{"nftables": [
 {"table": {"family": "inet", "name": "smolvm", "handle": 1}},
 {"chain": {"family": "inet", "table": "smolvm", "name": "guest_egress", "handle": 2}},
 {"chain": {"family": "inet", "table": "smolvm", "name": "eg_vm-5", "handle": 3}},
 {"chain": {"family": "inet", "table": "smolvm", "name": "eg_gone", "handle": 4}},
 {"rule": {"family": "inet", "table": "smolvm", "chain": "guest_egress", "handle": 7, "comment": "smolvm:vm-5", "expr": []}},
 {"rule": {"family": "inet", "table": "smolvm", "chain": "nat_postrouting", "handle": 8, "comment": "smolvm:vm-5", "expr": []}}
]}"#;

const NONE_OBJECTS: &str = "\
add chain inet smolvm eg_vm-5
flush chain inet smolvm eg_vm-5
add set inet smolvm egn_vm-5 { type ipv4_addr; flags interval; auto-merge; }
flush set inet smolvm egn_vm-5
add set inet smolvm egd_vm-5 { type ipv4_addr; flags timeout; }
flush set inet smolvm egd_vm-5
add set inet smolvm egs_vm-5 { type ipv4_addr; }
flush set inet smolvm egs_vm-5
add counter inet smolvm egc_vm-5
add rule inet smolvm eg_vm-5 counter name \"egc_vm-5\" drop
";

const JUMP: &str = "add rule inet smolvm guest_egress iifname \"smv-5\" ip saddr 172.16.0.5 jump eg_vm-5 comment \"smolvm:vm-5\"\n";
const MASQ: &str = "add rule inet smolvm nat_postrouting ip saddr 172.16.0.5 oifname != \"smv-*\" masquerade comment \"smolvm:vm-5\"\n";

#[test]
fn setup_with_a_policy_writes_its_objects_in_the_same_transaction() {
    let (f, h) = fake();
    h.setup_vm_with("vm-5", &net(5, None), &none_plan())
        .unwrap();
    assert_eq!(
        f.stdins("nft"),
        [format!("{BASE}{NONE_OBJECTS}{JUMP}{MASQ}")]
    );
}

#[test]
fn a_live_change_is_one_transaction_replacing_the_dispatch_rule() {
    let (f, h) = fake();
    f.respond(&["nft", "-j"], LIVE);
    h.set_egress("vm-5", &net(5, None), &none_plan()).unwrap();
    assert_eq!(f.lines(), ["nft -j list ruleset", "nft -f -"]);
    assert_eq!(
        f.stdins("nft"),
        [format!(
            "delete rule inet smolvm guest_egress handle 7\n{NONE_OBJECTS}{JUMP}"
        )]
    );
}

#[test]
fn a_failed_change_reports_the_error_and_runs_nothing_else() {
    let (f, h) = fake();
    f.respond(&["nft", "-j"], LIVE);
    f.fail_once(&["nft", "-f"], "Error: Could not process rule");
    let e = h
        .set_egress("vm-5", &net(5, None), &EgressPlan::open())
        .unwrap_err();
    assert!(e.to_string().contains("Could not process rule"), "{e}");
    // nft applies a script all or nothing: the old rules stay in force, nothing is left to undo.
    assert_eq!(f.lines(), ["nft -j list ruleset", "nft -f -"]);
}

#[test]
fn a_change_without_rules_is_refused_before_any_write() {
    let (f, h) = fake();
    let e = h
        .set_egress("vm-5", &net(5, None), &none_plan())
        .unwrap_err();
    assert!(matches!(e, NetworkError::NotSetUp { .. }), "{e}");
    assert_eq!(f.lines(), ["nft -j list ruleset"]);
}

#[test]
fn teardown_and_cleanup_remove_the_policy_objects() {
    let (f, h) = fake();
    f.respond(&["nft", "-j"], LIVE);
    f.respond(&["ip", "-j"], r#"[{"ifname":"lo"}]"#);
    h.teardown_vm("vm-5", &net(5, None)).unwrap();
    let script = &f.stdins("nft")[0];
    assert!(script.starts_with("delete rule inet smolvm guest_egress handle 7\ndelete rule inet smolvm nat_postrouting handle 8\n"), "{script}");
    assert!(
        script.ends_with(&egress::remove_objects_script("vm-5")),
        "{script}"
    );

    let (f, h) = fake();
    f.respond(&["nft", "-j"], LIVE);
    f.respond(&["ip", "-j"], r#"[{"ifname":"lo"}]"#);
    let known = ["vm-5".to_string()].into_iter().collect();
    let report = h.cleanup_orphans(&known, false).unwrap();
    assert_eq!(report.rules.len(), 1);
    assert_eq!(report.rules[0].chain, "eg_gone");
    assert_eq!(f.stdins("nft"), [egress::remove_objects_script("gone")]);
}

#[test]
fn domain_refresh_and_counters() {
    let (f, h) = fake();
    h.refresh_domains("vm-5", &[("192.0.2.9".parse().unwrap(), 10)])
        .unwrap();
    assert_eq!(
        f.stdins("nft"),
        ["flush set inet smolvm egd_vm-5\nadd element inet smolvm egd_vm-5 { 192.0.2.9 timeout 40s }\n"]
    );
    let (f, h) = fake();
    f.respond_once(&["nft", "-j", "list", "ruleset"], LIVE);
    f.respond(
        &["nft", "-j", "list", "counter"],
        r#"{"nftables": [{"counter": {"name": "egc_vm-5", "packets": 4, "bytes": 240}}]}"#,
    );
    assert_eq!(h.egress_drops("vm-5").unwrap(), Some((4, 240)));
    assert!(f
        .lines()
        .contains(&"nft -j list counter inet smolvm egc_vm-5".to_string()));
}
