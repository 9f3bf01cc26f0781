//! Opening the database: damage and version checks, forward migrations, connection settings.
//!
//! The schema version lives in `PRAGMA user_version`. `MIGRATIONS[i]` moves a database from version `i`
//! to `i + 1`; a new schema version is a new entry at the end, never an edit of an old one.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use crate::state::error::{Fail, StateError};

/// How long a connection waits for another process's write transaction before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Forward migrations; entry `i` upgrades version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, crate::state::vmm_users::MIGRATION];

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 1: VMs, their network leases and their host port forwards. STRICT tables so that a value of
/// the wrong type is refused on write instead of being found on read.
const V1: &str = "
CREATE TABLE vms (
    seq            INTEGER PRIMARY KEY,  -- creation order (an explicit rowid survives VACUUM)
    id             TEXT    NOT NULL UNIQUE,
    status         TEXT    NOT NULL CHECK (status IN ('created', 'running', 'stopped', 'error')),
    backend        TEXT    NOT NULL CHECK (backend IN ('firecracker', 'qemu')),
    config         TEXT    NOT NULL,     -- JSON of VmConfigSpec
    pid            INTEGER,
    pid_start_time INTEGER,              -- clock ticks after boot; with pid, survives pid reuse
    socket_path    BLOB,                 -- paths are raw OS bytes: they need not be UTF-8
    agent_socket   BLOB,
    disk_path      BLOB,
    created_at     INTEGER NOT NULL,     -- milliseconds since the Unix epoch
    updated_at     INTEGER NOT NULL,
    last_error     TEXT,
    CHECK ((pid IS NULL) = (pid_start_time IS NULL))
) STRICT;
CREATE INDEX vms_status ON vms (status);

CREATE TABLE leases (
    vm_id         TEXT    PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    guest_ip      TEXT    NOT NULL UNIQUE,
    gateway_ip    TEXT    NOT NULL,
    netmask       TEXT    NOT NULL,
    tap_device    TEXT    NOT NULL UNIQUE CHECK (length(tap_device) BETWEEN 1 AND 15),
    guest_mac     TEXT    NOT NULL UNIQUE,
    ssh_host_port INTEGER UNIQUE CHECK (ssh_host_port BETWEEN 1 AND 65535)
) STRICT;

CREATE TABLE port_forwards (
    id         INTEGER PRIMARY KEY,
    vm_id      TEXT    NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    host_addr  TEXT    NOT NULL,
    host_port  INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
    protocol   TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    UNIQUE (host_addr, host_port, protocol)
) STRICT;
CREATE INDEX port_forwards_vm ON port_forwards (vm_id);
";

/// Version 2: leases record their network mode. A user-mode VM (QEMU's user networking) has a private
/// network of its own, so every one of them is `10.0.2.15` with the same MAC and no TAP: the uniqueness
/// of address, TAP name and MAC now holds among TAP-mode leases only (partial unique indexes). The SSH
/// host port stays unique across all leases. SQLite cannot drop a column constraint, hence the rebuild.
const V2: &str = "
CREATE TABLE leases_v2 (
    vm_id         TEXT    PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    mode          TEXT    NOT NULL DEFAULT 'tap' CHECK (mode IN ('tap', 'user')),
    guest_ip      TEXT    NOT NULL,
    gateway_ip    TEXT    NOT NULL,
    netmask       TEXT    NOT NULL,
    tap_device    TEXT    NOT NULL CHECK (length(tap_device) <= 15
                                          AND (mode = 'user' OR length(tap_device) >= 1)),
    guest_mac     TEXT    NOT NULL,
    ssh_host_port INTEGER UNIQUE CHECK (ssh_host_port BETWEEN 1 AND 65535)
) STRICT;
INSERT INTO leases_v2 (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac, ssh_host_port)
    SELECT vm_id, 'tap', guest_ip, gateway_ip, netmask, tap_device, guest_mac, ssh_host_port FROM leases;
DROP TABLE leases;
ALTER TABLE leases_v2 RENAME TO leases;
CREATE UNIQUE INDEX leases_tap_guest_ip ON leases (guest_ip) WHERE mode = 'tap';
CREATE UNIQUE INDEX leases_tap_device ON leases (tap_device) WHERE mode = 'tap';
CREATE UNIQUE INDEX leases_tap_guest_mac ON leases (guest_mac) WHERE mode = 'tap';
";

/// Version 3: the `paused` VM state, and snapshots. `vms` is rebuilt because its status CHECK cannot be
/// altered (foreign keys are off while migrating, so leases and forwards keep pointing at `vms`).
/// `snapshots` outlives the VM it was taken from (no foreign key to `vms`); `snapshot_users` records
/// which VMs were made from a snapshot (their disks are overlays on its disk), so deleting a snapshot that
/// VMs still use is refused by the foreign key, and deleting a VM releases its link (CASCADE).
const V3: &str = "
CREATE TABLE vms_v3 (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    status         TEXT    NOT NULL CHECK (status IN ('created', 'running', 'paused', 'stopped', 'error')),
    backend        TEXT    NOT NULL CHECK (backend IN ('firecracker', 'qemu')),
    config         TEXT    NOT NULL,
    pid            INTEGER,
    pid_start_time INTEGER,
    socket_path    BLOB,
    agent_socket   BLOB,
    disk_path      BLOB,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_error     TEXT,
    CHECK ((pid IS NULL) = (pid_start_time IS NULL))
) STRICT;
INSERT INTO vms_v3 SELECT seq, id, status, backend, config, pid, pid_start_time, socket_path,
    agent_socket, disk_path, created_at, updated_at, last_error FROM vms;
