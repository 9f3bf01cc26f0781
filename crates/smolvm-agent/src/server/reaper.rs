//! Registry of the commands this server waits for. In the default image the server runs in its own
//! process, separate from PID 1 (which reaps orphans with `waitpid(-1)`), so nothing else can steal these
//! exit statuses; the registry keeps that true should another reaper share this process again.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// Pids of commands whose exit status a server thread will collect.
static COMMANDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Locks the registry; held across `spawn` + `register` so the reaper never sees an unregistered
/// command in between.
pub(crate) fn lock() -> MutexGuard<'static, BTreeSet<u32>> {
    COMMANDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets a command once its status was collected.
pub(crate) fn unregister(pid: u32) {
    lock().remove(&pid);
}
