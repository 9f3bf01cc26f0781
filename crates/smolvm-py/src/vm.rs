//! `_native.Vm`: one VM (the library's `SmolVm` facade) behind a lock, so several Python threads may
//! share it; every blocking call runs with the GIL released.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use pyo3::prelude::*;
use smolvm::NetworkMode;
use smolvm::{BackendKind, SmolVm, VmConfig, VmConfigSpec};

use crate::errors::{to_py, IntoPy};

/// Parses a config JSON object (spec field names) and validates it with the library's rules.
pub fn parse_config(json: &str) -> PyResult<VmConfig> {
    let spec: VmConfigSpec = serde_json::from_str(json)
        .map_err(|e| to_py(smolvm::ValidationError::new("config", e.to_string()).into()))?;
    spec.build().py_err()
}

/// Serialises any library value to JSON for the Python side.
pub fn to_json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(bad_json)
}

fn bad_json(e: serde_json::Error) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(format!("invalid JSON across the native boundary: {e}"))
}

/// Parses a backend choice (`None`, `"auto"`, `"qemu"`, `"firecracker"`).
pub fn parse_backend(backend: Option<&str>) -> PyResult<Option<BackendKind>> {
    match backend {
        None => Ok(None),
        Some(b) => BackendKind::parse_choice(b).py_err(),
    }
}

/// Parses a network choice (`auto`, `tap`, `user`, `none`) with the library's one parser; the error
/// names the Python argument, `network`.
pub fn parse_network(network: &str) -> PyResult<NetworkMode> {
    network
        .parse::<NetworkMode>()
        .map_err(|e| to_py(smolvm::ValidationError::new("network", e.rule).into()))
}

fn secs(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        to_py(
            smolvm::ValidationError::new(
                what,
                format!("must be a non-negative number of seconds, got {s}"),
            )
            .into(),
        )
    })
}

/// How often a blocking call interrupted by nothing looks for a pending signal (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `f` on a worker thread with the GIL released, checking for signals meanwhile, so Ctrl-C raises
/// `KeyboardInterrupt` at once instead of when `f` returns. On a signal the exception is returned at
/// once and `on_interrupt` later gets the worker's result, on another thread (to undo what it made).
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send + 'static,
    on_interrupt: impl FnOnce(T) + Send + 'static,
) -> PyResult<T> {
    if !on_main_thread() {
        // Python delivers signals to the main thread only: elsewhere nothing could interrupt the call,
        // so it runs right here, sparing the thread hop (a wake-up, costly on a loaded host).
        return Ok(py.allow_threads(f));
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the reaper below panicked; nothing left to tell.
        let _ = tx.send(f());
    });
    let mut rx = Some(rx);
    loop {
        let r = rx.take().expect("receiver kept across iterations");
        // Receiver is Send but not Sync: move it into the GIL-free closure and back out.
        let (got, r) = py.allow_threads(move || (r.recv_timeout(SIGNAL_POLL), r));
        match got {
            Ok(out) => return Ok(out),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    // The call goes on; whatever it returns is handed to `on_interrupt`.
                    std::thread::spawn(move || {
                        if let Ok(out) = r.recv() {
                            on_interrupt(out);
                        }
                    });
                    return Err(e);
                }
                rx = Some(r);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the worker thread of a smolvm call panicked",
                ))
            }
        }
    }
}

/// True on the process's initial thread, where Python runs signal handlers.
fn on_main_thread() -> bool {
    // SAFETY: getpid and gettid have no preconditions and cannot fail.
    unsafe { libc::gettid() == libc::getpid() }
}

/// One VM. Made by `Vm.create` (owned: dropped = stopped and deleted) or `Vm.from_id` (reconnected:
/// dropped = stopped). `close()` releases it without touching the VM.
#[pyclass(module = "smolvm._native")]
pub struct Vm {
    pub(crate) inner: Arc<RwLock<Option<SmolVm>>>,
    pub(crate) vm_id: String,
    pub(crate) owned: bool,
}

