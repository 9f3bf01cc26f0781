//! SQLite state store: VMs, their network leases (IP, TAP, MAC, SSH port) and host port forwards.
//!
//! One file, `<data_dir>/smolvm.db`, shared by every smolvm process on the host. Each change is one
//! `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two processes never both read a
//! pool as free and then both write), waiting up to [`BUSY_TIMEOUT`] for another process's transaction.
//! WAL mode lets readers (`list`, `info`) run alongside a writer. The schema is versioned in
//! `PRAGMA user_version` and migrated forward on open; a newer or damaged file is reported and never
//! rewritten.

mod error;
mod forwards;
mod leases;
mod schema;
mod snapshots;
mod vmm_users;
mod vms;

#[cfg(test)]
mod tests;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

pub use error::StateError;
pub(crate) use leases::USER_DNS_IP;
#[cfg(test)]
pub(crate) use leases::USER_GUEST_IP;
pub(crate) use schema::BUSY_TIMEOUT;
pub use vms::RunningVmm;
pub(crate) use vms::VmRecord;

use error::Fail;

/// Default range of host ports for SSH forwards and allocated port forwards.
pub(crate) const DEFAULT_SSH_PORT_RANGE: RangeInclusive<u16> = 42000..=42999;

/// Tunables of a [`StateStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Host ports handed out as SSH ports and for forwards without an explicit port.
    pub ssh_port_range: RangeInclusive<u16>,
    /// Skip ports of the range that another program on this host listens on right now (a bind probe
    /// on the forward's address when allocating). Ports recorded in the store are skipped regardless.
    pub probe_host_ports: bool,
    /// User (and group) ids handed out to VMMs, one per VM (see [`crate::vmm_user`]).
    pub vmm_ids: RangeInclusive<u32>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ssh_port_range: DEFAULT_SSH_PORT_RANGE,
            probe_host_ports: true,
            vmm_ids: crate::vmm_user::DEFAULT_RANGE,
        }
    }
}

/// An open state database. Each process (or thread) opens its own; they coordinate through SQLite.
#[derive(Debug)]
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
    opts: StoreOptions,
}

impl StateStore {
    /// Opens the database at `path` with default options, creating it (and migrating it to the
    /// current schema) if needed. The parent directory must exist.
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens the database at `path` with `opts`.
    ///
    /// Errors: [`StateError::Corrupt`] for a file that is not a SQLite database or is malformed,
    /// [`StateError::NewerSchema`] for one written by a newer smolvm; neither file is modified.
    pub fn open_with(path: &Path, opts: StoreOptions) -> Result<StateStore, StateError> {
        let conn = schema::open(path)?;
        Ok(StateStore {
            conn,
            path: path.to_path_buf(),
            opts,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed only if `f` succeeds.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        result.map_err(|e: Fail| e.at(&self.path))
    }

    /// Runs the read-only `f`. Reads that need a consistent view use a single statement.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Fail>) -> Result<T, StateError> {
        f(&self.conn).map_err(|e| e.at(&self.path))
    }
}
