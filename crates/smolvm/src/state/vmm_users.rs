//! VMM user leases: the unprivileged user and group id each VM's VMM runs as (see
//! [`crate::vmm_user`]), one per VM, unique within the store, released with the VM's row.

use std::ops::RangeInclusive;

use rusqlite::{Connection, OptionalExtension};

use crate::state::error::{Fail, StateError};
use crate::state::StateStore;

/// Schema step adding the leases (its own step, so a merge with other migrations only renumbers it).
/// VMs created before it get their id when they next start ([`StateStore::vmm_id`]).
pub(crate) const MIGRATION: &str = "
CREATE TABLE vmm_users (
    vm_id TEXT    PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    uid   INTEGER NOT NULL UNIQUE CHECK (uid BETWEEN 1 AND 4294967294)
) STRICT;
";

/// Leases the lowest id of `range` that no VM of the store holds to `vm_id` (inside the caller's
/// write transaction). Returns it.
pub(crate) fn allocate(
    conn: &Connection,
    vm_id: &str,
    range: &RangeInclusive<u32>,
) -> Result<u32, Fail> {
    let mut stmt =
        conn.prepare("SELECT uid FROM vmm_users WHERE uid BETWEEN ?1 AND ?2 ORDER BY uid")?;
    let used = stmt
        .query_map([range.start(), range.end()], |r| r.get::<_, u32>(0))?
        .collect::<rusqlite::Result<Vec<u32>>>()?;
    // The lowest gap: ids are sorted, so the first index where id != start + index is free.
    let mut candidate = *range.start();
    for id in used {
        if id != candidate {
            break;
        }
        candidate = match candidate.checked_add(1) {
            Some(c) if c <= *range.end() => c,
            _ => {
                return Err(StateError::Exhausted {
                    what: format!("VMM user id in {}..={}", range.start(), range.end()),
                }
                .into())
            }
        };
    }
    conn.execute(
        "INSERT INTO vmm_users (vm_id, uid) VALUES (?1, ?2)",
        rusqlite::params![vm_id, candidate],
    )?;
    Ok(candidate)
}

/// The id leased to `vm_id`, if any.
pub(crate) fn get(conn: &Connection, vm_id: &str) -> rusqlite::Result<Option<u32>> {
    conn.query_row("SELECT uid FROM vmm_users WHERE vm_id = ?1", [vm_id], |r| {
        r.get(0)
    })
    .optional()
}

impl StateStore {
    /// The VMM user id of `vm_id`, leased now if the VM has none yet (a VM created before the store
    /// knew VMM users). Fails with [`StateError::VmNotFound`] for an unknown VM.
    pub fn vmm_id(&mut self, vm_id: &str) -> Result<u32, StateError> {
        let range = self.opts.vmm_ids.clone();
        self.write(|tx| {
            crate::state::vms::require_exists(tx, vm_id)?;
            match get(tx, vm_id)? {
                Some(id) => Ok(id),
                None => allocate(tx, vm_id, &range),
            }
        })
    }
}
