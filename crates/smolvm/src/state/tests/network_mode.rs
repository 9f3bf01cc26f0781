//! Network modes in the state store: user-mode leases share QEMU's fixed addresses but never an SSH port,
//! TAP-mode leases stay unique, and a version-1 database is migrated with its leases read as TAP mode.

use std::net::Ipv4Addr;

use super::Env;
use crate::state::leases::{USER_GATEWAY_IP, USER_GUEST_IP, USER_NETMASK};
use crate::state::schema::SCHEMA_VERSION;
use crate::state::StateStore;
use crate::BackendKind;
use crate::NetworkMode;

#[test]
fn user_mode_leases_share_addresses_but_not_ports() {
    let env = Env::new();
    let mut s = env.store();
    let tap = |s: &mut StateStore, id: &str| {
        s.create_vm(&env.config(id), BackendKind::Qemu, Some(NetworkMode::Tap))
            .unwrap()
            .info
            .network
            .unwrap()
    };
    let user = |s: &mut StateStore, id: &str| {
        s.create_vm(&env.config(id), BackendKind::Qemu, Some(NetworkMode::User))
            .unwrap()
            .info
            .network
            .unwrap()
    };
    let t1 = tap(&mut s, "t1");
    let u1 = user(&mut s, "u1");
    let u2 = user(&mut s, "u2");
    let t2 = tap(&mut s, "t2");

    assert_eq!(t1.mode, NetworkMode::Tap);
    assert_eq!(t1.guest_ip, Ipv4Addr::new(172, 16, 0, 2));
    assert_eq!(t2.guest_ip, Ipv4Addr::new(172, 16, 0, 3));
    for u in [&u1, &u2] {
        assert_eq!(u.mode, NetworkMode::User);
        assert_eq!(u.guest_ip, USER_GUEST_IP);
        assert_eq!(u.gateway_ip, USER_GATEWAY_IP);
        assert_eq!(u.netmask, USER_NETMASK);
        assert_eq!(u.tap_device, None);
        assert_eq!(u.guest_mac, "02:00:0a:00:02:0f");
    }
    let ports: Vec<_> = [&t1, &u1, &u2, &t2]
        .iter()
        .map(|n| n.ssh_host_port.unwrap())
        .collect();
    assert_eq!(ports, [42000, 42001, 42002, 42003]);

    // The mode survives a reopen and shows in the lease list.
    drop(s);
    let s = env.store();
    assert_eq!(s.get_vm("u2").unwrap().unwrap().info.network.unwrap(), u2);
    let leases = s.list_leases().unwrap();
    let modes: Vec<_> = leases
        .iter()
        .map(|l| (l.vm_id.as_str(), l.network.mode))
        .collect();
    assert!(modes.contains(&("u1", NetworkMode::User)));
    assert!(modes.contains(&("t2", NetworkMode::Tap)));
}

#[test]
fn a_version_1_database_is_migrated_and_reads_as_tap_mode() {
    let env = Env::new();
    let config = serde_json::to_string(&env.config("old")).unwrap();
    let c = rusqlite::Connection::open(env.db()).unwrap();
    // The version-1 tables as that release created them, with one VM and its lease.
    c.execute_batch(
        "CREATE TABLE vms (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ('created', 'running', 'stopped', 'error')),
            backend TEXT NOT NULL CHECK (backend IN ('firecracker', 'qemu')),
            config TEXT NOT NULL, pid INTEGER, pid_start_time INTEGER, socket_path BLOB,
            agent_socket BLOB, disk_path BLOB, created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL, last_error TEXT,
            CHECK ((pid IS NULL) = (pid_start_time IS NULL))
        ) STRICT;
        CREATE INDEX vms_status ON vms (status);
        CREATE TABLE leases (
            vm_id TEXT PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
            guest_ip TEXT NOT NULL UNIQUE, gateway_ip TEXT NOT NULL, netmask TEXT NOT NULL,
            tap_device TEXT NOT NULL UNIQUE CHECK (length(tap_device) BETWEEN 1 AND 15),
            guest_mac TEXT NOT NULL UNIQUE,
            ssh_host_port INTEGER UNIQUE CHECK (ssh_host_port BETWEEN 1 AND 65535)
        ) STRICT;
        CREATE TABLE port_forwards (
            id INTEGER PRIMARY KEY,
            vm_id TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
            host_addr TEXT NOT NULL,
            host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
            guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
            protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
            UNIQUE (host_addr, host_port, protocol)
        ) STRICT;
        CREATE INDEX port_forwards_vm ON port_forwards (vm_id);
        PRAGMA user_version = 1;",
    )
    .unwrap();
    c.execute(
        "INSERT INTO vms (id, status, backend, config, created_at, updated_at)
         VALUES ('old', 'stopped', 'qemu', ?1, 1, 1)",
        [&config],
    )
    .unwrap();
    c.execute_batch(
        "INSERT INTO leases VALUES
             ('old', '172.16.0.2', '172.16.0.1', '255.255.0.0', 'smv-2', '02:00:ac:10:00:02', 42000);",
    )
    .unwrap();
    drop(c);

    let mut s = env.store();
    let net = s.get_vm("old").unwrap().unwrap().info.network.unwrap();
    assert_eq!(net.mode, NetworkMode::Tap);
    assert_eq!(net.tap_device.as_deref(), Some("smv-2"));
    assert_eq!(net.ssh_host_port, Some(42000));
    // A VM from before VMM users has none until it starts; the store leases one on demand.
    assert_eq!(s.get_vm("old").unwrap().unwrap().vmm_id, None);
    let old_id = s.vmm_id("old").unwrap();
    assert_eq!(s.get_vm("old").unwrap().unwrap().vmm_id, Some(old_id));
    // Allocation after the migration still sees the old lease.
    let next = s
        .create_vm(
            &env.config("new"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap()
        .info
        .network
        .unwrap();
    assert_eq!(next.guest_ip, Ipv4Addr::new(172, 16, 0, 3));
    assert_eq!(next.ssh_host_port, Some(42001));
    // Deleting the VM still releases its lease (the cascade survived the table rebuild).
    assert!(s.delete_vm("old").unwrap());
    assert_eq!(s.list_leases().unwrap().len(), 1);
    drop(s);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, i64::from(SCHEMA_VERSION));
}

