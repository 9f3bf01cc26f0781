//! QEMU backend (`qemu-system-x86_64 -M microvm`): argv builder, QMP client, launch.
//!
//! Per VM, in the socket directory: `<vm_id>.qmp` (QMP, the VM's `socket_path`) and `<vm_id>.agent`
//! (the agent's virtio-serial port). QEMU serves one QMP client at a time: hold a [`qmp::QmpClient`]
//! only for the duration of an operation.

pub(crate) mod argv;
mod launch;
pub(crate) mod migrate;
pub(crate) mod qmp;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::backend::{AgentEndpoint, Backend, BackendError, LaunchSpec};
use crate::config::BackendKind;
use crate::host::{Accelerator, HostCapabilities};
use crate::process::ProcessIdentity;

pub use argv::build_argv;
pub(crate) use qmp::{QmpClient, QmpError, QmpStatus};

/// How long QEMU may take to open its QMP socket after being started.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Per read/write limit of QMP operations.
pub(crate) const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The accelerator QEMU runs a VM with (the host layer's [`Accelerator`]) and QEMU's options for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QemuAccel {
    /// Hardware virtualization (`-accel kvm -cpu host`) or software emulation (`-accel tcg -cpu max`).
    pub accelerator: Accelerator,
    /// TCG only: host TSC frequency passed to the guest as `tsc_early_khz`, if known.
    pub tsc_khz: Option<u64>,
    /// TCG only: size of TCG's translation cache in MiB (`-accel tcg,tb-size=N`); `None` = QEMU's
    /// default, which reserves far more than a small guest's code needs and shows up as VMM memory.
    pub tb_size_mib: Option<u32>,
}

/// Environment variable overriding [`TCG_TB_SIZE_MIB`] (`0` = QEMU's own default).
pub(crate) const TCG_TB_SIZE_ENV: &str = "SMOLVM_TCG_TB_MIB";
/// The translation cache smolvm gives TCG guests, chosen by measurement (README, Performance): smaller
/// caches cost boot and exec time through retranslation, larger ones only cost host memory.
pub(crate) const TCG_TB_SIZE_MIB: u32 = 32;

/// The translation-cache size for new TCG VMs: `SMOLVM_TCG_TB_MIB` if set and valid, else the default.
fn tcg_tb_size() -> Option<u32> {
    match std::env::var(TCG_TB_SIZE_ENV)
        .ok()
        .map(|v| v.trim().parse::<u32>())
    {
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            tracing::warn!("{TCG_TB_SIZE_ENV} is not a number of MiB; using {TCG_TB_SIZE_MIB}");
            Some(TCG_TB_SIZE_MIB)
        }
        None => Some(TCG_TB_SIZE_MIB),
    }
}

impl QemuAccel {
    /// KVM (it has no options here).
    pub const KVM: QemuAccel = QemuAccel {
        accelerator: Accelerator::Kvm,
        tsc_khz: None,
        tb_size_mib: None,
    };

    /// TCG with these options.
    pub fn tcg(tsc_khz: Option<u64>, tb_size_mib: Option<u32>) -> QemuAccel {
        QemuAccel {
            accelerator: Accelerator::Tcg,
            tsc_khz,
            tb_size_mib,
        }
    }

    /// The host's accelerator (KVM where it is really usable, TCG otherwise) with the options smolvm
    /// uses for it.
    pub fn from_host(caps: &HostCapabilities) -> QemuAccel {
        match caps.accelerator {
            Accelerator::Kvm => QemuAccel::KVM,
            Accelerator::Tcg => QemuAccel::tcg(caps.tsc_khz, tcg_tb_size()),
        }
    }
}

/// Errors of the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Starting the QEMU process failed.
    #[error("could not start {}", binary.display())]
    Spawn {
        /// The binary that was run.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket path does not fit in `sun_path`.
    #[error(transparent)]
    SocketPathTooLong(#[from] crate::backend::SocketPathTooLong),
    /// A stale socket could not be removed (or is no socket).
    #[error(transparent)]
    RemoveSocket(#[from] crate::backend::RemoveSocketError),
    /// QEMU exited before it was ready.
    #[error("QEMU exited during startup; end of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// The VMM log.
        log: PathBuf,
        /// Its last lines from this start.
        tail: String,
    },
    /// QEMU ran but did not open its QMP socket in time.
    #[error(
        "QEMU did not open its QMP socket {} within {}s; end of {}:\n{tail}",
        socket.display(), timeout.as_secs_f64(), log.display()
    )]
    StartTimeout {
        /// The QMP socket.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
        /// The VMM log.
        log: PathBuf,
        /// Its last lines from this start.
        tail: String,
    },
    /// Restoring a snapshot failed (QEMU refuses a stream saved with other devices, capabilities or
    /// version, and exits).
    #[error("QEMU could not restore VM {vm_id} from the snapshot; end of {}:\n{tail}", log.display())]
    RestoreFailed {
        /// The VM being restored.
        vm_id: String,
        /// The VMM log.
        log: PathBuf,
        /// Its last lines from this start.
        tail: String,
        /// The step that failed.
        #[source]
        source: Box<QemuError>,
    },
    /// The VM's disk could not be opened to hand it to QEMU.
    #[error("cannot open the disk {}", path.display())]
    Disk {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot's migration stream could not be opened for a restore.
    #[error("cannot open the snapshot's migration stream {}", path.display())]
    Snapshot {
        /// The stream file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A QMP operation failed.
    #[error("QMP on {}", socket.display())]
    Qmp {
        /// The QMP socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: QmpError,
    },
}

impl From<QemuError> for crate::Error {
    fn from(e: QemuError) -> Self {
        BackendError::Qemu(e).into()
    }
}

/// Refuses socket paths longer than [`crate::backend::SUN_PATH_MAX`] bytes.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), QemuError> {
    Ok(crate::backend::check_socket_path(path)?)
}

