//! State store behaviour at its boundaries: persistence, schema versions, damaged files, VM rows,
//! lease allocation and release.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Env;
use crate::process::ProcessIdentity;
use crate::state::leases::GATEWAY_IP;
use crate::state::schema::SCHEMA_VERSION;
use crate::state::{RunningVmm, StateError, StateStore, StoreOptions};
use crate::NetworkMode;
use crate::{BackendKind, VmConfig, VmState};

fn user_version(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn records_persist_across_reopen() {
    let env = Env::new();
    let created = {
        let mut s = env.store();
        let rec = s
            .create_vm(
                &env.config("alpha"),
                BackendKind::Qemu,
                Some(NetworkMode::Tap),
            )
            .unwrap();
        s.create_vm(&env.config("beta"), BackendKind::Firecracker, None)
            .unwrap();
        rec
    };
    let s = env.store();
    let again = s.get_vm("alpha").unwrap().unwrap();
    assert_eq!(again, created);
    assert_eq!(again.info.status, VmState::Created);
    assert_eq!(again.backend, BackendKind::Qemu);
    assert_eq!(again.info.config, env.config("alpha"));
    let beta = s.get_vm("beta").unwrap().unwrap();
    assert_eq!(beta.backend, BackendKind::Firecracker);
    assert_eq!(beta.info.network, None);
    assert_eq!(s.get_vm("gamma").unwrap(), None);
    assert_eq!(user_version(&env.db()), i64::from(SCHEMA_VERSION));
}

#[test]
fn stored_config_loads_after_its_files_are_gone() {
    let env = Env::new();
    env.store()
        .create_vm(&env.config("orphan"), BackendKind::Qemu, None)
        .unwrap();
    std::fs::remove_file(&env.kernel).unwrap();
    std::fs::remove_file(&env.rootfs).unwrap();
    let rec = env.store().get_vm("orphan").unwrap().unwrap();
    assert_eq!(rec.info.config.kernel_path(), env.kernel);
    assert_eq!(env.store().list_vms(None).unwrap().len(), 1);
    assert!(env.store().delete_vm("orphan").unwrap());
}

#[test]
fn the_agent_choice_is_stored_with_the_vm() {
    let env = Env::new();
    let own_init = VmConfig::builder(&env.kernel, &env.rootfs)
        .vm_id("own-init")
        .boot_args("console=ttyS0 init=/init")
        .agent(false)
        .build()
        .unwrap();
    env.store()
        .create_vm(&own_init, BackendKind::Qemu, None)
        .unwrap();
    let rec = env.store().get_vm("own-init").unwrap().unwrap();
    assert!(!rec.info.config.boots_agent());
    let raw: String = rusqlite::Connection::open(env.db())
        .unwrap()
        .query_row("SELECT config FROM vms WHERE id = 'own-init'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(stored["agent"], false, "{raw}");
}

#[test]
fn migrates_an_empty_v0_file() {
    let env = Env::new();
    std::fs::write(env.db(), b"").unwrap();
    let mut s = env.store();
    s.create_vm(&env.config("a"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    drop(s);
    assert_eq!(user_version(&env.db()), i64::from(SCHEMA_VERSION));

    // An initialised but empty database at version 0 is migrated the same way.
    let other = env.dir.path().join("v0.db");
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
        .unwrap();
    drop(c);
    assert_eq!(user_version(&other), 0);
    StateStore::open(&other).unwrap();
    assert_eq!(user_version(&other), i64::from(SCHEMA_VERSION));
}

#[test]
fn refuses_a_newer_schema_without_touching_it() {
    let env = Env::new();
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
        .unwrap();
    drop(c);
    let before = std::fs::read(env.db()).unwrap();
    let err = StateStore::open(&env.db()).unwrap_err();
    match &err {
        StateError::NewerSchema {
            path,
            found,
            supported,
        } => {
            assert_eq!(path, &env.db());
            assert_eq!(*found, 99);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade smolvm"), "{err}");
    assert_eq!(std::fs::read(env.db()).unwrap(), before);
}

#[test]
fn reports_a_garbage_file_and_leaves_it_alone() {
    let env = Env::new();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(env.db(), &garbage).unwrap();
    let err = StateStore::open(&env.db()).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { path, .. } if path == &env.db()),
        "{err:?}"
    );
    assert!(err.to_string().contains(&env.db().display().to_string()));
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(std::fs::read(env.db()).unwrap(), garbage);
    // Through the public error type it is a state error that keeps the cause.
    let public: crate::Error = err.into();
    assert_eq!(public.kind(), "state");
}

#[test]
fn reports_malformed_pages_with_the_path() {
    let env = Env::new();
    {
        let mut s = env.store();
        for i in 0..20 {
            s.create_vm(
                &env.config(&format!("vm-{i}")),
                BackendKind::Qemu,
                Some(NetworkMode::Tap),
            )
            .unwrap();
        }
    }
    // Keep page 1 (header and schema) intact, damage every table page after it.
    let mut bytes = std::fs::read(env.db()).unwrap();
    assert!(bytes.len() > 4096, "expected more than one page");
    for (i, b) in bytes[4096..].iter_mut().enumerate() {
        *b = (i % 13) as u8 ^ 0x5a;
    }
    std::fs::write(env.db(), &bytes).unwrap();
    let result = StateStore::open(&env.db()).and_then(|s| s.list_vms(None));
    match result {
        Err(StateError::Corrupt { path, .. }) => assert_eq!(path, env.db()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn filters_by_status_in_creation_order() {
    let env = Env::new();
    let mut s = env.store();
    for id in ["zulu", "alpha", "mike", "bravo"] {
        s.create_vm(&env.config(id), BackendKind::Qemu, None)
            .unwrap();
    }
    let vmm = RunningVmm {
        process: ProcessIdentity {
            pid: 4242,
            start_time: 987_654_321,
        },
        socket_path: PathBuf::from("/tmp/q.sock"),
        agent_socket: Some(PathBuf::from(OsStr::from_bytes(b"/tmp/agent-\xff.sock"))),
    };
    let rec = s.set_running("alpha", &vmm).unwrap();
    assert_eq!(rec.info.status, VmState::Running);
    assert_eq!(rec.info.pid, Some(4242));
    assert_eq!(rec.process, Some(vmm.process));
    assert_eq!(rec.agent_socket, vmm.agent_socket);
    s.set_running("bravo", &vmm).unwrap();
    s.set_status("mike", VmState::Error, Some("VMM died"))
        .unwrap();
    let rec = s.set_status("bravo", VmState::Stopped, None).unwrap();
    assert_eq!(
        (rec.info.pid, rec.process, rec.info.socket_path),
        (None, None, None)
    );
    assert_eq!(rec.agent_socket, None);

    let ids = |st: Option<VmState>| -> Vec<String> {
        s.list_vms(st)
            .unwrap()
            .into_iter()
            .map(|r| r.info.vm_id)
            .collect()
    };
    assert_eq!(ids(None), ["zulu", "alpha", "mike", "bravo"]);
    assert_eq!(ids(Some(VmState::Created)), ["zulu"]);
    assert_eq!(ids(Some(VmState::Running)), ["alpha"]);
    assert_eq!(ids(Some(VmState::Stopped)), ["bravo"]);
    assert_eq!(ids(Some(VmState::Error)), ["mike"]);
    let mike = s.get_vm("mike").unwrap().unwrap();
    assert_eq!(mike.last_error.as_deref(), Some("VMM died"));

    // The running VM survives a reopen with its socket paths byte for byte.
    drop(s);
    let alpha = env.store().get_vm("alpha").unwrap().unwrap();
    assert_eq!(alpha.info.socket_path, Some(vmm.socket_path.clone()));
    assert_eq!(alpha.agent_socket, vmm.agent_socket);
}

#[test]
fn disk_path_is_recorded_and_cleared() {
    let env = Env::new();
    let mut s = env.store();
    s.create_vm(&env.config("d"), BackendKind::Qemu, None)
        .unwrap();
    let disk = env.dir.path().join("disks/d.ext4");
    assert_eq!(
        s.set_disk_path("d", Some(&disk)).unwrap().disk_path,
        Some(disk)
    );
    assert_eq!(s.set_disk_path("d", None).unwrap().disk_path, None);
}

#[test]
fn unknown_and_duplicate_ids_map_to_public_kinds() {
    let env = Env::new();
    let mut s = env.store();
    let first = s
        .create_vm(
            &env.config("dup"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap();
    let err = s
        .create_vm(
            &env.config("dup"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap_err();
    assert!(matches!(&err, StateError::VmAlreadyExists(id) if id == "dup"));
    assert!(matches!(crate::Error::from(err), crate::Error::VmAlreadyExists(id) if id == "dup"));
    // The refused create leased nothing.
    assert_eq!(s.list_leases().unwrap().len(), 1);
    assert_eq!(s.get_vm("dup").unwrap().unwrap(), first);

    let err = s.set_status("ghost", VmState::Stopped, None).unwrap_err();
    assert!(matches!(crate::Error::from(err), crate::Error::VmNotFound(id) if id == "ghost"));
    assert!(matches!(
        s.set_disk_path("ghost", None),
        Err(StateError::VmNotFound(_))
    ));
    assert!(!s.delete_vm("ghost").unwrap());
}

#[test]
fn ip_skips_gateway_and_is_reused_after_delete() {
    let env = Env::new();
    let mut s = env.store();
    let net = |s: &mut StateStore, id: &str| {
        s.create_vm(&env.config(id), BackendKind::Qemu, Some(NetworkMode::Tap))
            .unwrap()
            .info
            .network
            .unwrap()
    };
    let a = net(&mut s, "a");
    assert_eq!(a.guest_ip, Ipv4Addr::new(172, 16, 0, 2));
    assert_ne!(a.guest_ip, GATEWAY_IP);
    assert_eq!(a.gateway_ip, GATEWAY_IP);
    assert_eq!(a.netmask, Ipv4Addr::new(255, 255, 0, 0));
    assert_eq!(a.tap_device.as_deref(), Some("smv-2"));
    assert_eq!(a.guest_mac, "02:00:ac:10:00:02");
    assert_eq!(a.ssh_host_port, Some(42000));
    let b = net(&mut s, "b");
    assert_eq!(b.guest_ip, Ipv4Addr::new(172, 16, 0, 3));
    assert_eq!(b.ssh_host_port, Some(42001));
    let c = net(&mut s, "c");
    assert_eq!(c.guest_ip, Ipv4Addr::new(172, 16, 0, 4));

    assert!(s.delete_vm("b").unwrap());
    assert_eq!(s.list_leases().unwrap().len(), 2);
    let d = net(&mut s, "d");
    assert_eq!(d, b, "the lowest free IP, TAP, MAC and port are reused");
    let leases: Vec<String> = s
        .list_leases()
        .unwrap()
        .into_iter()
        .map(|l| l.vm_id)
        .collect();
    assert_eq!(leases, ["a", "d", "c"]);
}

#[test]
fn port_exhaustion_is_a_clear_error_and_records_nothing() {
    let env = Env::new();
    let mut s = env.store_with(43000..=43001, crate::vmm_user::DEFAULT_RANGE);
    s.create_vm(&env.config("p1"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    s.create_vm(&env.config("p2"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    let err = s
        .create_vm(&env.config("p3"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap_err();
    assert!(
        matches!(&err, StateError::Exhausted { what } if what.contains("43000..=43001")),
        "{err}"
    );
    assert!(err.to_string().contains("no free host port"), "{err}");
    assert_eq!(s.get_vm("p3").unwrap(), None);
    // A VM without networking needs no port.
    s.create_vm(&env.config("p4"), BackendKind::Qemu, None)
        .unwrap();
    // Deleting one frees its port.
    s.delete_vm("p1").unwrap();
    let p3 = s
        .create_vm(&env.config("p3"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    assert_eq!(p3.info.network.unwrap().ssh_host_port, Some(43000));
}

#[test]
fn ip_exhaustion_is_a_clear_error_and_the_first_gap_is_used() {
    let env = Env::new();
    let mut s = env.store();
    s.create_vm(
        &env.config("seed"),
        BackendKind::Qemu,
        Some(NetworkMode::Tap),
    )
    .unwrap();
    // Fill the rest of the /16 directly: 65533 usable addresses in all.
    // One statement per table, generated by SQLite itself, to keep this fast in debug builds.
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.pragma_update(None, "foreign_keys", true).unwrap();
    c.execute_batch(
        "BEGIN;
         CREATE TEMP TABLE hosts AS
             WITH RECURSIVE n(h) AS (SELECT 3 UNION ALL SELECT h + 1 FROM n WHERE h < 65534)
             SELECT h FROM n;
         INSERT INTO vms (id, status, backend, config, created_at, updated_at)
             SELECT 'fill-' || h, 'created', 'qemu', '{}', 0, 0 FROM hosts;
         INSERT INTO leases (vm_id, guest_ip, gateway_ip, netmask, tap_device, guest_mac)
             SELECT 'fill-' || h, '172.16.' || (h >> 8) || '.' || (h & 255), '172.16.0.1',
                    '255.255.0.0', 'smv-' || h, printf('02:00:ac:10:%02x:%02x', h >> 8, h & 255)
             FROM hosts;
         COMMIT;",
    )
    .unwrap();
    let err = s
        .create_vm(
            &env.config("late"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap_err();
    assert!(
        matches!(&err, StateError::Exhausted { what } if what.contains("guest IP")),
        "{err}"
    );
    assert_eq!(s.get_vm("late").unwrap(), None);

    c.execute("DELETE FROM vms WHERE id = 'fill-25607'", [])
        .unwrap();
    let late = s
        .create_vm(
            &env.config("late"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap();
    let net = late.info.network.unwrap();
    assert_eq!(net.guest_ip, Ipv4Addr::new(172, 16, 100, 7));
    assert_eq!(net.tap_device.as_deref(), Some("smv-25607"));
}

#[test]
fn busy_ports_are_skipped_when_probing() {
    let env = Env::new();
    let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let probing = StoreOptions {
        ssh_port_range: port..=port,
        probe_host_ports: true,
        vmm_ids: crate::vmm_user::DEFAULT_RANGE,
    };
    let mut s = StateStore::open_with(&env.db(), probing).unwrap();
    let err = s
        .create_vm(
            &env.config("busy"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap_err();
    assert!(matches!(err, StateError::Exhausted { .. }), "{err}");
    drop(s);
    let mut s = env.store_with(port..=port, crate::vmm_user::DEFAULT_RANGE);
    let rec = s
        .create_vm(
            &env.config("busy"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap();
    assert_eq!(rec.info.network.unwrap().ssh_host_port, Some(port));
}

#[test]
fn store_errors_keep_their_source_chain() {
    let env = Env::new();
    // A directory where the file should be: SQLite cannot open it.
    std::fs::create_dir(env.db()).unwrap();
    let err = StateStore::open(&env.db()).unwrap_err();
    assert!(
        matches!(&err, StateError::Sqlite { path, .. } if path == &env.db()),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
}