DROP TABLE vms;
ALTER TABLE vms_v3 RENAME TO vms;
CREATE INDEX vms_status ON vms (status);

CREATE TABLE snapshots (
    seq         INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    source_vm   TEXT    NOT NULL,      -- the VM it was taken from (may be gone since)
    backend     TEXT    NOT NULL CHECK (backend IN ('firecracker', 'qemu')),
    config      TEXT    NOT NULL,      -- JSON of the source's VmConfigSpec
    machine     TEXT    NOT NULL,      -- JSON of the machine shape and VMM version it needs
    dir         BLOB    NOT NULL,      -- where its files are
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    created_at  INTEGER NOT NULL       -- milliseconds since the Unix epoch
) STRICT;

CREATE TABLE snapshot_users (
    vm_id    TEXT PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    snapshot TEXT NOT NULL REFERENCES snapshots (name)
) STRICT;
CREATE INDEX snapshot_users_snapshot ON snapshot_users (snapshot);
";

/// Version 4: stored configs (`vms.config`, `snapshots.config`) carry `agent`, whether the guest runs
/// smolvm's agent, explicitly. No table changes: a config without the key derives it from its boot
/// args as every earlier version did; the version bump keeps older smolvm builds (which refuse unknown
/// config keys) from reading configs that have it.
const V4: &str = "SELECT 1;";

/// Version 5: a lease without a TAP device (user mode) stores `tap_device` as NULL instead of `''`;
/// exactly the TAP-mode leases have one. `leases` is rebuilt because SQLite cannot change a column's
/// constraints (its partial unique indexes go with it and are made again).
const V5: &str = "
CREATE TABLE leases_v5 (
    vm_id         TEXT    PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    mode          TEXT    NOT NULL DEFAULT 'tap' CHECK (mode IN ('tap', 'user')),
    guest_ip      TEXT    NOT NULL,
    gateway_ip    TEXT    NOT NULL,
    netmask       TEXT    NOT NULL,
    tap_device    TEXT    CHECK ((mode = 'tap') = (tap_device IS NOT NULL)
                                 AND length(tap_device) BETWEEN 1 AND 15),
    guest_mac     TEXT    NOT NULL,
    ssh_host_port INTEGER UNIQUE CHECK (ssh_host_port BETWEEN 1 AND 65535)
) STRICT;
INSERT INTO leases_v5 (vm_id, mode, guest_ip, gateway_ip, netmask, tap_device, guest_mac, ssh_host_port)
    SELECT vm_id, mode, guest_ip, gateway_ip, netmask, NULLIF(tap_device, ''), guest_mac, ssh_host_port
    FROM leases;
DROP TABLE leases;
ALTER TABLE leases_v5 RENAME TO leases;
CREATE UNIQUE INDEX leases_tap_guest_ip ON leases (guest_ip) WHERE mode = 'tap';
CREATE UNIQUE INDEX leases_tap_device ON leases (tap_device) WHERE mode = 'tap';
CREATE UNIQUE INDEX leases_tap_guest_mac ON leases (guest_mac) WHERE mode = 'tap';
";

/// Opens (creating if missing) and prepares the database at `path`.
///
/// Order matters: nothing is written before the file is known to be a SQLite database of a version
/// we understand, so a corrupt or newer file is reported exactly as it was found.
pub(crate) fn open(path: &Path) -> Result<Connection, StateError> {
    open_inner(path).map_err(|e| e.at(path))
}

fn open_inner(path: &Path) -> Result<Connection, Fail> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Reading the header and the schema fails with NOTADB / CORRUPT on a damaged file.
    let found = user_version(&conn)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })?;
    check_not_newer(path, found)?;
    if found < i64::from(SCHEMA_VERSION) {
        // The bundled SQLite enables foreign keys by default; a migration that rebuilds a parent table
        // (V3 drops and recreates `vms`) would otherwise cascade-delete every lease. The pragma is a
        // no-op inside a transaction, so it is set here, before `migrate` opens one.
        conn.pragma_update(None, "foreign_keys", false)?;
        migrate(&mut conn, path)?;
    }
    // Foreign keys are enabled after migrating: a future migration that rebuilds a table needs them off.
    conn.pragma_update(None, "foreign_keys", true)?;
    enable_wal(&conn)?;
    Ok(conn)
}

/// Switches the file to WAL (readers never block the writer and vice versa). The mode is stored in the
/// file, so this is a read on every open but the first.
///
/// The switch needs an exclusive lock, and SQLite may report "database is locked" for it at once
/// instead of calling the busy handler while another connection opens the same new file, so it is
/// retried here for up to [`BUSY_TIMEOUT`].
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get::<_, String>(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map(drop),
        }
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn check_not_newer(path: &Path, found: i64) -> Result<(), StateError> {
    // user_version is a signed 32-bit field; a negative one was not written by us either.
    if found > i64::from(SCHEMA_VERSION) || found < 0 {
        return Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies the missing migrations in one write transaction. The version is read again inside it,
/// because another process may have migrated between our first look and taking the write lock.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Fail> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = user_version(&tx)?;
    check_not_newer(path, found)?;
    let from = usize::try_from(found).unwrap_or(0);
    for step in &MIGRATIONS[from..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
