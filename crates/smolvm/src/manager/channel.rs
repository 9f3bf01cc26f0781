//! The manager's side of each QEMU VM's channel owner (see [`crate::channel`]): started with the VMM,
//! stopped with it, restarted when it died while the VM runs, and the stored agent endpoint that
//! every client connects to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SmolVmManager;
use crate::backend::{AgentEndpoint, LaunchSpec};
use crate::channel::{self, OwnerSpec};
use crate::config::BackendKind;
use crate::error::Result;
use crate::info::VmState;
use crate::process::ProcessIdentity;
use crate::state::VmRecord;

/// How long a restarted owner waits for the agent (the guest is already up, so this is generous).
const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl SmolVmManager {
    /// Starts the channel owner of a VM whose VMM `vmm` was just launched from `spec`, and returns the
    /// endpoint clients use: the owner's socket for QEMU, the VMM's own endpoint otherwise (or when
    /// this build has no owner binary). `ready_timeout` bounds the owner's wait for the agent.
    pub(super) fn open_channel(
        &self,
        rec: &VmRecord,
        spec: &LaunchSpec,
        vmm: ProcessIdentity,
        ready_timeout: Duration,
    ) -> Result<AgentEndpoint> {
        if rec.backend != BackendKind::Qemu || !rec.info.config.boots_agent() || !self.channel_owner
        {
            return Ok(spec.agent.clone());
        }
        let Some(binary) = channel::binary(&self.data_dir().join("bin"))? else {
            tracing::debug!("no channel owner in this build: clients share QEMU's socket in turn");
            return Ok(spec.agent.clone());
        };
        let dir = spec.agent.path().parent().unwrap_or(self.socket_dir());
        let listen = channel::socket_path(dir, &rec.info.vm_id);
        self.spawn_owner(
            &rec.info.vm_id,
            binary,
            spec.agent.path(),
            &listen,
            vmm,
            ready_timeout,
        )?;
        Ok(AgentEndpoint::UnixSocket(listen))
    }

    fn spawn_owner(
        &self,
        vm_id: &str,
        binary: PathBuf,
        upstream: &Path,
        listen: &Path,
        vmm: ProcessIdentity,
        ready_timeout: Duration,
    ) -> Result<ProcessIdentity> {
        let vm_dir = self.vm_dir(vm_id);
        let spec = OwnerSpec {
            binary,
            upstream: upstream.to_path_buf(),
            listen: listen.to_path_buf(),
            vmm,
            ready_timeout,
        };
        let owner = channel::spawn(
            &spec,
            &channel::pid_file(&vm_dir),
            &vm_dir.join("channel.log"),
        )?;
        tracing::debug!(vm = %vm_id, pid = owner.pid, "channel owner started");
        Ok(owner)
    }

    /// Kills the VM's channel owner (by its recorded PID) and removes its socket. Idempotent.
    pub(super) fn close_channel(&self, rec: &VmRecord) {
        let listen = rec
            .agent_socket
            .clone()
            .filter(|p| is_owner_socket(p))
            .unwrap_or_else(|| channel::socket_path(self.socket_dir(), &rec.info.vm_id));
        channel::stop(&channel::pid_file(&self.vm_dir(&rec.info.vm_id)), &listen);
    }

    /// The endpoint clients of a running VM connect to: the one recorded when it started (so a
    /// manager opened with another socket directory still finds it), else the backend's default.
    pub(crate) fn agent_endpoint_of(&self, rec: &VmRecord) -> Result<AgentEndpoint> {
        let computed = self
            .backend_impl(rec.backend)?
            .agent_endpoint(self.socket_dir(), &rec.info.vm_id);
        Ok(stored_endpoint(rec.agent_socket.as_deref(), computed))
    }

    /// The agent endpoint of VM `vm_id` as recorded (see [`agent_endpoint_of`](Self::agent_endpoint_of)).
    pub fn agent_endpoint(&self, vm_id: &str) -> Result<AgentEndpoint> {
        self.agent_endpoint_of(&self.record(vm_id)?)
    }

    /// Makes sure a running QEMU VM's channel owner lives: starts a new one if it died (crashed or
    /// killed), under the VM's lock. Returns true if it started one. A crashed owner never affects
    /// the VM; the agent cancels what the dead owner's clients had running when the new one greets.
    pub fn ensure_channel(&self, vm_id: &str) -> Result<bool> {
        let rec = self.record(vm_id)?;
        if !self.owner_missing(&rec) {
            return Ok(false);
        }
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        if !self.owner_missing(&rec) {
            return Ok(false);
        }
        let (Some(listen), Some(vmm)) = (rec.agent_socket.clone(), rec.process) else {
            return Ok(false);
        };
        let Some(binary) = channel::binary(&self.data_dir().join("bin"))? else {
            return Ok(false);
        };
        let upstream = qemu_socket_for(&listen, &rec.info.vm_id);
        tracing::info!(vm = %vm_id, "the channel owner is gone; starting a new one");
        self.close_channel(&rec);
        self.spawn_owner(
            vm_id,
            binary,
            &upstream,
            &listen,
            vmm,
            RESTART_READY_TIMEOUT,
        )?;
        Ok(true)
    }

    /// True for a running (or paused) VM whose clients go through an owner that is not alive.
    fn owner_missing(&self, rec: &VmRecord) -> bool {
        let served = matches!(rec.info.status, VmState::Running | VmState::Paused)
            && rec.process.is_some_and(|p| p.is_alive())
            && rec.agent_socket.as_deref().is_some_and(is_owner_socket);
        served
            && !channel::recorded(&channel::pid_file(&self.vm_dir(&rec.info.vm_id)))
                .is_some_and(|p| p.is_alive())
    }
}

