//! VM rows: create (with leases), read, update, delete.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

use crate::config::{BackendKind, VmConfig, VmConfigSpec};
use crate::info::{NetworkMode, VmInfo, VmState};
use crate::process::ProcessIdentity;
use crate::state::error::{Fail, StateError};
use crate::state::leases::{self, RawLease};
use crate::state::StateStore;

/// What the manager records once a VMM process is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVmm {
    /// The VMM process (pid plus start time, so a reused pid is never mistaken for it).
    pub process: ProcessIdentity,
    /// The VMM's control socket (QMP or Firecracker API).
    pub socket_path: PathBuf,
    /// Host side of the agent channel, if the VM has one.
    pub agent_socket: Option<PathBuf>,
}

/// Everything the store knows about one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    /// The public view (id, status, config, network, pid, control socket).
    pub info: VmInfo,
    /// The backend the VM was created for.
    pub backend: BackendKind,
    /// The VMM process while running.
    pub process: Option<ProcessIdentity>,
    /// Host side of the agent channel while running.
    pub agent_socket: Option<PathBuf>,
    /// The VM's own disk (isolated mode), once created.
    pub disk_path: Option<PathBuf>,
    /// When the row was created.
    pub created_at: SystemTime,
    /// When the row last changed.
    pub updated_at: SystemTime,
    /// Why the VM last failed, if it did.
    pub last_error: Option<String>,
    /// The user (and group) id its VMM runs as when smolvm runs as root; `None` for a VM created
    /// before the store leased them (it gets one when it starts).
    pub vmm_id: Option<u32>,
}

impl StateStore {
    /// Records a new VM in state `created`, in one write transaction that also leases its VMM user id
    /// and its network when `network` names a mode: in TAP mode the lowest free guest IP with TAP name
    /// and MAC, in user mode QEMU's fixed user-network addresses; in both an SSH host port. `None`: no
    /// network.
    ///
    /// Fails with [`StateError::VmAlreadyExists`] if the id is taken and [`StateError::Exhausted`] if
    /// no IP, port or VMM user id is free; nothing is recorded then.
    pub fn create_vm(
        &mut self,
        config: &VmConfig,
        backend: BackendKind,
        network: Option<NetworkMode>,
    ) -> Result<VmRecord, StateError> {
        let id = config.vm_id();
        let json = serde_json::to_string(config).map_err(|source| StateError::Encode {
            vm_id: id.to_string(),
            source,
        })?;
        let (range, probe) = (self.opts.ssh_port_range.clone(), self.opts.probe_host_ports);
        let vmm_ids = self.opts.vmm_ids.clone();
        self.write(|tx| {
            if exists(tx, id)? {
                return Err(StateError::VmAlreadyExists(id.to_string()).into());
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO vms (id, status, backend, config, created_at, updated_at)
                 VALUES (?1, 'created', ?2, ?3, ?4, ?4)",
                params![id, backend.as_str(), json, now],
            )
            .map_err(|e| match e.sqlite_error_code() {
                // Backstop only: the check above already ran under the write lock.
                Some(ErrorCode::ConstraintViolation) => {
                    Fail::from(StateError::VmAlreadyExists(id.to_string()))
                }
                _ => Fail::from(e),
            })?;
            if let Some(mode) = network {
                leases::allocate(tx, id, mode, &range, probe)?;
            }
            crate::state::vmm_users::allocate(tx, id, &vmm_ids)?;
            load(tx, id)
        })
    }

    /// The VM `id`, or `None` if there is none.
    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>, StateError> {
        self.read(|conn| {
            let sql = format!("{SELECT} WHERE v.id = ?1");
            let raw = conn.query_row(&sql, [id], RawVm::from_row).optional()?;
            Ok(raw.map(RawVm::into_record).transpose()?)
        })
    }

