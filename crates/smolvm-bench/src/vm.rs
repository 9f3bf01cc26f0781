//! One benchmark VM: cold-started through the manager with every phase timed on one clock, and deleted
//! when its guard is dropped (on success, on error and on unwinding alike), as the facade does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smolvm_protocol::Ready;

use super::baseline::since;
use super::watch::CreationWatch;
use super::BenchError;
use smolvm::AgentClient;
use smolvm::VmConfig;
use smolvm::{CreateOptions, NetworkMode, SmolVmManager};

/// Deletes its VM when dropped.
#[derive(Debug)]
pub struct VmGuard {
    manager: Arc<SmolVmManager>,
    vm_id: String,
    /// The agent connection that saw the guest become ready.
    pub client: Option<AgentClient>,
    /// The VMM's pid while running.
    pub pid: Option<u32>,
}

impl VmGuard {
    /// Guards the existing VM `vm_id`.
    pub fn new(manager: Arc<SmolVmManager>, vm_id: &str) -> VmGuard {
        VmGuard {
            manager,
            vm_id: vm_id.to_string(),
            client: None,
            pid: None,
        }
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The agent connection, or an error naming the step.
    pub fn agent(&self, step: &str) -> Result<&AgentClient, BenchError> {
        self.client.as_ref().ok_or_else(|| {
            BenchError::step(
                step,
                smolvm::Error::InvalidState {
                    vm_id: self.vm_id.clone(),
                    status: smolvm::VmState::Running,
                    operation: "run commands (start returned no agent connection: the image lacks init=/init)",
                },
            )
        })
    }

    /// Deletes now, timed.
    pub fn delete(mut self) -> Result<Duration, BenchError> {
        self.client = None;
        let t = Instant::now();
        let r = self.manager.delete(&self.vm_id);
        let elapsed = t.elapsed();
        // Whatever happened, Drop must not try again.
        self.vm_id.clear();
        r.map_err(|e| BenchError::step("delete", e))?;
        Ok(elapsed)
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        self.client = None;
        if self.vm_id.is_empty() {
            return;
        }
        if let Err(e) = self.manager.delete(&self.vm_id) {
            tracing::warn!(vm = %self.vm_id, error = %e, "benchmark cleanup: delete failed");
        }
    }
}

/// The phases of one cold start, all from one `Instant` clock.
#[derive(Debug, Clone)]
pub struct ColdSample {
    /// `create` (state row, disk clone).
    pub create: Duration,
    /// From calling `start` to the VMM's QMP socket appearing, if seen.
    pub vmm_launch: Option<Duration>,
    /// From calling `start` to its return (guest agent Ready received).
    pub start: Duration,
    /// The first command (`true` through `sh -lc`, as the facade's `run`).
    pub first_command: Duration,
    /// From calling `create` to the first command's result.
    pub total: Duration,
    /// The agent's Ready message.
    pub ready: Option<Ready>,
    /// CPU time the VMM process (all its threads) had used when `start` returned.
    pub vmm_cpu_at_ready: Option<Duration>,
}

impl ColdSample {
    /// `start` minus the VMM launch: VMM launched -> guest agent ready.
    pub fn guest_ready(&self) -> Duration {
        self.start
            .saturating_sub(self.vmm_launch.unwrap_or_default())
    }
}

/// create -> start -> first command, timed. The VM keeps running in the returned guard.
pub fn cold_start(
    manager: &Arc<SmolVmManager>,
    config: &VmConfig,
    boot_timeout: Duration,
) -> Result<(ColdSample, VmGuard), BenchError> {
    let vm_id = config.vm_id().to_string();
    let step = |what: &str| format!("cold start of {vm_id}: {what}");
    let backend_kind = manager
        .resolve(config.backend())
        .map_err(|e| BenchError::step(step("backend"), e))?;
    let backend = manager
        .backend_impl(backend_kind)
        .map_err(|e| BenchError::step(step("backend"), e))?;
    let control = backend.control_socket(manager.socket_dir(), &vm_id);
    // Set up before the clock starts; inotify costs nothing while it waits.
    let watch = control.parent().and_then(|dir| {
        let name = control.file_name()?.to_string_lossy().into_owned();
        CreationWatch::start(dir, vec![name]).ok()
    });

    let t0 = Instant::now();
    let opts = CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    };
    let created = manager.create_with(config, &opts);
    let t_created = Instant::now();
    created.map_err(|e| BenchError::step(step("create"), e))?;
    let mut guard = VmGuard::new(Arc::clone(manager), &vm_id);

    let started = manager.start_inner(&vm_id, boot_timeout);
    let t_started = Instant::now();
    let cpu = started
        .as_ref()
        .ok()
        .and_then(|(info, _)| info.pid)
        .and_then(super::mem::cpu_time_ms);
    let seen = watch.map(CreationWatch::finish).unwrap_or_default();
    let (info, client) = started.map_err(|e| BenchError::step(step("start"), e))?;
    guard.client = client;
    guard.pid = info.pid;

    let result = guard
        .agent(&step("first command"))?
        .run("true", None)
        .map_err(|e| BenchError::step(step("first command"), e))?;
    let t_done = Instant::now();
    if result.exit_code != 0 {
        return Err(BenchError::CommandFailed {
            step: step("first command"),
            exit_code: result.exit_code,
            stderr: result.stderr,
        });
    }
    let ready = guard.client.as_ref().map(|c| c.ready().clone());
    Ok((
        ColdSample {
            create: t_created - t0,
            vmm_launch: since(&seen, &control, t_created),
            start: t_started - t_created,
            first_command: t_done - t_started,
            total: t_done - t0,
            ready,
            vmm_cpu_at_ready: cpu.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        },
        guard,
    ))
}
