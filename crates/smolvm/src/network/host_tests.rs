use std::sync::Arc;

use super::*;
use crate::network::nft::tests::{net, BASE, LISTING, VM5_RULES};
use crate::network::{ForwardDropManager, RecordingCommands};

const V6: &str = "/proc/sys/net/ipv6/conf/smv-5/disable_ipv6";

fn fake() -> (Arc<RecordingCommands>, HostNetwork) {
    let f = Arc::new(RecordingCommands::new());
    f.set_file(IP_FORWARD, "0\n");
    f.set_file(V6, "0\n");
    // No iptables installed unless a test says otherwise.
    f.fail_once(&["iptables", "-V"], "not found");
    (f.clone(), HostNetwork::new(f))
}

fn tagged_tap(name: &str, tag: &str) -> String {
    format!(
        r#"[{{"ifname":"lo"}},{{"ifname":"{name}","linkinfo":{{"info_kind":"tun"}},"ifalias":"{tag}"}}]"#
    )
}

#[test]
fn fresh_setup_runs_exactly_these_commands() {
    let (f, h) = fake();
    h.setup_vm("vm-5", &net(5, Some(2222))).unwrap();
    assert_eq!(
        f.lines(),
        [
            "nft -j list ruleset",
            "ip -j -d link show",
            "ip tuntap add dev smv-5 mode tap user 0",
            "ip link set dev smv-5 alias smolvm:vm-5 up",
            "write /proc/sys/net/ipv4/conf/smv-5/route_localnet 1",
            "write /proc/sys/net/ipv6/conf/smv-5/disable_ipv6 1",
            "ip addr replace 172.16.0.1/32 dev smv-5",
            "ip route replace 172.16.0.5/32 dev smv-5 src 172.16.0.1",
            "write /proc/sys/net/ipv4/ip_forward 1",
            "iptables -V",
            "nft -f -",
        ]
    );
    assert_eq!(f.stdins("nft"), [format!("{BASE}{VM5_RULES}")]);
}

#[test]
fn second_setup_reuses_our_tap_and_replaces_our_rules() {
    let (f, h) = fake();
    f.set_file(IP_FORWARD, "1\n");
    f.respond(
        &["nft", "-j"],
        &LISTING.replace("smolvm:vm1", "smolvm:vm-5"),
    );
    f.respond(&["ip", "-j"], &tagged_tap("smv-5", "smolvm:vm-5"));
    h.setup_vm("vm-5", &net(5, Some(2222))).unwrap();
    let lines = f.lines();
    assert!(!lines.iter().any(|l| l.contains("tuntap")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("ip_forward")), "{lines:?}");
    // (The listing also has a DROP forward chain, opened first; see the Docker tests.)
    assert_eq!(
        f.stdins("nft").last().unwrap(),
        &format!(
            "{BASE}delete rule inet smolvm nat_output handle 6\n\
             delete rule inet smolvm nat_postrouting handle 7\n{VM5_RULES}"
        )
    );
}

#[test]
fn a_foreign_device_with_our_name_is_refused_untouched() {
    for tag in ["", "smolvm:other-vm", "libvirt"] {
        let (f, h) = fake();
        f.respond(&["ip", "-j"], &tagged_tap("smv-5", tag));
        let e = h.setup_vm("vm-5", &net(5, Some(2222))).unwrap_err();
        assert!(matches!(e, NetworkError::TapTaken { .. }), "{e:?}");
        assert!(e.to_string().contains("smv-5"), "{e}");
        assert_eq!(f.lines(), ["nft -j list ruleset", "ip -j -d link show"]);
    }
}

#[test]
fn a_taken_port_is_refused_before_anything_is_made() {
    let (f, h) = fake();
    f.respond(&["nft", "-j"], LISTING);
    let e = h.setup_vm("vm-5", &net(5, Some(2222))).unwrap_err();
    assert!(e.to_string().contains("VM \"vm1\""), "{e}");
    assert_eq!(f.lines(), ["nft -j list ruleset"]);

    let (f, h) = fake();
    f.set_port_busy(2222);
    let e = h.setup_vm("vm-5", &net(5, Some(2222))).unwrap_err();
    assert!(
        matches!(e, NetworkError::PortTaken { port: 2222, .. }),
        "{e:?}"
    );
    assert_eq!(f.lines(), ["nft -j list ruleset"]);
}

