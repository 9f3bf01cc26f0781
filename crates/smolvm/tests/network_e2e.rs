//! End-to-end tests of host networking against the real `ip`, `nft` and kernel, each inside network
//! namespaces it creates and removes. Run with `SMOLVM_E2E=1` as root; they skip otherwise.

mod netns_util;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use netns_util::{e2e, fake_guest, fetch, fetch_from, sh, Netns, Server};
use smolvm::internals::network::{ForwardDropManager, HostNetwork, NetworkError};
use smolvm::NetworkConfig;

fn net(n: u8, port: Option<u16>) -> NetworkConfig {
    NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, n),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some(format!("smv-{n}")),
        guest_mac: format!("02:00:ac:10:00:{n:02x}"),
        ssh_host_port: port,
        mode: smolvm::NetworkMode::Tap,
    }
}

fn ruleset() -> String {
    sh(&["nft", "list", "ruleset"])
}

fn links() -> String {
    sh(&["ip", "-d", "link", "show"])
}

#[test]
fn setup_creates_tap_and_rules_and_teardown_leaves_nothing() {
    if !e2e("setup/teardown", &["ip", "nft"]) {
        return;
    }
    let h = Netns::new();
    let _in = h.enter();
    let hn = HostNetwork::system();
    let cfg = net(2, Some(2202));
    hn.setup_vm("vm-a", &cfg).unwrap();
    hn.setup_vm("vm-a", &cfg).unwrap(); // idempotent

    let l = links();
    assert!(l.contains("smv-2:"), "{l}");
    assert!(l.contains("alias smolvm:vm-a"), "{l}");
    assert!(l.contains("tun type tap"), "{l}");
    let addrs = sh(&["ip", "addr", "show", "dev", "smv-2"]);
    assert!(addrs.contains("inet 172.16.0.1/32"), "{addrs}");
    let routes = sh(&["ip", "route"]);
    assert!(routes.contains("172.16.0.2 dev smv-2"), "{routes}");
    let localnet = std::fs::read_to_string("/proc/sys/net/ipv4/conf/smv-2/route_localnet").unwrap();
    assert_eq!(localnet.trim(), "1");
    let rs = ruleset();
    assert_eq!(rs.matches("comment \"smolvm:vm-a\"").count(), 4, "{rs}");
    assert!(
        rs.contains("ip daddr 127.0.0.1 tcp dport 2202 dnat ip to 172.16.0.2:22"),
        "{rs}"
    );
    assert_eq!(
        rs.matches("jump guest_egress").count(),
        1,
        "base rules doubled: {rs}"
    );

    hn.teardown_vm("vm-a", &cfg).unwrap();
    hn.teardown_vm("vm-a", &cfg).unwrap(); // idempotent
    assert!(!links().contains("smv-2"), "{}", links());
    assert!(!sh(&["ip", "route"]).contains("172.16.0.2"));
    let rs = ruleset();
    assert!(
        !rs.contains("vm-a") && !rs.contains("smv-2") && !rs.contains("2202"),
        "{rs}"
    );
    hn.remove_all().unwrap();
    assert_eq!(ruleset().trim(), "");
}

