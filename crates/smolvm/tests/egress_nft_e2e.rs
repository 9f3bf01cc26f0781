//! Egress policies against the real `nft` and kernel, without a VM: a veth "guest" (adopted like a TAP)
//! in its own namespace, an uplink namespace with a few addresses and TCP servers, all created and
//! removed by the test. Checks each policy's verdicts, the drop counter, a domain-address refresh with
//! its element timeouts, a live change and that teardown leaves no policy object. `SMOLVM_E2E=1`, root.

mod netns_util;

use std::net::Ipv4Addr;

use netns_util::{e2e, fake_guest, fetch_from, sh, Netns, Server};
use smolvm::internals::network::{EgressPlan, HostNetwork};
use smolvm::NetworkConfig;
use smolvm::NetworkPolicy;

fn net() -> NetworkConfig {
    NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some("smv-2".into()),
        guest_mac: "02:00:ac:10:00:02".into(),
        ssh_host_port: None,
        mode: smolvm::NetworkMode::Tap,
    }
}

fn plan(policy: NetworkPolicy, domain_addrs: &[(&str, u32)]) -> EgressPlan {
    EgressPlan {
        policy,
        dns_servers: vec![Ipv4Addr::new(10, 97, 0, 2)],
        domain_addrs: domain_addrs
            .iter()
            .map(|(a, t)| (a.parse().unwrap(), *t))
            .collect(),
    }
}

#[test]
fn policies_are_enforced_counted_changed_live_and_removed() {
    if !e2e("egress nft", &["ip", "nft"]) {
        return;
    }
    let (h, g, up) = (Netns::new(), Netns::new(), Netns::new());
    fake_guest(&h, "smv-2", "vm-a", &g, "172.16.0.2", "172.16.0.1");
    h.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &up.name,
    ]);
    h.ip(&["addr", "add", "10.97.0.1/24", "dev", "up0"]);
    h.ip(&["link", "set", "up0", "up"]);
    h.ip(&["route", "add", "default", "via", "10.97.0.2"]);
    for a in ["10.97.0.2", "10.97.0.3", "10.97.0.4"] {
        up.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    up.ip(&["link", "set", "eth0", "up"]);
    let _s = [
        Server::start(&up, "10.97.0.2:53".parse().unwrap(), "dns-tcp"),
        Server::start(&up, "10.97.0.2:80".parse().unwrap(), "two"),
        Server::start(&up, "10.97.0.3:80".parse().unwrap(), "three"),
        Server::start(&up, "10.97.0.3:81".parse().unwrap(), "three-81"),
        Server::start(&up, "10.97.0.4:80".parse().unwrap(), "four"),
    ];
    let _in = h.enter();
    let hn = HostNetwork::system();
    let reach = |a: &str| fetch_from(&g, a).is_ok();

    // Allow-list: 10.97.0.3 and a domain at 10.97.0.4, port 80 only; DNS to 10.97.0.2:53.
    let allow = NetworkPolicy::allow(["10.97.0.3"], ["svc.test"], [80]).unwrap();
    hn.setup_vm_with("vm-a", &net(), &plan(allow.clone(), &[("10.97.0.4", 60)]))
        .unwrap();
    hn.setup_vm_with("vm-a", &net(), &plan(allow.clone(), &[("10.97.0.4", 60)]))
        .unwrap(); // idempotent
    assert!(reach("10.97.0.3:80"));
    assert!(reach("10.97.0.4:80"));
    assert!(reach("10.97.0.2:53"), "DNS to the guest's resolver");
    assert_eq!(hn.egress_drops("vm-a").unwrap(), Some((0, 0)));
    assert!(!reach("10.97.0.3:81"), "port not listed");
    assert!(!reach("10.97.0.2:80"), "address not listed");
    let (packets, bytes) = hn.egress_drops("vm-a").unwrap().unwrap();
    assert!(packets >= 2 && bytes > 0, "{packets} {bytes}");
    let listing = sh(&["nft", "list", "set", "inet", "smolvm", "egd_vm-a"]);
    assert!(listing.contains("10.97.0.4 timeout 1m30s"), "{listing}");

    // The domain moves to 10.97.0.2: after the refresh the new address passes, the old one not.
    hn.refresh_domains("vm-a", &[("10.97.0.2".parse().unwrap(), 5)])
        .unwrap();
    assert!(reach("10.97.0.2:80"));
    assert!(!reach("10.97.0.4:80"));

    // Live change to none: nothing passes, not even DNS; the counter keeps counting.
    hn.set_egress("vm-a", &net(), &plan(NetworkPolicy::None, &[]))
        .unwrap();
    assert!(!reach("10.97.0.3:80"));
    assert!(!reach("10.97.0.2:53"));
    let (after, _) = hn.egress_drops("vm-a").unwrap().unwrap();
    assert!(after > packets, "{after} > {packets}");

    // Live change to open: everything, and no policy objects are left.
    hn.set_egress("vm-a", &net(), &EgressPlan::open()).unwrap();
    assert!(reach("10.97.0.2:80") && reach("10.97.0.3:81"));
    let rules = sh(&["nft", "list", "ruleset"]);
    assert!(
        !rules.contains("eg_vm-a") && !rules.contains("egc_vm-a"),
        "{rules}"
    );
    assert_eq!(hn.egress_drops("vm-a").unwrap(), None);

    // Teardown under a policy removes chain, sets and counter with the rules.
    hn.set_egress("vm-a", &net(), &plan(allow, &[])).unwrap();
    hn.teardown_vm("vm-a", &net()).unwrap();
    let rules = sh(&["nft", "list", "ruleset"]);
    assert!(!rules.contains("vm-a"), "{rules}");
}