/// True if `path` is an owner's socket (as opposed to a VMM's own agent socket).
fn is_owner_socket(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|p| p.ends_with(channel::SOCKET_SUFFIX))
}

/// QEMU's agent socket next to the owner's socket `listen` (the owner's name with QEMU's suffix).
fn qemu_socket_for(listen: &Path, vm_id: &str) -> PathBuf {
    listen.with_file_name(format!("{vm_id}.agent"))
}

/// The endpoint for a recorded agent socket: the recorded path with the backend's kind of endpoint.
fn stored_endpoint(stored: Option<&Path>, computed: AgentEndpoint) -> AgentEndpoint {
    match (stored, computed) {
        (None, c) => c,
        (Some(p), AgentEndpoint::UnixSocket(_)) => AgentEndpoint::UnixSocket(p.to_path_buf()),
        (Some(p), AgentEndpoint::FirecrackerVsock { port, .. }) => {
            AgentEndpoint::FirecrackerVsock {
                uds_path: p.to_path_buf(),
                port,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_socket_wins_over_the_managers_socket_dir() {
        let computed = AgentEndpoint::UnixSocket("/other/sockets/vm1.agent".into());
        assert_eq!(
            stored_endpoint(Some(Path::new("/run/a/vm1.chan")), computed.clone()),
            AgentEndpoint::UnixSocket("/run/a/vm1.chan".into())
        );
        assert_eq!(stored_endpoint(None, computed.clone()), computed);
        let fc = AgentEndpoint::FirecrackerVsock {
            uds_path: "/other/vm1.vsock".into(),
            port: 52,
        };
        assert_eq!(
            stored_endpoint(Some(Path::new("/run/a/vm1.vsock")), fc),
            AgentEndpoint::FirecrackerVsock {
                uds_path: "/run/a/vm1.vsock".into(),
                port: 52
            }
        );
    }

    #[test]
    fn the_owner_socket_sits_next_to_qemus() {
        assert!(is_owner_socket(Path::new("/s/vm1.chan")));
        assert!(!is_owner_socket(Path::new("/s/vm1.agent")));
        assert_eq!(
            qemu_socket_for(Path::new("/run/a/vm1.chan"), "vm1"),
            PathBuf::from("/run/a/vm1.agent")
        );
    }
}
