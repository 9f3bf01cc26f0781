//! Unit tests of the state store that need a real SQLite file (formerly integration tests; the store
//! is crate-private since the library surface was curated).

mod concurrency;
mod forwards;
mod network_mode;
mod snapshots;
mod store;
mod vmm_users;