impl Vm {
    fn read(&self) -> PyResult<RwLockReadGuard<'_, Option<SmolVm>>> {
        Ok(self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }
    fn write(&self) -> RwLockWriteGuard<'_, Option<SmolVm>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    fn closed(&self) -> PyErr {
        to_py(smolvm::Error::InvalidState {
            vm_id: self.vm_id.clone(),
            status: smolvm::VmState::Stopped,
            operation: "use this handle (it was closed or the VM deleted)",
        })
    }
    /// Runs `f` on the open VM with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&SmolVm) -> smolvm::Result<T> + Send,
    ) -> PyResult<T> {
        let out = py.allow_threads(|| {
            let g = self.read()?;
            match g.as_ref() {
                Some(vm) => Ok(Some(f(vm))),
                None => Ok::<_, PyErr>(None),
            }
        })?;
        match out {
            Some(r) => r.py_err(),
            None => Err(self.closed()),
        }
    }
    /// Runs `f` on the open VM mutably with the GIL released.
    pub(crate) fn with_mut<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut SmolVm) -> smolvm::Result<T> + Send,
    ) -> PyResult<T> {
        let out = py.allow_threads(|| self.write().as_mut().map(f));
        match out {
            Some(r) => r.py_err(),
            None => Err(self.closed()),
        }
    }
}