#[test]
fn failed_rules_roll_back_the_tap_we_made() {
    let (f, h) = fake();
    f.fail_once(&["nft", "-f"], "Error: Could not process rule");
    let e = h.setup_vm("vm-5", &net(5, None)).unwrap_err();
    assert!(e.to_string().contains("Could not process rule"), "{e}");
    assert_eq!(f.lines().last().unwrap(), "ip link del dev smv-5");

    // A TAP that was already there (ours) is kept.
    let (f, h) = fake();
    f.respond(&["ip", "-j"], &tagged_tap("smv-5", "smolvm:vm-5"));
    f.fail_once(&["nft", "-f"], "boom");
    h.setup_vm("vm-5", &net(5, None)).unwrap_err();
    assert_eq!(f.lines().last().unwrap(), "nft -f -");

    // If the rollback fails too, the error says so and keeps the cause.
    let (f, h) = fake();
    f.fail_once(
        &["ip", "addr"],
        "RTNETLINK answers: Operation not permitted",
    );
    f.fail_once(&["ip", "link", "del"], "busy");
    let e = h.setup_vm("vm-5", &net(5, None)).unwrap_err();
    let NetworkError::RollbackFailed { source, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(source.is_permission());
}

#[test]
fn bad_names_and_missing_privileges_fail_before_any_command() {
    let (f, h) = fake();
    let mut bad_tap = net(5, None);
    bad_tap.tap_device = Some("eth0".into());
    assert!(matches!(
        h.setup_vm("vm-5", &bad_tap),
        Err(NetworkError::InvalidName { .. })
    ));
    assert!(matches!(
        h.setup_vm("vm\"; flush ruleset", &net(5, None)),
        Err(NetworkError::InvalidName { .. })
    ));
    f.set_capabilities(NetCapabilities {
        net_admin: false,
        euid: 1000,
        ..NetCapabilities::all()
    });
    let e = h.setup_vm("vm-5", &net(5, None)).unwrap_err();
    assert!(e.is_permission(), "{e}");
    assert!(h
        .teardown_vm("vm-5", &net(5, None))
        .unwrap_err()
        .is_permission());
    assert!(f.lines().is_empty(), "{:?}", f.lines());
}

#[test]
fn teardown_removes_rules_and_tap_and_is_idempotent() {
    let (f, h) = fake();
    f.respond_once(
        &["nft", "-j"],
        &LISTING.replace("smolvm:vm1", "smolvm:vm-5"),
    );
    f.respond_once(&["ip", "-j"], &tagged_tap("smv-5", "smolvm:vm-5"));
    h.teardown_vm("vm-5", &net(5, Some(2222))).unwrap();
    assert_eq!(
        f.lines(),
        [
            "nft -j list ruleset",
            "nft -f -",
            "ip -j -d link show",
            "ip link del dev smv-5"
        ]
    );
    assert_eq!(
        f.stdins("nft"),
        ["delete rule inet smolvm nat_output handle 6\ndelete rule inet smolvm nat_postrouting handle 7\n"]
    );
    // Second time: nothing left, nothing done.
    f.clear_calls();
    h.teardown_vm("vm-5", &net(5, Some(2222))).unwrap();
    assert_eq!(f.lines(), ["nft -j list ruleset", "ip -j -d link show"]);
}

#[test]
fn teardown_leaves_a_device_that_is_not_ours() {
    let (f, h) = fake();
    f.respond(&["ip", "-j"], &tagged_tap("smv-5", "smolvm:other"));
    h.teardown_vm("vm-5", &net(5, None)).unwrap();
    assert!(!f.lines().iter().any(|l| l.contains("del")));
}

#[test]
fn cleanup_lists_then_removes_orphans() {
    let (f, h) = fake();
    f.respond(&["nft", "-j"], LISTING);
    f.respond(
        &["ip", "-j"],
        r#"[{"ifname":"eth0"},
            {"ifname":"smv-1","linkinfo":{"info_kind":"tun"},"ifalias":"smolvm:vm1"},
            {"ifname":"smv-2","linkinfo":{"info_kind":"tun"},"ifalias":"smolvm:keep"},
            {"ifname":"smv-3","linkinfo":{"info_kind":"tun"}},
            {"ifname":"smv-4","linkinfo":{"info_kind":"veth"}},
            {"ifname":"tap0","linkinfo":{"info_kind":"tun"},"ifalias":"smolvm:vm9"}]"#,
    );
    let known = ["keep".to_string()].into_iter().collect();
    let dry = h.cleanup_orphans(&known, true).unwrap();
    assert!(dry.dry_run);
    let taps: Vec<_> = dry.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(taps, ["smv-1", "smv-3"]);
    assert_eq!(dry.taps[0].vm_id.as_deref(), Some("vm1"));
    assert_eq!(dry.rules.len(), 2);
    assert_eq!(dry.rules[0].vm_id, "vm1");
    assert!(!f
        .lines()
        .iter()
        .any(|l| l.contains("del") || l == "nft -f -"));

    f.clear_calls();
    let done = h.cleanup_orphans(&known, false).unwrap();
    assert_eq!(done.taps, dry.taps);
    assert_eq!(
        f.lines()[2..],
        ["nft -f -", "ip link del dev smv-1", "ip link del dev smv-3"]
    );
    // Known VMs keep everything.
    let all = ["vm1", "keep"].map(String::from).into_iter().collect();
    let r = h.cleanup_orphans(&all, true).unwrap();
    assert_eq!(r.taps.len(), 1, "only the untagged TAP: {r:?}");
    assert!(r.rules.is_empty());

    // One VM: only its tagged TAP and rules, never untagged TAPs or other VMs' things.
    f.clear_calls();
    let one = h.cleanup_vm("vm1", false).unwrap();
    let taps: Vec<_> = one.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(taps, ["smv-1"]);
    assert!(one.rules.iter().all(|r| r.vm_id == "vm1") && !one.rules.is_empty());
    assert_eq!(f.lines()[2..], ["nft -f -", "ip link del dev smv-1"]);
    assert!(h.cleanup_vm("Bad;id", true).is_err());
    assert!(h.cleanup_vm("other", true).unwrap().is_empty());
}