#[test]
fn cleanup_removes_planted_orphans_and_keeps_known_vms() {
    if !e2e("cleanup", &["ip", "nft"]) {
        return;
    }
    let h = Netns::new();
    let _in = h.enter();
    let hn = HostNetwork::system();
    hn.setup_vm("vm-a", &net(2, Some(2202))).unwrap();
    hn.setup_vm("vm-b", &net(3, Some(2203))).unwrap();
    // Plant: an untagged TAP with our prefix (a setup killed before tagging), a stray tagged rule, and
    // a foreign TAP that must survive.
    sh(&["ip", "tuntap", "add", "dev", "smv-99", "mode", "tap"]);
    sh(&["ip", "tuntap", "add", "dev", "tap-other", "mode", "tap"]);
    let stray = "add rule inet smolvm nat_output tcp dport 9 drop comment \"smolvm:ghost\"\n";
    let mut nft = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), stray.as_bytes()).unwrap();
    drop(nft.stdin.take());
    assert!(nft.wait().unwrap().success());

    let known: BTreeSet<String> = ["vm-a".to_string()].into();
    let dry = hn.cleanup_orphans(&known, true).unwrap();
    let taps: BTreeSet<&str> = dry.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(taps, ["smv-3", "smv-99"].into());
    let vms: BTreeSet<&str> = dry.rules.iter().map(|r| r.vm_id.as_str()).collect();
    assert_eq!(vms, ["ghost", "vm-b"].into());
    assert!(
        links().contains("smv-99") && ruleset().contains("ghost"),
        "dry run removed things"
    );

    let done = hn.cleanup_orphans(&known, false).unwrap();
    assert_eq!(done.taps.len(), 2);
    let (l, rs) = (links(), ruleset());
    assert!(!l.contains("smv-3") && !l.contains("smv-99"), "{l}");
    assert!(l.contains("smv-2") && l.contains("tap-other"), "{l}");
    assert!(!rs.contains("ghost") && !rs.contains("vm-b"), "{rs}");
    assert_eq!(rs.matches("smolvm:vm-a").count(), 4, "{rs}");
    assert!(hn.cleanup_orphans(&known, false).unwrap().is_empty());
}

#[test]
fn taken_names_and_ports_are_refused_cleanly() {
    if !e2e("taken tap/port", &["ip", "nft"]) {
        return;
    }
    let h = Netns::new();
    let _in = h.enter();
    let hn = HostNetwork::system();
    sh(&[
        "ip", "link", "add", "smv-7", "type", "veth", "peer", "name", "other7",
    ]);
    let e = hn.setup_vm("vm-a", &net(7, Some(2207))).unwrap_err();
    assert!(matches!(e, NetworkError::TapTaken { .. }), "{e:?}");
    eprintln!("TAP taken: {e}");
    // Nothing was made, the foreign device is untouched.
    assert!(!ruleset().contains("vm-a"));
    assert!(links().contains("smv-7"));

    let _busy = std::net::TcpListener::bind("127.0.0.1:2208").unwrap();
    let e = hn.setup_vm("vm-b", &net(8, Some(2208))).unwrap_err();
    assert!(
        matches!(e, NetworkError::PortTaken { port: 2208, .. }),
        "{e:?}"
    );
    eprintln!("port taken: {e}");
    assert!(!links().contains("smv-8"));

    hn.setup_vm("vm-c", &net(9, Some(2209))).unwrap();
    let e = hn.setup_vm("vm-d", &net(10, Some(2209))).unwrap_err();
    assert!(e.to_string().contains("vm-c"), "{e}");
    assert!(!links().contains("smv-10"), "rolled back");
}

