//! `_native.Manager`: the library's `SmolVmManager` (spec: vm-manager). Infos cross as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use smolvm::CreateOptions;
use smolvm::{SmolVmManager, VmState};

use crate::errors::IntoPy;
use crate::vm::{parse_backend, parse_config, parse_network, to_json};

/// One manager over a data directory and a socket directory.
#[pyclass(module = "smolvm._native")]
pub struct Manager {
    inner: SmolVmManager,
}

#[pymethods]
impl Manager {
    /// Opens the state store (default directories when None) and probes the host.
    #[new]
    #[pyo3(signature = (data_dir=None, socket_dir=None, backend=None))]
    fn new(
        py: Python<'_>,
        data_dir: Option<PathBuf>,
        socket_dir: Option<PathBuf>,
        backend: Option<&str>,
    ) -> PyResult<Manager> {
        let backend = parse_backend(backend)?;
        let inner = py
            .allow_threads(|| {
                SmolVmManager::new(data_dir.as_deref(), socket_dir.as_deref(), backend)
            })
            .py_err()?;
        Ok(Manager { inner })
    }

    /// State database directory.
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.inner.data_dir().to_path_buf()
    }
    /// Socket directory.
    #[getter]
    fn socket_dir(&self) -> PathBuf {
        self.inner.socket_dir().to_path_buf()
    }
    /// Isolated disk directory.
    #[getter]
    fn disk_dir(&self) -> PathBuf {
        self.inner.disk_dir().to_path_buf()
    }
    /// The resolved backend name (an error when its prerequisites are missing).
    fn backend(&self) -> PyResult<&'static str> {
        Ok(self.inner.backend().py_err()?.as_str())
    }

    /// Creates a VM from a config JSON; returns the info JSON.
    #[pyo3(signature = (config_json, network="auto"))]
    fn create(&self, py: Python<'_>, config_json: &str, network: &str) -> PyResult<String> {
        let config = parse_config(config_json)?;
        let opts = CreateOptions {
            network: parse_network(network)?,
            ..CreateOptions::default()
        };
        let info = py
            .allow_threads(|| self.inner.create_with(&config, &opts))
            .py_err()?;
        to_json(&info)
    }
    /// Starts a VM; returns the info JSON.
    fn start(&self, py: Python<'_>, vm_id: &str, boot_timeout: f64) -> PyResult<String> {
        let t = Duration::from_secs_f64(boot_timeout.max(0.0));
        let info = py.allow_threads(|| self.inner.start(vm_id, t)).py_err()?;
        to_json(&info)
    }
    /// Stops a VM; returns the info JSON.
    fn stop(&self, py: Python<'_>, vm_id: &str, timeout: f64) -> PyResult<String> {
        let t = Duration::from_secs_f64(timeout.max(0.0));
        let info = py.allow_threads(|| self.inner.stop(vm_id, t)).py_err()?;
        to_json(&info)
    }
    /// Deletes a VM.
    fn delete(&self, py: Python<'_>, vm_id: &str) -> PyResult<()> {
        py.allow_threads(|| self.inner.delete(vm_id)).py_err()
    }
    /// One VM's info JSON.
    fn get(&self, py: Python<'_>, vm_id: &str) -> PyResult<String> {
        let info = py.allow_threads(|| self.inner.get(vm_id)).py_err()?;
        to_json(&info)
    }
    /// Info JSON of every VM (optionally in one status).
    #[pyo3(signature = (status=None))]
    fn list_vms(&self, py: Python<'_>, status: Option<&str>) -> PyResult<String> {
        let status: Option<VmState> = status.map(str::parse).transpose().py_err()?;
        let infos = py.allow_threads(|| self.inner.list_vms(status)).py_err()?;
        to_json(&infos)
    }
    /// `(uid, gid)` the VM's VMM runs as when smolvm runs as root (its own unprivileged user), else
    /// `None` (the VMM runs as the caller).
    fn vmm_user(&self, py: Python<'_>, vm_id: &str) -> PyResult<Option<(u32, u32)>> {
        let user = py.allow_threads(|| self.inner.vmm_user(vm_id)).py_err()?;
        Ok(user.map(|u| (u.uid, u.gid)))
    }
    /// Marks running VMs whose VMM is gone as error; returns their ids.
    fn reconcile(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.allow_threads(|| self.inner.reconcile()).py_err()
    }
    /// Ready-to-run SSH commands.
    #[pyo3(signature = (vm_id, ssh_user="root", key_path=None, public_host=None))]
    fn get_ssh_commands(
        &self,
        py: Python<'_>,
        vm_id: &str,
        ssh_user: &str,
        key_path: Option<PathBuf>,
        public_host: Option<&str>,
    ) -> PyResult<BTreeMap<String, String>> {
        py.allow_threads(|| {
            self.inner
                .get_ssh_commands(vm_id, ssh_user, key_path.as_deref(), public_host)
        })
        .py_err()
    }
    /// Missing prerequisites of the manager's backend (empty when all good).
    fn check_prerequisites(&self, py: Python<'_>) -> Vec<String> {
        py.allow_threads(|| self.inner.check_prerequisites())
    }
}