#[pymethods]
impl Vm {
    /// Creates a VM (state `created`) from a config JSON, or auto-configures one from the default image
    /// when `config_json` is None. The handle owns the VM.
    #[staticmethod]
    #[pyo3(signature = (config_json=None, *, data_dir=None, socket_dir=None, backend=None,
        mem_size_mib=None, disk_size_mib=None, network="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        config_json: Option<&str>,
        data_dir: Option<PathBuf>,
        socket_dir: Option<PathBuf>,
        backend: Option<&str>,
        mem_size_mib: Option<u32>,
        disk_size_mib: Option<u64>,
        network: &str,
    ) -> PyResult<Vm> {
        let config = config_json.map(parse_config).transpose()?;
        let mut b = SmolVm::builder()
            .backend(parse_backend(backend)?)
            .network(parse_network(network)?);
        if let Some(c) = config {
            b = b.config(c);
        }
        if let Some(d) = data_dir {
            b = b.data_dir(d);
        }
        if let Some(d) = socket_dir {
            b = b.socket_dir(d);
        }
        if let Some(m) = mem_size_mib {
            b = b.mem_size_mib(m);
        }
        if let Some(m) = disk_size_mib {
            b = b.disk_size_mib(m);
        }
        let vm = py.allow_threads(|| b.build()).py_err()?;
        Ok(Vm {
            vm_id: vm.vm_id().to_string(),
            inner: Arc::new(RwLock::new(Some(vm))),
            owned: true,
        })
    }

    /// Reconnects to an existing VM (not owned).
    #[staticmethod]
    #[pyo3(signature = (vm_id, *, data_dir=None, socket_dir=None, backend=None, ssh_user="root",
        ssh_key_path=None))]
    fn from_id(
        py: Python<'_>,
        vm_id: &str,
        data_dir: Option<PathBuf>,
        socket_dir: Option<PathBuf>,
        backend: Option<&str>,
        ssh_user: &str,
        ssh_key_path: Option<PathBuf>,
    ) -> PyResult<Vm> {
        let backend = parse_backend(backend)?;
        let vm = py
            .allow_threads(|| {
                SmolVm::from_id(vm_id, data_dir.as_deref(), socket_dir.as_deref(), backend)
            })
            .py_err()?;
        let mut vm = vm.with_ssh_user(ssh_user);
        if let Some(k) = ssh_key_path {
            vm = vm.with_ssh_key(k);
        }
        Ok(Vm {
            vm_id: vm_id.to_string(),
            inner: Arc::new(RwLock::new(Some(vm))),
            owned: false,
        })
    }

    /// The VM id.
    #[getter]
    fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// True when this handle created the VM (and so deletes it on exit).
    #[getter]
    fn owned(&self) -> bool {
        self.owned
    }

    /// True until `close()` or `delete()`.
    #[getter]
    fn is_open(&self) -> PyResult<bool> {
        Ok(self.read()?.is_some())
    }

    /// The cached info as JSON.
    fn info_json(&self, py: Python<'_>) -> PyResult<String> {
        let info = self.with(py, |vm| Ok(vm.info().clone()))?;
        to_json(&info)
    }

    /// Starts the VM (no-op when running); returns the new info JSON.
    fn start(&self, py: Python<'_>, boot_timeout: f64) -> PyResult<String> {
        let t = secs(boot_timeout, "boot_timeout")?;
        let inner = Arc::clone(&self.inner);
        let stop_again = Arc::clone(&self.inner);
        let out = interruptible(
            py,
            move || {
                let mut g = inner.write().unwrap_or_else(|p| p.into_inner());
                g.as_mut()
                    .map(|vm| vm.start_with_timeout(t).map(|v| v.info().clone()))
            },
            move |out| {
                // Ctrl-C during start: once the boot finished, stop the VM again so nothing is left
                // running that the caller never got to see.
                if matches!(out, Some(Ok(_))) {
                    let mut g = stop_again.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(vm) = g.as_mut() {
                        let _ = vm.stop();
                    }
                }
            },
        )?;
        match out {
            Some(r) => to_json(&r.py_err()?),
            None => Err(self.closed()),
        }
    }

    /// Stops the VM gracefully (then kills after `timeout`); returns the new info JSON.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<String> {
        let t = secs(timeout, "timeout")?;
        let info = self.with_mut(py, |vm| Ok(vm.stop_with_timeout(t)?.info().clone()))?;
        to_json(&info)
    }

    /// Reloads the info from the state store; returns it as JSON.
    fn refresh(&self, py: Python<'_>) -> PyResult<String> {
        let info = self.with_mut(py, |vm| Ok(vm.refresh()?.info().clone()))?;
        to_json(&info)
    }

    /// Deletes the VM and all its resources; the handle is closed afterwards.
    fn delete(&self, py: Python<'_>) -> PyResult<()> {
        let r = py.allow_threads(|| {
            let mut g = self.write();
            let vm = g.as_mut()?;
            let r = vm.delete();
            if r.is_ok() {
                // Deleted: dropping the facade now does nothing more.
                *g = None;
            }
            Some(r)
        });
        match r {
            Some(r) => r.py_err(),
            None => Err(self.closed()),
        }
    }

    /// Releases the handle without stopping or deleting the VM. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.allow_threads(|| {
            if let Some(vm) = self.write().take() {
                vm.close();
            }
        })
    }

    /// Stops (reconnected) or deletes (owned) the VM now, as dropping the handle would. Idempotent.
    fn drop_now(&self, py: Python<'_>) {
        py.allow_threads(|| drop(self.write().take()))
    }

    /// Runs a shell command; returns `(exit_code, stdout, stderr)`.
    #[pyo3(signature = (command, timeout=None))]
    fn run(
        &self,
        py: Python<'_>,
        command: &str,
        timeout: Option<f64>,
    ) -> PyResult<(i32, String, String)> {
        let t = timeout.map(|s| secs(s, "timeout")).transpose()?;
        let inner = Arc::clone(&self.inner);
        let command = command.to_string();
        // Ctrl-C returns at once; the command itself ends in the guest when it finishes or its
        // timeout kills it (the agent connection stays usable).
        let out = interruptible(
            py,
            move || {
                let g = inner.read().unwrap_or_else(|p| p.into_inner());
                g.as_ref().map(|vm| vm.run_with_timeout(&command, t))
            },
            drop,
        )?;
        let r = match out {
            Some(r) => r.py_err()?,
            None => return Err(self.closed()),
        };
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    /// Benchmark baseline: runs `command` `n` times from Rust (no Python in the loop, GIL released)
    /// and returns the mean seconds per call, to compare with the same loop over `SmolVM.run`.
    fn time_run(&self, py: Python<'_>, command: &str, n: u32) -> PyResult<f64> {
        let n = n.max(1);
        self.with(py, |vm| {
            let began = std::time::Instant::now();
            for _ in 0..n {
                vm.run(command)?;
            }
            Ok(began.elapsed().as_secs_f64() / f64::from(n))
        })
    }

    /// Waits until SSH logins work, at most `timeout` seconds.
    fn wait_for_ssh(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let t = secs(timeout, "timeout")?;
        self.with(py, |vm| vm.wait_for_ssh(t))
    }

    /// The guest IP address.
    fn get_ip(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |vm| Ok(vm.get_ip()?.to_string()))
    }

    /// True when commands can run in this VM.
    fn can_run_commands(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |vm| Ok(vm.can_run_commands()))
    }

    /// The data directory of the VM's manager.
    #[getter]
    fn data_dir(&self, py: Python<'_>) -> PyResult<PathBuf> {
        self.with(py, |vm| Ok(vm.data_dir().to_path_buf()))
    }

    /// Replaces the VM's egress policy (JSON: `"open"`, `"none"` or an allow-list object); returns the
    /// new VmInfo as JSON.
    fn set_network_policy(&self, py: Python<'_>, policy_json: &str) -> PyResult<String> {
        let policy: smolvm::NetworkPolicy = serde_json::from_str(policy_json).map_err(|e| {
            to_py(smolvm::ValidationError::new("network_policy", e.to_string()).into())
        })?;
        let info = self.with_mut(py, |vm| Ok(vm.set_network_policy(policy)?.info().clone()))?;
        to_json(&info)
    }

    /// The egress policy and its drop counter, as JSON.
    fn network_policy_status(&self, py: Python<'_>) -> PyResult<String> {
        let status = self.with(py, |vm| vm.network_policy_status())?;
        to_json(&status)
    }

    /// Re-resolves the policy's domains now; the outcome as JSON.
    fn refresh_network_policy(&self, py: Python<'_>) -> PyResult<String> {
        let r = self.with(py, |vm| vm.refresh_network_policy())?;
        to_json(&r)
    }

    /// Sets persisted guest environment variables.
    fn set_env_vars(
        &self,
        py: Python<'_>,
        vars: std::collections::BTreeMap<String, String>,
    ) -> PyResult<()> {
        self.with(py, |vm| vm.with_agent(|c| Ok(c.set_env_vars(&vars)?)))
    }

    /// Removes persisted guest environment variables.
    fn unset_env_vars(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<()> {
        self.with(py, |vm| vm.with_agent(|c| Ok(c.unset_env_vars(&keys)?)))
    }

    /// The persisted guest environment variables.
    fn list_env_vars(
        &self,
        py: Python<'_>,
    ) -> PyResult<std::collections::BTreeMap<String, String>> {
        self.with(py, |vm| vm.with_agent(|c| Ok(c.list_env_vars()?)))
    }

    /// Copies a local file into the guest; returns the bytes copied.
    #[pyo3(signature = (local, remote, mode=None))]
    fn upload_file(
        &self,
        py: Python<'_>,
        local: PathBuf,
        remote: &str,
        mode: Option<u32>,
    ) -> PyResult<u64> {
        self.with(py, |vm| {
            vm.with_agent(|c| Ok(c.upload_file(&local, remote, mode)?))
        })
    }

    /// Copies a guest file to a local path; returns the bytes copied.
    fn download_file(&self, py: Python<'_>, remote: &str, local: PathBuf) -> PyResult<u64> {
        self.with(py, |vm| {
            vm.with_agent(|c| Ok(c.download_file(remote, &local)?))
        })
    }
}
