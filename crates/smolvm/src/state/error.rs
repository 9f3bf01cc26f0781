//! Errors of the state store.

use std::error::Error as StdError;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::error::ValidationError;
use crate::state::forwards::Protocol;

/// Everything that can go wrong in the state store. SQLite causes stay reachable through `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed (locked past the busy timeout, disk full, permission denied, ...).
    #[error("state database {}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// Another process held the database's write lock for longer than [`BUSY_TIMEOUT`]: almost always
    /// another smolvm process working in the same data directory.
    ///
    /// [`BUSY_TIMEOUT`]: crate::state::BUSY_TIMEOUT
    #[error(
        "state database {} stayed locked for {}s: another process holds it, most likely another \
         smolvm working on the data directory {} (see `fuser {}`); retry when it has finished",
        path.display(),
        crate::state::BUSY_TIMEOUT.as_secs(),
        path.parent().map_or_else(|| ".".into(), |d| d.display().to_string()),
        path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// What SQLite said ("database is locked").
        #[source]
        source: rusqlite::Error,
    },

    /// The file is not a SQLite database or is malformed. It is left as it is: it may hold the only
    /// record of running VMs, so deciding to discard it is the user's call.
    #[error(
        "state database {} is corrupt or not a SQLite database; it was left untouched \
         (move it away to start with an empty store)",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer smolvm; it is not modified.
    #[error(
        "state database {} has schema version {found}, newer than version {supported} that this \
         smolvm understands; upgrade smolvm (the file was not modified)",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: u32,
    },

    /// No VM with this id.
    #[error("VM {0:?} not found")]
    VmNotFound(String),

    /// A VM with this id already exists.
    #[error("VM {0:?} already exists")]
    VmAlreadyExists(String),

    /// A pool (guest IPs, host ports) has no free entry left.
    #[error("no free {what} left")]
    Exhausted {
        /// The pool, e.g. "host port in 42000..=42999".
        what: String,
    },

    /// A requested host port is already taken by another forward or an SSH port.
    #[error("host port {host_addr}:{host_port}/{protocol} is already taken by VM {holder:?} ({purpose})")]
    PortConflict {
        /// Requested host address.
        host_addr: Ipv4Addr,
        /// Requested host port.
        host_port: u16,
        /// Requested protocol.
        protocol: Protocol,
        /// The VM holding the port.
        holder: String,
        /// "ssh" or "port forward".
        purpose: &'static str,
    },

    /// An argument broke a rule (for example port 0).
    #[error(transparent)]
    Invalid(#[from] ValidationError),

    /// A stored value cannot be read back (edited by hand, or written by a buggy version).
    #[error("stored {column} of VM {vm_id:?} cannot be read")]
    BadRow {
        /// The VM whose row is bad.
        vm_id: String,
        /// The column (or `table.column`).
        column: &'static str,
        /// Why it cannot be read.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    /// A config cannot be stored as JSON (for example a path that is not UTF-8).
    #[error("cannot encode the config of VM {vm_id:?} as JSON")]
    Encode {
        /// The VM.
        vm_id: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// A [`StateError::BadRow`] from any error or message.
    pub(crate) fn bad_row(
        vm_id: &str,
        column: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> StateError {
        StateError::BadRow {
            vm_id: vm_id.to_string(),
            column,
            source: source.into(),
        }
    }
}

impl From<StateError> for crate::Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::VmNotFound(id) => crate::Error::VmNotFound(id),
            StateError::VmAlreadyExists(id) => crate::Error::VmAlreadyExists(id),
            StateError::Invalid(v) => crate::Error::Validation(v),
            other => crate::Error::State(Box::new(other)),
        }
    }
}

/// Internal failure inside a store operation: either a raw SQLite error (which needs the database path
/// to become a [`StateError`]) or a finished [`StateError`]. Lets the operations use `?` on both.
#[derive(Debug)]
pub(crate) enum Fail {
    Sql(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StateError> for Fail {
    fn from(e: StateError) -> Self {
        Fail::State(e)
    }
}

impl From<ValidationError> for Fail {
    fn from(e: ValidationError) -> Self {
        Fail::State(StateError::Invalid(e))
    }
}

impl Fail {
    /// The public error, with SQLite's "not a database" and "malformed" turned into
    /// [`StateError::Corrupt`] wherever they surface (a damaged page may only be hit by a later query).
    pub(crate) fn at(self, path: &Path) -> StateError {
        match self {
            Fail::State(e) => e,
            Fail::Sql(source) => {
                let path = path.to_path_buf();
                match source.sqlite_error_code() {
                    Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                        StateError::Corrupt { path, source }
                    }
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                        StateError::Busy { path, source }
                    }
                    _ => StateError::Sqlite { path, source },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_database_names_the_data_dir_and_the_likely_holder() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let e = Fail::Sql(busy).at(Path::new("/data/a/smolvm.db"));
        assert!(matches!(e, StateError::Busy { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "state database /data/a/smolvm.db stayed locked for 10s: another process holds it, most \
             likely another smolvm working on the data directory /data/a (see `fuser \
             /data/a/smolvm.db`); retry when it has finished"
        );
        // SQLite's own words stay in the chain.
        assert!(std::error::Error::source(&e)
            .unwrap()
            .to_string()
            .contains("database is locked"));
    }
}