    /// All VMs, or those in `status`, in creation order.
    pub fn list_vms(&self, status: Option<VmState>) -> Result<Vec<VmRecord>, StateError> {
        self.read(|conn| {
            let sql = format!("{SELECT} WHERE ?1 IS NULL OR v.status = ?1 ORDER BY v.seq");
            let mut stmt = conn.prepare(&sql)?;
            let raws = stmt
                .query_map([status.map(VmState::as_str)], RawVm::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(raws
                .into_iter()
                .map(RawVm::into_record)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Marks `id` running with its VMM process and sockets, and clears the last error.
    pub fn set_running(&mut self, id: &str, vmm: &RunningVmm) -> Result<VmRecord, StateError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE vms SET status = 'running', pid = ?2, pid_start_time = ?3, socket_path = ?4,
                     agent_socket = ?5, last_error = NULL, updated_at = ?6
                 WHERE id = ?1",
                params![
                    id,
                    vmm.process.pid,
                    i64::try_from(vmm.process.start_time).unwrap_or(i64::MAX),
                    path_bytes(&vmm.socket_path),
                    vmm.agent_socket.as_deref().map(path_bytes),
                    now_ms()
                ],
            )?;
            found(n, id)?;
            load(tx, id)
        })
    }

    /// Sets the status and the last error (`None` clears it). Any status but `running` and `paused` also
    /// forgets the process and sockets, which belong to a VMM that is gone.
    pub fn set_status(
        &mut self,
        id: &str,
        status: VmState,
        error: Option<&str>,
    ) -> Result<VmRecord, StateError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE vms SET status = ?2, last_error = ?3, updated_at = ?4,
                     pid = iif(?2 IN ('running', 'paused'), pid, NULL),
                     pid_start_time = iif(?2 IN ('running', 'paused'), pid_start_time, NULL),
                     socket_path = iif(?2 IN ('running', 'paused'), socket_path, NULL),
                     agent_socket = iif(?2 IN ('running', 'paused'), agent_socket, NULL)
                 WHERE id = ?1",
                params![id, status.as_str(), error, now_ms()],
            )?;
            found(n, id)?;
            load(tx, id)
        })
    }

    /// Marks `id` as `error` with `reason` only if its row still says running with the VMM `process`
    /// (`None`: no recorded process). A compare-and-set, so it needs no VM lock: a concurrent start
    /// (new process) or stop (status no longer running) is never overwritten. Returns the record if it
    /// changed it, `None` if the row had moved on (or is gone).
    pub fn mark_vmm_gone(
        &mut self,
        id: &str,
        process: Option<ProcessIdentity>,
        reason: &str,
    ) -> Result<Option<VmRecord>, StateError> {
        let (pid, start) = match process {
            Some(p) => (
                Some(p.pid),
                Some(i64::try_from(p.start_time).unwrap_or(i64::MAX)),
            ),
            None => (None, None),
        };
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE vms SET status = 'error', last_error = ?4, updated_at = ?5, pid = NULL,
                     pid_start_time = NULL, socket_path = NULL, agent_socket = NULL
                 WHERE id = ?1 AND status IN ('running', 'paused') AND pid IS ?2 AND pid_start_time IS ?3",
                params![id, pid, start, reason, now_ms()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            load(tx, id).map(Some)
        })
    }

    /// Records (or with `None` forgets) the VM's own disk image.
    pub fn set_disk_path(&mut self, id: &str, path: Option<&Path>) -> Result<VmRecord, StateError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE vms SET disk_path = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, path.map(path_bytes), now_ms()],
            )?;
            found(n, id)?;
            load(tx, id)
        })
    }

    /// Replaces the VM's stored config (same id): used for the settings that may change after create,
    /// such as the egress policy.
    pub fn set_config(&mut self, config: &VmConfig) -> Result<VmRecord, StateError> {
        let id = config.vm_id();
        let json = serde_json::to_string(config).map_err(|source| StateError::Encode {
            vm_id: id.to_string(),
            source,
        })?;
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE vms SET config = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, json, now_ms()],
            )?;
            found(n, id)?;
            load(tx, id)
        })
    }

    /// Deletes the VM's row; its leases and forwards go with it (ON DELETE CASCADE), which releases
    /// them for reuse. Returns whether a row was deleted.
    pub fn delete_vm(&mut self, id: &str) -> Result<bool, StateError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM vms WHERE id = ?1", [id])? > 0))
    }
}

/// Fails with VmNotFound unless `id` exists.
pub(crate) fn require_exists(conn: &Connection, id: &str) -> Result<(), Fail> {
    if exists(conn, id)? {
        Ok(())
    } else {
        Err(StateError::VmNotFound(id.to_string()).into())
    }
}

fn exists(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM vms WHERE id = ?1)",
        [id],
        |r| r.get(0),
    )
}

fn found(changed: usize, id: &str) -> Result<(), Fail> {
    if changed == 0 {
        return Err(StateError::VmNotFound(id.to_string()).into());
    }
    Ok(())
}

