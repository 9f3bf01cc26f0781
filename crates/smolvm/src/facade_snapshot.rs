//! `SmolVm` methods for pause/resume, snapshots and forks (see [`crate::manager`]'s `pause`, `snapshot`
//! and `fork` modules for the rules).

use super::SmolVm;
use crate::error::Result;

impl SmolVm {
    /// Pauses the running VM (its vCPUs stop; the VMM process and memory stay). Chainable.
    pub fn pause(&mut self) -> Result<&mut SmolVm> {
        self.info = self.manager.pause(&self.vm_id)?;
        Ok(self)
    }

    /// Resumes the paused VM. Chainable.
    pub fn resume(&mut self) -> Result<&mut SmolVm> {
        self.info = self.manager.resume(&self.vm_id)?;
        Ok(self)
    }
}
