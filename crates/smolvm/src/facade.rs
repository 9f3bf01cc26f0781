//! `SmolVm`: one VM, the spec's `SmolVM` facade (vm-lifecycle, vm-management-overview, vm-info).
//!
//! # Ownership and cleanup (the spec's context-manager rules as RAII)
//! * A `SmolVm` made by [`SmolVm::new`], [`SmolVm::builder`] or [`SmolVm::from_config`] **owns** its VM:
//!   it creates it (state `created`). When the value is dropped, the VM is stopped (if running) and
//!   deleted: nothing is left behind.
//! * A `SmolVm` made by [`SmolVm::from_id`] is **reconnected**: when dropped, the VM is stopped but not
//!   deleted.
//! * [`SmolVm::close`] consumes the value and releases it *without* touching the VM: use it to keep a VM
//!   running for another process (`from_id` later).
//! * [`SmolVm::delete`] deletes at once; dropping afterwards does nothing more.
//! * [`SmolVm::launch`] / [`SmolVmBuilder::launch`] create **and start** (the spec's `with SmolVM() as vm`).
//!
//! Errors during drop are logged (tracing), never panicked; call `stop`/`delete` explicitly to see them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{BackendKind, VmConfig};
use crate::error::{Error, Result};
use crate::exec::{AgentClient, CommandResult, ExecError, DEFAULT_RUN_TIMEOUT};
use crate::info::{VmInfo, VmState};
use crate::manager::{SmolVmManager, DEFAULT_BOOT_TIMEOUT_SECS};

/// Default graceful stop timeout of the facade, seconds (spec: `SmolVM.stop(timeout=3.0)`).
pub(crate) const FACADE_STOP_TIMEOUT_SECS: f64 = 3.0;
/// SSH login user unless set with [`SmolVm::with_ssh_user`] (spec: `ssh_user="root"`).
pub const DEFAULT_SSH_USER: &str = "root";
/// Default timeout of an agent connection when running a command on an already running VM.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[path = "facade_builder.rs"]
mod builder;
pub use builder::SmolVmBuilder;

#[path = "facade_egress.rs"]
mod egress;

#[path = "facade_snapshot.rs"]
mod snapshot;

/// One VM (spec: `SmolVM`). See the module docs for the ownership and cleanup rules.
#[derive(Debug)]
pub struct SmolVm {
    manager: Arc<SmolVmManager>,
    vm_id: String,
    info: VmInfo,
    owned: bool,
    released: bool,
    /// The agent connection, shared: any number of threads run requests on it at once (the client
    /// multiplexes them), so the lock is held only to take or replace it, never during a request.
    agent: Mutex<Option<Arc<AgentClient>>>,
    ssh_user: String,
    ssh_key_path: Option<PathBuf>,
    /// The template to make from this VM right after its first (cold) start.
    make_template: Option<String>,
    /// SSH answered once since the last start (only tracked for VMs reached over SSH).
    ssh_ready: std::sync::atomic::AtomicBool,
}

impl SmolVm {
    /// Auto-configured VM from the default image, created (not started). Owned.
    pub fn new() -> Result<SmolVm> {
        SmolVm::builder().build()
    }

    /// A builder for auto-configuration options or an explicit config.
    pub fn builder() -> SmolVmBuilder {
        SmolVmBuilder::default()
    }

    /// A VM from an explicit config, created (not started), with default directories. Owned.
    pub fn from_config(config: VmConfig) -> Result<SmolVm> {
        SmolVm::builder().config(config).build()
    }

    /// Auto-configured VM, created and started (the spec's `with SmolVM() as vm`). Owned.
    pub fn launch() -> Result<SmolVm> {
        SmolVm::builder().launch()
    }

    /// Reconnects to an existing VM (spec: `from_id`). Not owned: dropping it stops the VM, never deletes.
    pub fn from_id(
        vm_id: &str,
        data_dir: Option<&Path>,
        socket_dir: Option<&Path>,
        backend: Option<BackendKind>,
    ) -> Result<SmolVm> {
        let manager = Arc::new(SmolVmManager::new(data_dir, socket_dir, backend)?);
        SmolVm::reconnect(manager, vm_id)
    }

    /// [`from_id`](Self::from_id) through an existing manager. Not owned.
    pub fn reconnect(manager: Arc<SmolVmManager>, vm_id: &str) -> Result<SmolVm> {
        let info = manager.get(vm_id)?;
        Ok(SmolVm {
            make_template: None,
            manager,
            vm_id: vm_id.to_string(),
            info,
            owned: false,
            released: false,
            agent: Mutex::new(None),
            ssh_user: DEFAULT_SSH_USER.to_string(),
            ssh_key_path: None,
            ssh_ready: Default::default(),
        })
    }

