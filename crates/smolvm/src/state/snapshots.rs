//! Snapshot rows (`snapshots`) and which VMs were made from which snapshot (`snapshot_users`).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::config::{BackendKind, VmConfigSpec};
use crate::snapshot::{MachineShape, SnapshotRecord};
use crate::state::error::{Fail, StateError};
use crate::state::StateStore;

const SELECT: &str = "SELECT name, source_vm, backend, config, machine, dir, size_bytes, created_at
    FROM snapshots";

impl StateStore {
    /// Records a snapshot. Returns `false` (and records nothing) if the name is taken.
    pub fn insert_snapshot(&mut self, s: &SnapshotRecord) -> Result<bool, StateError> {
        let bad = |e: serde_json::Error| StateError::bad_row(&s.name, "snapshot", e);
        let config = serde_json::to_string(&s.config).map_err(bad)?;
        let machine = serde_json::to_string(&s.machine).map_err(bad)?;
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM snapshots WHERE name = ?1)",
                [&s.name],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO snapshots (name, source_vm, backend, config, machine, dir, size_bytes,
                     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    s.name,
                    s.source_vm,
                    s.backend.as_str(),
                    config,
                    machine,
                    s.dir.as_os_str().as_bytes(),
                    i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
                    ms(s.created_at)
                ],
            )?;
            Ok(true)
        })
    }

    /// The snapshot `name`, or `None`.
    pub fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>, StateError> {
        self.read(|c| {
            let raw = c
                .query_row(&format!("{SELECT} WHERE name = ?1"), [name], Raw::from_row)
                .optional()?;
            Ok(raw.map(Raw::into_record).transpose()?)
        })
    }

    /// All snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("{SELECT} ORDER BY seq"))?;
            let raws = stmt
                .query_map([], Raw::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(raws
                .into_iter()
                .map(Raw::into_record)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Deletes the snapshot's row unless VMs use it. `Ok(Err(users))` when in use (nothing deleted),
    /// `Ok(Ok(found))` otherwise. The check and the delete are one transaction, so a VM made from the
    /// snapshot meanwhile either blocks the delete or fails to link.
    pub fn delete_snapshot(&mut self, name: &str) -> Result<Result<bool, Vec<String>>, StateError> {
        self.write(|tx| {
            let users = users(tx, name)?;
            if !users.is_empty() {
                return Ok(Err(users));
            }
            Ok(Ok(tx.execute(
                "DELETE FROM snapshots WHERE name = ?1",
                [name],
            )? > 0))
        })
    }

    /// Records that VM `vm_id` was made from snapshot `name` (fails if either is gone).
    pub fn link_snapshot_user(&mut self, vm_id: &str, name: &str) -> Result<(), StateError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO snapshot_users (vm_id, snapshot) VALUES (?1, ?2)",
                params![vm_id, name],
            )?;
            Ok(())
        })
    }

    /// The VMs made from snapshot `name`.
    pub fn snapshot_users(&self, name: &str) -> Result<Vec<String>, StateError> {
        self.read(|c| users(c, name))
    }

    /// The snapshot VM `vm_id` was made from, if any.
    pub fn snapshot_of(&self, vm_id: &str) -> Result<Option<String>, StateError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT snapshot FROM snapshot_users WHERE vm_id = ?1",
                [vm_id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }
}

fn users(c: &Connection, name: &str) -> Result<Vec<String>, Fail> {
    let mut stmt =
        c.prepare("SELECT vm_id FROM snapshot_users WHERE snapshot = ?1 ORDER BY vm_id")?;
    let ids = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

struct Raw {
    name: String,
    source_vm: String,
    backend: String,
    config: String,
    machine: String,
    dir: Vec<u8>,
    size_bytes: i64,
    created_at: i64,
}

impl Raw {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            name: r.get(0)?,
            source_vm: r.get(1)?,
            backend: r.get(2)?,
            config: r.get(3)?,
            machine: r.get(4)?,
            dir: r.get(5)?,
            size_bytes: r.get(6)?,
            created_at: r.get(7)?,
        })
    }

    fn into_record(self) -> Result<SnapshotRecord, StateError> {
        let name = self.name;
        let bad = |col: &'static str, e: Box<dyn std::error::Error + Send + Sync>| {
            StateError::bad_row(&name, col, e)
        };
        let backend: BackendKind = self
            .backend
            .parse()
            .map_err(|e| bad("backend", Box::new(e)))?;
        let spec: VmConfigSpec =
            serde_json::from_str(&self.config).map_err(|e| bad("config", Box::new(e)))?;
        let config = spec
            .build_unchecked_paths()
            .map_err(|e| bad("config", Box::new(e)))?;
        let machine: MachineShape =
            serde_json::from_str(&self.machine).map_err(|e| bad("machine", Box::new(e)))?;
        let created_at = u64::try_from(self.created_at)
            .ok()
            .and_then(|m| UNIX_EPOCH.checked_add(Duration::from_millis(m)))
            .ok_or_else(|| bad("created_at", "negative".into()))?;
        Ok(SnapshotRecord {
            name: name.clone(),
            source_vm: self.source_vm,
            backend,
            config,
            machine,
            dir: PathBuf::from(OsString::from_vec(self.dir)),
            size_bytes: u64::try_from(self.size_bytes).unwrap_or(0),
            created_at,
        })
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