fn load(conn: &Connection, id: &str) -> Result<VmRecord, Fail> {
    let sql = format!("{SELECT} WHERE v.id = ?1");
    let raw = conn
        .query_row(&sql, [id], RawVm::from_row)
        .optional()?
        .ok_or_else(|| StateError::VmNotFound(id.to_string()))?;
    Ok(raw.into_record()?)
}

/// One query for a VM and its lease, so a reader never sees a half-deleted VM.
const SELECT: &str = "SELECT v.id, v.status, v.backend, v.config, v.pid, v.pid_start_time,
        v.socket_path, v.agent_socket, v.disk_path, v.created_at, v.updated_at, v.last_error,
        l.guest_ip, l.gateway_ip, l.netmask, l.tap_device, l.guest_mac, l.ssh_host_port, l.mode,
        u.uid
    FROM vms v LEFT JOIN leases l ON l.vm_id = v.id LEFT JOIN vmm_users u ON u.vm_id = v.id";

/// A VM row as stored, before parsing.
struct RawVm {
    id: String,
    status: String,
    backend: String,
    config: String,
    pid: Option<i64>,
    pid_start_time: Option<i64>,
    socket_path: Option<Vec<u8>>,
    agent_socket: Option<Vec<u8>>,
    disk_path: Option<Vec<u8>>,
    created_at: i64,
    updated_at: i64,
    last_error: Option<String>,
    lease: Option<RawLease>,
    vmm_id: Option<u32>,
}

impl RawVm {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawVm> {
        let guest_ip: Option<String> = r.get(12)?;
        let lease = match guest_ip {
            Some(guest_ip) => Some(RawLease {
                guest_ip,
                gateway_ip: r.get(13)?,
                netmask: r.get(14)?,
                tap_device: r.get(15)?,
                guest_mac: r.get(16)?,
                ssh_host_port: r.get(17)?,
                mode: r.get(18)?,
            }),
            None => None,
        };
        Ok(RawVm {
            id: r.get(0)?,
            status: r.get(1)?,
            backend: r.get(2)?,
            config: r.get(3)?,
            pid: r.get(4)?,
            pid_start_time: r.get(5)?,
            socket_path: r.get(6)?,
            agent_socket: r.get(7)?,
            disk_path: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            last_error: r.get(11)?,
            lease,
            vmm_id: r.get(19)?,
        })
    }

    fn into_record(self) -> Result<VmRecord, StateError> {
        let id = self.id;
        let bad = |column: &'static str, e: Box<dyn std::error::Error + Send + Sync>| {
            StateError::bad_row(&id, column, e)
        };
        let status: VmState = self
            .status
            .parse()
            .map_err(|e| bad("status", Box::new(e)))?;
        let backend: BackendKind = self
            .backend
            .parse()
            .map_err(|e| bad("backend", Box::new(e)))?;
        // Deserialised as a spec and validated without checking files: a VM whose kernel was removed
        // since must still be listable and deletable.
        let spec: VmConfigSpec =
            serde_json::from_str(&self.config).map_err(|e| bad("config", Box::new(e)))?;
        let config = spec
            .build_unchecked_paths()
            .map_err(|e| bad("config", Box::new(e)))?;
        if config.vm_id() != id {
            let msg = format!("config names VM {:?}", config.vm_id());
            return Err(bad("config", msg.into()));
        }
        let process = match (self.pid, self.pid_start_time) {
            (Some(pid), Some(start)) => Some(ProcessIdentity {
                pid: u32::try_from(pid).map_err(|e| bad("pid", Box::new(e)))?,
                start_time: u64::try_from(start).map_err(|e| bad("pid_start_time", Box::new(e)))?,
            }),
            _ => None,
        };
        let network = self.lease.map(|l| l.into_network(&id)).transpose()?;
        let created_at =
            time_from_ms(self.created_at).ok_or_else(|| bad("created_at", "negative".into()))?;
        let updated_at =
            time_from_ms(self.updated_at).ok_or_else(|| bad("updated_at", "negative".into()))?;
        let socket_path = self.socket_path.map(path_from);
        Ok(VmRecord {
            info: VmInfo {
                vm_id: id,
                status,
                config,
                network,
                pid: process.map(|p| p.pid),
                socket_path,
            },
            backend,
            process,
            agent_socket: self.agent_socket.map(path_from),
            disk_path: self.disk_path.map(path_from),
            created_at,
            updated_at,
            last_error: self.last_error,
            vmm_id: self.vmm_id,
        })
    }
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn path_from(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn time_from_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}