#[test]
fn docker_forward_drop_is_detected_and_opened_through_docker_user() {
    let f = Arc::new(RecordingCommands::new());
    f.set_file(IP_FORWARD, "1");
    f.respond(
        &["nft", "-j"],
        LISTING.replace("smolvm:vm1", "smolvm:vm-x").as_str(),
    );
    f.respond(&["iptables", "-V"], "iptables v1.8.9 (nf_tables)\n");
    f.fail_once(&["iptables", "-w", "-C"], "Bad rule");
    let h = HostNetwork::new(f.clone());
    let drops = h.detect_forward_drop().unwrap();
    assert_eq!(drops.len(), 1);
    assert_eq!(drops[0].manager, ForwardDropManager::Iptables);
    assert_eq!(drops[0].chain, "FORWARD");
    f.clear_calls();

    h.setup_vm("vm-5", &net(5, None)).unwrap();
    let ipt: Vec<_> = f
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("iptables"))
        .collect();
    assert_eq!(
        ipt,
        [
            "iptables -V",
            "iptables -w -S DOCKER-USER",
            "iptables -w -C DOCKER-USER -o smv-+ -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment smolvm -j ACCEPT",
            "iptables -w -I DOCKER-USER -o smv-+ -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment smolvm -j ACCEPT",
            "iptables -w -C DOCKER-USER -i smv-+ -m comment --comment smolvm -j ACCEPT",
        ]
    );
}

#[test]
fn native_nft_forward_drop_gets_accepts_once() {
    let listing = r#"{"nftables": [
      {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "drop"}}]}"#;
    let (f, h) = fake();
    f.respond(&["nft", "-j"], listing);
    h.setup_vm("vm-5", &net(5, None)).unwrap();
    let scripts = f.stdins("nft");
    assert_eq!(scripts.len(), 2);
    assert_eq!(scripts[0], nft::foreign_accept_json("inet", "fw", "fwd"));
    assert!(f.lines().contains(&"nft -j -f -".to_string()));

    let present = r#"{"nftables": [
      {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "drop"}},
      {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "handle": 9, "comment": "smolvm"}}]}"#;
    let (f, h) = fake();
    f.respond(&["nft", "-j"], present);
    h.setup_vm("vm-5", &net(5, None)).unwrap();
    assert_eq!(f.stdins("nft").len(), 1);
    // remove_all deletes our table and the accept rule by handle.
    f.clear_calls();
    f.respond_once(
        &["nft", "-j"],
        &present.replace(
            "]}",
            ", {\"table\": {\"family\": \"inet\", \"name\": \"smolvm\"}}]}",
        ),
    );
    h.remove_all().unwrap();
    assert_eq!(
        f.stdins("nft"),
        [
            "delete table inet smolvm\n",
            r#"{"nftables":[{"delete":{"rule":{"chain":"fwd","family":"inet","handle":9,"table":"fw"}}}]}"#
        ]
    );
}