/// The full picture with veth "guests" (a TAP has no carrier without a VMM): loopback SSH forward,
/// NAT to an uplink, and everything that must be blocked.
#[test]
fn forward_nat_and_isolation_end_to_end() {
    if !e2e("forward/NAT/isolation", &["ip", "nft"]) {
        return;
    }
    let (h, g1, g2, up) = (Netns::new(), Netns::new(), Netns::new(), Netns::new());
    fake_guest(&h, "smv-2", "vm-a", &g1, "172.16.0.2", "172.16.0.1");
    fake_guest(&h, "smv-3", "vm-b", &g2, "172.16.0.3", "172.16.0.1");
    // The uplink: a veth to a namespace standing in for the outside world.
    h.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &up.name,
    ]);
    h.ip(&["addr", "add", "10.99.0.1/24", "dev", "up0"]);
    h.ip(&["link", "set", "up0", "up"]);
    h.ip(&["route", "add", "default", "via", "10.99.0.2"]);
    up.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    up.ip(&["link", "set", "eth0", "up"]);

    let _in = h.enter();
    let hn = HostNetwork::system();
    hn.setup_vm("vm-a", &net(2, Some(2202))).unwrap();
    hn.setup_vm("vm-b", &net(3, Some(2203))).unwrap();

    let _s1 = Server::start(&g1, "0.0.0.0:22".parse().unwrap(), "guest-a");
    let _s2 = Server::start(&g2, "0.0.0.0:22".parse().unwrap(), "guest-b");
    let _world = Server::start(&up, "10.99.0.2:80".parse().unwrap(), "world");
    let _host_svc = Server::start(&h, "0.0.0.0:8080".parse().unwrap(), "host-service");

    // Loopback forward: reaches the right guest; the guest sees the gateway as peer (SNAT).
    let a = fetch("127.0.0.1:2202").unwrap();
    assert!(a.starts_with("guest-a 172.16.0.1:"), "{a}");
    assert!(fetch("127.0.0.1:2203").unwrap().starts_with("guest-b "));
    // The guest is reachable at its own IP from the host.
    assert!(fetch("172.16.0.2:22").unwrap().starts_with("guest-a "));
    // The forward exists on loopback only: not on the host's other addresses, not from outside.
    assert!(fetch("10.99.0.1:2202").is_err());
    assert!(fetch_from(&up, "10.99.0.1:2202").is_err());

    // Guest -> uplink works and is masqueraded behind the host's uplink address.
    let w = fetch_from(&g1, "10.99.0.2:80").unwrap();
    assert!(w.starts_with("world 10.99.0.1:"), "{w}");
    // The guest's ARP for the shared gateway address was answered by its TAP.
    let neigh = g1.ip(&["neigh", "show", "172.16.0.1"]);
    assert!(neigh.contains("lladdr"), "{neigh}");
    // The host service is up (reachable from the uplink) ...
    assert!(fetch_from(&up, "10.99.0.1:8080").is_ok());
    // ... but guests cannot reach host services, neither via the gateway nor other host addresses.
    assert!(fetch_from(&g1, "172.16.0.1:8080").is_err());
    assert!(fetch_from(&g1, "10.99.0.1:8080").is_err());
    // Guest <-> guest: on-link (ARP, no proxy) and routed through the gateway, both fail.
    assert!(fetch_from(&g1, "172.16.0.3:22").is_err());
    g1.ip(&["route", "add", "172.16.0.3/32", "via", "172.16.0.1"]);
    assert!(fetch_from(&g1, "172.16.0.3:22").is_err());
    // Nothing unsolicited from the outside into a guest.
    up.ip(&["route", "add", "172.16.0.0/16", "via", "10.99.0.1"]);
    assert!(fetch_from(&up, "172.16.0.2:22").is_err());

    // After teardown of one VM, the other still works (shared gateway address survives).
    hn.teardown_vm("vm-a", &net(2, Some(2202))).unwrap();
    assert!(fetch("127.0.0.1:2202").is_err());
    assert!(fetch("127.0.0.1:2203").unwrap().starts_with("guest-b "));
    assert!(fetch_from(&g2, "10.99.0.2:80").is_ok());
}