/// The QEMU backend: one binary, one accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBackend {
    /// `qemu-system-x86_64` to run.
    pub binary: PathBuf,
    /// Accelerator for every VM it launches.
    pub accel: QemuAccel,
}

impl QemuBackend {
    /// A backend running `binary` with `accel`.
    pub fn new(binary: impl Into<PathBuf>, accel: QemuAccel) -> QemuBackend {
        QemuBackend {
            binary: binary.into(),
            accel,
        }
    }

    /// The installed QEMU with the accelerator the host supports; `Unavailable` if QEMU's
    /// prerequisites are not met.
    pub fn from_host(caps: &HostCapabilities) -> Result<QemuBackend, BackendError> {
        match &caps.tools.qemu_system {
            Some(q) => Ok(QemuBackend::new(q.path.clone(), QemuAccel::from_host(caps))),
            None => Err(BackendError::Unavailable {
                backend: BackendKind::Qemu,
                reason: caps.check_prerequisites(BackendKind::Qemu).join("; "),
            }),
        }
    }

    /// The argv [`launch`](Backend::launch) would run for `spec`.
    pub fn argv(&self, spec: &LaunchSpec) -> Vec<OsString> {
        build_argv(&self.binary, spec, self.accel)
    }

    /// [`argv`](Self::argv) with the root disk passed as inherited descriptors.
    pub(crate) fn argv_with_disk(
        &self,
        spec: &LaunchSpec,
        disk_fds: Option<argv::DiskFds>,
    ) -> Vec<OsString> {
        argv::build_argv_with_disk(&self.binary, spec, self.accel, disk_fds)
    }

    /// Opens a QMP session on a VM's control socket.
    pub fn qmp(&self, control_socket: &Path) -> Result<QmpClient, QemuError> {
        QmpClient::connect(control_socket, QMP_TIMEOUT).map_err(|source| QemuError::Qmp {
            socket: control_socket.to_path_buf(),
            source,
        })
    }

    /// The VM's run state (QMP `query-status`; the snapshot E2E test checks a paused VMM with it).
    pub fn query_status(&self, control_socket: &Path) -> Result<QmpStatus, QemuError> {
        self.qmp(control_socket)?
            .query_status()
            .map_err(|source| QemuError::Qmp {
                socket: control_socket.to_path_buf(),
                source,
            })
    }

    /// Runs `f` on a fresh QMP session of the VM at `control_socket`.
    fn with_qmp(
        &self,
        control_socket: &Path,
        f: impl FnOnce(&mut QmpClient) -> Result<(), QmpError>,
    ) -> Result<(), BackendError> {
        let mut q = self.qmp(control_socket)?;
        f(&mut q).map_err(|source| {
            QemuError::Qmp {
                socket: control_socket.to_path_buf(),
                source,
            }
            .into()
        })
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessIdentity, BackendError> {
        Ok(launch::launch(self, spec)?)
    }

    fn request_shutdown(&self, control_socket: &Path) -> Result<(), BackendError> {
        self.qmp(control_socket)?
            .system_powerdown()
            .map_err(|source| QemuError::Qmp {
                socket: control_socket.to_path_buf(),
                source,
            })?;
        Ok(())
    }

    fn pause(&self, control_socket: &Path) -> Result<(), BackendError> {
        self.with_qmp(control_socket, migrate::stop)
    }

    fn resume(&self, control_socket: &Path) -> Result<(), BackendError> {
        self.with_qmp(control_socket, migrate::cont)
    }

    fn save_state(&self, control_socket: &Path, dir: &Path) -> Result<(), BackendError> {
        self.with_qmp(control_socket, |q| {
            migrate::save(q, dir, migrate::MIGRATION_TIMEOUT)
        })
    }

    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<ProcessIdentity, BackendError> {
        Ok(migrate::restore(self, spec, dir)?)
    }

    fn vmm_version(&self) -> Result<String, BackendError> {
        crate::backend::version_line(&self.binary).map_err(|source| {
            QemuError::Spawn {
                binary: self.binary.clone(),
                source,
            }
            .into()
        })
    }

    fn agent_endpoint(&self, socket_dir: &Path, vm_id: &str) -> AgentEndpoint {
        AgentEndpoint::UnixSocket(socket_dir.join(format!("{vm_id}.agent")))
    }

    fn control_socket(&self, socket_dir: &Path, vm_id: &str) -> PathBuf {
        socket_dir.join(format!("{vm_id}.qmp"))
    }
}
