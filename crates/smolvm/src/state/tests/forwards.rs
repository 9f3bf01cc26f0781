//! Host port forwards in the state store: allocation from the SSH range, conflicts, release.

use std::net::Ipv4Addr;

use super::Env;
use crate::state::forwards::{PortForwardRequest, Protocol};
use crate::state::{StateError, StateStore};
use crate::BackendKind;
use crate::NetworkMode;

fn store(env: &Env, range: std::ops::RangeInclusive<u16>) -> StateStore {
    env.store_with(range, crate::vmm_user::DEFAULT_RANGE)
}

fn create(s: &mut StateStore, env: &Env, id: &str) -> u16 {
    let rec = s
        .create_vm(&env.config(id), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    rec.info.network.unwrap().ssh_host_port.unwrap()
}

fn req(addr: [u8; 4], host_port: Option<u16>, guest_port: u16) -> PortForwardRequest {
    PortForwardRequest {
        host_addr: Ipv4Addr::from(addr),
        host_port,
        guest_port,
        protocol: Protocol::Tcp,
    }
}

#[test]
fn allocated_forwards_never_collide_with_ssh_ports() {
    let env = Env::new();
    let mut s = store(&env, 42000..=42003);
    assert_eq!(create(&mut s, &env, "a"), 42000);
    let f = s
        .add_port_forward("a", &req([127, 0, 0, 1], None, 8080))
        .unwrap();
    assert_eq!(f.host_port, 42001);
    assert_eq!(f.vm_id, "a");
    // The next SSH port skips the forward's port.
    assert_eq!(create(&mut s, &env, "b"), 42002);
    let g = s
        .add_port_forward("b", &req([0, 0, 0, 0], None, 53))
        .unwrap();
    assert_eq!(g.host_port, 42003);
    let err = s
        .add_port_forward("b", &req([127, 0, 0, 1], None, 80))
        .unwrap_err();
    assert!(matches!(err, StateError::Exhausted { .. }), "{err}");

    let all = s.list_port_forwards(None).unwrap();
    assert_eq!(all, vec![f.clone(), g.clone()]);
    assert_eq!(s.list_port_forwards(Some("a")).unwrap(), vec![f.clone()]);

    // Deleting a VM releases its forwards and its SSH port together.
    assert!(s.delete_vm("a").unwrap());
    assert_eq!(s.list_port_forwards(None).unwrap(), vec![g]);
    let h = s
        .add_port_forward("b", &req([127, 0, 0, 1], None, 80))
        .unwrap();
    assert_eq!(h.host_port, 42000);
}

#[test]
fn explicit_ports_conflict_only_where_they_would_clash() {
    let env = Env::new();
    let mut s = store(&env, 42000..=42009);
    let ssh = create(&mut s, &env, "a");
    create(&mut s, &env, "b");

    let err = s
        .add_port_forward("b", &req([127, 0, 0, 1], Some(ssh), 22))
        .unwrap_err();
    assert!(
        matches!(&err, StateError::PortConflict { holder, purpose: "ssh", .. } if holder == "a"),
        "{err}"
    );
    // UDP on the SSH port number does not clash with the SSH (TCP) forward.
    let udp = PortForwardRequest {
        protocol: Protocol::Udp,
        ..req([127, 0, 0, 1], Some(ssh), 53)
    };
    s.add_port_forward("b", &udp).unwrap();

    let web = s
        .add_port_forward("a", &req([127, 0, 0, 1], Some(8080), 80))
        .unwrap();
    // Same request again: idempotent.
    assert_eq!(
        s.add_port_forward("a", &req([127, 0, 0, 1], Some(8080), 80))
            .unwrap(),
        web
    );
    // Same host port, other guest port or other VM: refused.
    for (vm, addr) in [
        ("a", [127, 0, 0, 1]),
        ("b", [127, 0, 0, 1]),
        ("b", [0, 0, 0, 0]),
    ] {
        let err = s
            .add_port_forward(vm, &req(addr, Some(8080), 81))
            .unwrap_err();
        assert!(
            matches!(&err, StateError::PortConflict { holder, purpose: "port forward", .. } if holder == "a"),
            "{vm} {addr:?}: {err}"
        );
    }
    // A different specific address may use the same port.
    s.add_port_forward("b", &req([10, 0, 0, 1], Some(8080), 80))
        .unwrap();
    assert_eq!(s.list_port_forwards(None).unwrap().len(), 3);

    assert!(s
        .remove_port_forward("a", Ipv4Addr::LOCALHOST, 8080, Protocol::Tcp)
        .unwrap());
    assert!(!s
        .remove_port_forward("a", Ipv4Addr::LOCALHOST, 8080, Protocol::Tcp)
        .unwrap());
    s.add_port_forward("b", &req([127, 0, 0, 1], Some(8080), 81))
        .unwrap();
}

#[test]
fn bad_forward_requests_are_refused() {
    let env = Env::new();
    let mut s = store(&env, 42000..=42009);
    let err = s
        .add_port_forward("ghost", &req([127, 0, 0, 1], None, 80))
        .unwrap_err();
    assert!(matches!(crate::Error::from(err), crate::Error::VmNotFound(id) if id == "ghost"));
    create(&mut s, &env, "a");
    for bad in [
        req([127, 0, 0, 1], None, 0),
        req([127, 0, 0, 1], Some(0), 80),
    ] {
        let err = s.add_port_forward("a", &bad).unwrap_err();
        assert_eq!(crate::Error::from(err).kind(), "validation");
    }
    assert!(s.list_port_forwards(None).unwrap().is_empty());
    assert_eq!("udp".parse::<Protocol>().unwrap(), Protocol::Udp);
    assert!("sctp".parse::<Protocol>().is_err());
}