#[test]
fn tap_mode_uniqueness_is_still_enforced_by_the_schema() {
    let env = Env::new();
    let mut s = env.store();
    s.create_vm(&env.config("a"), BackendKind::Qemu, Some(NetworkMode::Tap))
        .unwrap();
    drop(s);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    c.execute(
        "INSERT INTO vms (id, status, backend, config, created_at, updated_at)
         SELECT 'b', status, backend, config, created_at, updated_at FROM vms WHERE id = 'a'",
        [],
    )
    .unwrap();
    let lease = |ip: &str, tap: &str| {
        c.execute(
            "INSERT INTO leases (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac)
             VALUES ('b', 'tap', ?1, '172.16.0.1', '255.255.0.0', ?2, '02:00:00:00:00:09')",
            [ip, tap],
        )
    };
    // The constraint that refused it, from SQLite's message ("UNIQUE constraint failed: ...").
    let refused_by = |r: rusqlite::Result<usize>| match r {
        Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            msg
        }
        other => panic!("expected a constraint violation, got {other:?}"),
    };
    let dup = refused_by(lease("172.16.0.2", "smv-9"));
    assert!(
        dup.starts_with("UNIQUE constraint failed") && dup.contains("guest_ip"),
        "a second TAP lease of the same IP: {dup}"
    );
    let no_tap = refused_by(lease("172.16.0.9", ""));
    assert!(
        no_tap.starts_with("CHECK constraint failed"),
        "a TAP lease without a TAP name: {no_tap}"
    );
    // Positive control: the same statement with a free address and a TAP name is accepted, so the
    // refusals above came from the constraints and not from a malformed statement.
    assert_eq!(lease("172.16.0.9", "smv-9").unwrap(), 1);
}

#[test]
fn a_version_4_database_stores_no_tap_as_null_after_migration() {
    let env = Env::new();
    // A version-4 database as that build left it: a user-mode lease with tap_device ''.
    let mut c = rusqlite::Connection::open(env.db()).unwrap();
    let tx = c.transaction().unwrap();
    for step in &crate::state::schema::MIGRATIONS[..4] {
        tx.execute_batch(step).unwrap();
    }
    tx.pragma_update(None, "user_version", 4).unwrap();
    tx.commit().unwrap();
    let config = serde_json::to_string(&env.config("old-user")).unwrap();
    for id in ["old-user", "old-tap"] {
        c.execute(
            "INSERT INTO vms (id, status, backend, config, created_at, updated_at)
             VALUES (?1, 'stopped', 'qemu', ?2, 1, 1)",
            [id, &config.replace("old-user", id)],
        )
        .unwrap();
    }
    c.execute_batch(
        "INSERT INTO leases (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac,
                             ssh_host_port) VALUES
             ('old-user', 'user', '10.0.2.15', '10.0.2.2', '255.255.255.0', '', '02:00:0a:00:02:0f', 42000),
             ('old-tap', 'tap', '172.16.0.2', '172.16.0.1', '255.255.0.0', 'smv-2', '02:00:ac:10:00:02', 42001);",
    )
    .unwrap();
    drop(c);

    let mut s = env.store();
    let user = s.get_vm("old-user").unwrap().unwrap().info.network.unwrap();
    assert_eq!((user.mode, user.tap_device), (NetworkMode::User, None));
    let tap = s.get_vm("old-tap").unwrap().unwrap().info.network.unwrap();
    assert_eq!(tap.tap_device.as_deref(), Some("smv-2"));
    // New user-mode leases are NULL too; the next TAP lease skips the migrated one.
    s.create_vm(
        &env.config("new-user"),
        BackendKind::Qemu,
        Some(NetworkMode::User),
    )
    .unwrap();
    let next = s
        .create_vm(
            &env.config("new-tap"),
            BackendKind::Qemu,
            Some(NetworkMode::Tap),
        )
        .unwrap();
    assert_eq!(
        next.info.network.unwrap().tap_device.as_deref(),
        Some("smv-3")
    );
    drop(s);
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let nulls: i64 = c
        .query_row(
            "SELECT count(*) FROM leases WHERE mode = 'user' AND tap_device IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(nulls, 2);
    // The schema keeps it so: a TAP lease needs a name, a user lease has none.
    let insert = |id: &str, mode: &str, tap: Option<&str>| {
        c.execute(
            "INSERT INTO vms (id, status, backend, config, created_at, updated_at)
             SELECT ?1, status, backend, config, created_at, updated_at FROM vms WHERE id = 'new-tap'",
            [id],
        )
        .unwrap();
        c.execute(
            "INSERT INTO leases (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac)
             VALUES (?1, ?2, '172.16.0.77', '172.16.0.1', '255.255.0.0', ?3, '02:00:00:00:00:77')",
            rusqlite::params![id, mode, tap],
        )
    };
    assert!(insert("x1", "tap", None).is_err());
    assert!(insert("x2", "user", Some("")).is_err());
    assert!(insert("x3", "user", Some("smv-77")).is_err());
    assert_eq!(insert("x4", "tap", Some("smv-77")).unwrap(), 1);
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, i64::from(SCHEMA_VERSION));
}