/// A Docker-like host: iptables FORWARD policy DROP with a DOCKER-USER chain.
#[test]
fn docker_style_forward_drop_is_detected_and_handled() {
    if !e2e("Docker DROP policy", &["ip", "nft", "iptables"]) {
        return;
    }
    let (h, g1, up) = (Netns::new(), Netns::new(), Netns::new());
    fake_guest(&h, "smv-2", "vm-a", &g1, "172.16.0.2", "172.16.0.1");
    h.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &up.name,
    ]);
    h.ip(&["addr", "add", "10.99.0.1/24", "dev", "up0"]);
    h.ip(&["link", "set", "up0", "up"]);
    up.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    up.ip(&["link", "set", "eth0", "up"]);
    let _in = h.enter();
    sh(&["iptables", "-N", "DOCKER-USER"]);
    sh(&["iptables", "-A", "DOCKER-USER", "-j", "RETURN"]);
    sh(&["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"]);
    sh(&["iptables", "-P", "FORWARD", "DROP"]);

    let hn = HostNetwork::system();
    let drops = hn.detect_forward_drop().unwrap();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0].manager, ForwardDropManager::Iptables);
    eprintln!("detected: {}", drops[0]);

    let _world = Server::start(&up, "10.99.0.2:80".parse().unwrap(), "world");
    hn.setup_vm("vm-a", &net(2, None)).unwrap();
    hn.setup_vm("vm-a", &net(2, None)).unwrap();
    let user = sh(&["iptables", "-S", "DOCKER-USER"]);
    assert_eq!(user.matches("smolvm").count(), 2, "added once: {user}");
    assert!(fetch_from(&g1, "10.99.0.2:80")
        .unwrap()
        .starts_with("world 10.99.0.1:"));
    // Control: without smolvm's accept rules in DOCKER-USER the DROP policy wins despite our own
    // chain accepting; setup puts them back.
    sh(&[
        "iptables",
        "-D",
        "DOCKER-USER",
        "-i",
        "smv-+",
        "-m",
        "comment",
        "--comment",
        "smolvm",
        "-j",
        "ACCEPT",
    ]);
    assert!(fetch_from(&g1, "10.99.0.2:80").is_err());
    hn.setup_vm("vm-a", &net(2, None)).unwrap();
    assert!(fetch_from(&g1, "10.99.0.2:80").is_ok());

    hn.teardown_vm("vm-a", &net(2, None)).unwrap();
    hn.remove_all().unwrap();
    let user = sh(&["iptables", "-S", "DOCKER-USER"]);
    assert!(!user.contains("smolvm"), "{user}");
    assert!(!ruleset().contains("table inet smolvm"));
}

/// A native nftables firewall with a DROP forward policy.
#[test]
fn native_nft_forward_drop_is_handled() {
    if !e2e("nft DROP policy", &["ip", "nft"]) {
        return;
    }
    let (h, g1, up) = (Netns::new(), Netns::new(), Netns::new());
    fake_guest(&h, "smv-2", "vm-a", &g1, "172.16.0.2", "172.16.0.1");
    h.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &up.name,
    ]);
    h.ip(&["addr", "add", "10.99.0.1/24", "dev", "up0"]);
    h.ip(&["link", "set", "up0", "up"]);
    up.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    up.ip(&["link", "set", "eth0", "up"]);
    let _in = h.enter();
    // `fwd` is also an nft keyword: the accept rules must still go in.
    sh(&["nft", "add table inet fw"]);
    let chain = r#"{"nftables":[{"add":{"chain":{"family":"inet","table":"fw","name":"fwd","type":"filter","hook":"forward","prio":10,"policy":"drop"}}}]}"#;
    sh(&["nft", "-j", chain]);
    let _world = Server::start(&up, "10.99.0.2:80".parse().unwrap(), "world");
    let hn = HostNetwork::system();
    assert_eq!(hn.detect_forward_drop().unwrap().len(), 1);
    hn.setup_vm("vm-a", &net(2, None)).unwrap();
    assert!(fetch_from(&g1, "10.99.0.2:80").is_ok());
    // Control: the accept rules in the foreign chain are what lets the traffic through.
    sh(&[
        "nft",
        "-j",
        r#"{"nftables":[{"flush":{"chain":{"family":"inet","table":"fw","name":"fwd"}}}]}"#,
    ]);
    assert!(fetch_from(&g1, "10.99.0.2:80").is_err());
    hn.setup_vm("vm-a", &net(2, None)).unwrap();
    assert!(fetch_from(&g1, "10.99.0.2:80").is_ok());
    hn.remove_all().unwrap();
    assert!(!ruleset().contains("smolvm"));
}