    /// Sets the SSH user for `run` over SSH (spec: `ssh_user`).
    pub fn with_ssh_user(mut self, user: impl Into<String>) -> SmolVm {
        self.ssh_user = user.into();
        self
    }

    /// Uses this private key instead of the data directory's client key (spec: `ssh_key_path`).
    pub fn with_ssh_key(mut self, key: impl Into<PathBuf>) -> SmolVm {
        self.ssh_key_path = Some(key.into());
        self
    }

    /// Waits until the guest's SSH server accepts smolvm's key, at most `timeout` (spec:
    /// `wait_for_ssh`). Not needed before [`run`](Self::run), which uses the agent.
    pub fn wait_for_ssh(&self, timeout: Duration) -> Result<()> {
        self.manager.wait_for_ssh(&self.vm_id, timeout)
    }

    /// Runs a command over SSH (`sh -lc`), whatever the image: the path `run` takes for images without
    /// the smolvm agent. The host key is pinned; there is no trust on first use.
    pub fn run_over_ssh(&self, command: &str, timeout: Option<Duration>) -> Result<CommandResult> {
        let mut target = self.manager.ssh_target(&self.vm_id, &self.ssh_user)?;
        if let Some(k) = &self.ssh_key_path {
            target.identity_file = k.clone();
        }
        let argv = ["sh".to_string(), "-lc".to_string(), command.to_string()];
        let out = crate::ssh::run_ssh(&target, &argv, timeout.or(Some(DEFAULT_RUN_TIMEOUT)))?;
        Ok(CommandResult {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Starts the VM (no-op when running) with the default 30 s boot timeout. Chainable.
    pub fn start(&mut self) -> Result<&mut SmolVm> {
        self.start_with_timeout(Duration::from_secs_f64(DEFAULT_BOOT_TIMEOUT_SECS))
    }

    /// Starts the VM, waiting at most `boot_timeout` for the guest to be ready. Chainable.
    pub fn start_with_timeout(&mut self, boot_timeout: Duration) -> Result<&mut SmolVm> {
        let (info, client) = self.manager.start_inner(&self.vm_id, boot_timeout)?;
        if info.status != self.info.status {
            *self.ssh_ready.get_mut() = false;
        }
        self.info = info;
        if let Some(c) = client {
            *self.agent_slot() = Some(Arc::new(c));
        }
        self.make_pending_template();
        Ok(self)
    }

    /// Stops the VM gracefully (3 s, then kill). Chainable.
    pub fn stop(&mut self) -> Result<&mut SmolVm> {
        self.stop_with_timeout(Duration::from_secs_f64(FACADE_STOP_TIMEOUT_SECS))
    }

    /// Stops the VM, waiting at most `timeout` for a graceful power-off. Chainable.
    pub fn stop_with_timeout(&mut self, timeout: Duration) -> Result<&mut SmolVm> {
        *self.agent_slot() = None;
        self.info = self.manager.stop(&self.vm_id, timeout)?;
        Ok(self)
    }

    /// Deletes the VM and all its resources now. Dropping afterwards does nothing more.
    pub fn delete(&mut self) -> Result<()> {
        *self.agent_slot() = None;
        self.manager.delete(&self.vm_id)?;
        self.released = true;
        Ok(())
    }

    /// Releases this handle without stopping or deleting the VM.
    pub fn close(mut self) {
        self.released = true;
    }

    /// Reloads the cached info from the state store.
    pub fn refresh(&mut self) -> Result<&mut SmolVm> {
        self.info = self.manager.get(&self.vm_id)?;
        Ok(self)
    }

    /// Cached info (see [`refresh`](Self::refresh)).
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Cached status.
    pub fn status(&self) -> VmState {
        self.info.status
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The guest IP address; an error for a VM without networking.
    pub fn get_ip(&self) -> Result<Ipv4Addr> {
        self.info.guest_ip().ok_or_else(|| {
            Error::Validation(crate::ValidationError::new(
                "network",
                format!("VM {} has no network", self.vm_id),
            ))
        })
    }

    /// The manager's data directory.
    pub fn data_dir(&self) -> &Path {
        self.manager.data_dir()
    }

    /// The manager behind this VM.
    pub fn manager(&self) -> &SmolVmManager {
        &self.manager
    }

    /// True when commands can run in this VM: it boots smolvm's agent (`init=/init`), or it has a
    /// network through which SSH can reach it.
    pub fn can_run_commands(&self) -> bool {
        self.info.config.boots_agent() || self.info.network.is_some()
    }

    /// Runs a shell command (`/bin/sh -lc`, so profile environment applies) and collects its output.
    pub fn run(&self, command: &str) -> Result<CommandResult> {
        self.run_with_timeout(command, None)
    }

    /// [`run`](Self::run) with a timeout (default 30 s, as the spec); on expiry the command's process
    /// group is killed in the guest and `Error::OperationTimeout` returned. Goes through the guest agent;
    /// images without it are reached over SSH.
    pub fn run_with_timeout(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<CommandResult> {
        if !self.info.config.boots_agent() && self.info.network.is_some() {
            // The spec: "run() automatically waits for SSH on first use". Without the agent's Ready
            // message, `start` returned before the guest's SSH server was up.
            if !self.ssh_ready.load(std::sync::atomic::Ordering::Relaxed) {
                self.wait_for_ssh(timeout.unwrap_or(DEFAULT_RUN_TIMEOUT))?;
                self.ssh_ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return self.run_over_ssh(command, timeout);
        }
        self.with_agent(|c| Ok(c.run(command, timeout.or(Some(DEFAULT_RUN_TIMEOUT)))?))
    }

    /// Runs `f` with a connected agent client, connecting (or reconnecting once) as needed. Calls
    /// from several threads run at once on one shared connection; under QEMU that connection goes
    /// through the VM's channel owner, so other processes run theirs at the same time too.
    pub fn with_agent<T>(&self, f: impl Fn(&AgentClient) -> Result<T>) -> Result<T> {
        let client = self.agent_client()?;
        let result = f(&client);
        if matches!(&result, Err(e) if is_disconnect(e)) {
            // The agent restarted, the guest rebooted or the channel owner died: report it (the
            // command may or may not have run, so it is never retried silently) and reconnect on the
            // next call. If the VMM died, say so.
            let mut slot = self.agent_slot();
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
            drop(slot);
            if let Some(e) = self.vm_failure() {
                return Err(e);
            }
        }
        result
    }

    /// The shared agent connection, made if there is none (connecting holds the slot, so concurrent
    /// first calls make one connection, not several).
    fn agent_client(&self) -> Result<Arc<AgentClient>> {
        if !self.info.config.boots_agent() {
            return Err(Error::InvalidState {
                vm_id: self.vm_id.clone(),
                status: self.info.status,
                operation:
                    "run commands (the image has no smolvm agent: boot args lack init=/init)",
            });
        }
        let mut slot = self.agent_slot();
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let rec = self.manager.record(&self.vm_id)?;
        if let Some(e) = failed(&rec) {
            return Err(e);
        }
        if rec.info.status != VmState::Running {
            return Err(Error::InvalidState {
                vm_id: self.vm_id.clone(),
                status: rec.info.status,
                operation: "run commands (start it first)",
            });
        }
        // A channel owner that crashed is replaced here, without waiting for `reconcile`.
        self.manager.ensure_channel(&self.vm_id)?;
        // The endpoint recorded at start: right even if this manager has another socket directory.
        let endpoint = self.manager.agent_endpoint_of(&rec)?;
        match AgentClient::connect(&endpoint, AGENT_CONNECT_TIMEOUT) {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = Some(Arc::clone(&c));
                Ok(c)
            }
            // The VMM may have died while we waited: then that is the news, not the socket.
            Err(e) => Err(self.vm_failure().unwrap_or_else(|| e.into())),
        }
    }

    /// The error of this VM if its VMM is gone (which marks it `error`) or it already is in `error`.
    fn vm_failure(&self) -> Option<Error> {
        self.manager
            .record(&self.vm_id)
            .ok()
            .and_then(|r| failed(&r))
    }

    fn agent_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<AgentClient>>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Error::VmFailed`] for a VM in `error`, with its recorded reason.
fn failed(rec: &crate::state::VmRecord) -> Option<Error> {
    (rec.info.status == VmState::Error).then(|| Error::VmFailed {
        vm_id: rec.info.vm_id.clone(),
        reason: rec
            .last_error
            .clone()
            .unwrap_or_else(|| format!("VM {} is in error", rec.info.vm_id)),
    })
}

fn is_disconnect(e: &Error) -> bool {
    match e {
        Error::Exec(inner) => matches!(**inner, ExecError::AgentDisconnected { .. }),
        _ => false,
    }
}

#[cfg(test)]
#[path = "facade_tests.rs"]
mod tests;

impl Drop for SmolVm {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        *self.agent_slot() = None;
        let stop = Duration::from_secs_f64(FACADE_STOP_TIMEOUT_SECS);
        let result = if self.owned {
            self.manager.delete(&self.vm_id)
        } else {
            self.manager.stop(&self.vm_id, stop).map(|_| ())
        };
        if let Err(e) = result {
            tracing::warn!(vm = %self.vm_id, error = %e, "cleanup on drop failed");
        }
    }
}
