//! Firecracker jails (`<data dir>/jail/<firecracker file name>/<vm id>`) that a crash left behind:
//! `cleanup` removes those whose VM has no row or no live VMM (see
//! [`crate::backend::firecracker::jail`]).

use std::path::PathBuf;

use super::SmolVmManager;
use crate::error::{Error, Result};
use crate::info::VmState;

impl SmolVmManager {
    /// Where this store's Firecracker jails live.
    pub(crate) fn jail_base(&self) -> PathBuf {
        self.dirs.data_dir.join("jail")
    }

    /// Removes jails whose VM has no row or no live VMM, judged under each VM's lock (a start that
    /// made its jail but has not recorded its VMM yet holds it). `dry_run` only lists them.
    pub(super) fn leaked_jails(&self, dry_run: bool) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let Ok(binaries) = std::fs::read_dir(self.jail_base()) else {
            return Ok(removed);
        };
        for binary in binaries.flatten() {
            let Ok(jails) = std::fs::read_dir(binary.path()) else {
                continue;
            };
            for jail in jails.flatten() {
                let Some(id) = jail.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if crate::config::validate_vm_id(&id).is_err() {
                    continue;
                }
                let _lock = self.lock(&id)?;
                let live = self.state()?.get_vm(&id)?.is_some_and(|r| {
                    matches!(r.info.status, VmState::Running | VmState::Paused)
                        && r.process.is_some_and(|p| p.is_alive())
                });
                if live {
                    continue;
                }
                let path = jail.path();
                if !dry_run {
                    std::fs::remove_dir_all(&path)
                        .map_err(|e| Error::io("remove leaked jail", &path, e))?;
                }
                removed.push(path);
            }
        }
        Ok(removed)
    }
}
