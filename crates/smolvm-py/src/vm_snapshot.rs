//! `Vm` methods for pause/resume, snapshots and forks (the library's `facade_snapshot`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use pyo3::prelude::*;
use smolvm::SmolVm;

use crate::errors::IntoPy;
use crate::vm::{parse_backend, to_json, Vm};

#[pymethods]
impl Vm {
    /// Pauses the running VM (vCPUs stop, memory stays); returns the info JSON.
    fn pause(&self, py: Python<'_>) -> PyResult<String> {
        let info = self.with_mut(py, |vm| Ok(vm.pause()?.info().clone()))?;
        to_json(&info)
    }

    /// Resumes the paused VM; returns the info JSON.
    fn resume(&self, py: Python<'_>) -> PyResult<String> {
        let info = self.with_mut(py, |vm| Ok(vm.resume()?.info().clone()))?;
        to_json(&info)
    }

    /// Takes the snapshot `name` (memory, device state, disk); returns its info JSON.
    fn snapshot(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        let info = self.with_mut(py, |vm| vm.snapshot(name))?;
        to_json(&info)
    }

    /// Forks the VM into `n` new running VMs, each owned by the handle returned for it.
    fn fork(&self, py: Python<'_>, n: usize) -> PyResult<Vec<Vm>> {
        let vms = self.with_mut(py, |vm| vm.fork(n))?;
        Ok(vms.into_iter().map(Vm::owning).collect())
    }

    /// A new running VM started from the snapshot `name` (owned).
    #[staticmethod]
    #[pyo3(signature = (name, vm_id=None, *, data_dir=None, socket_dir=None, backend=None))]
    fn from_snapshot(
        py: Python<'_>,
        name: &str,
        vm_id: Option<String>,
        data_dir: Option<PathBuf>,
        socket_dir: Option<PathBuf>,
        backend: Option<&str>,
    ) -> PyResult<Vm> {
        let mut b = SmolVm::builder().backend(parse_backend(backend)?);
        if let Some(id) = vm_id {
            b = b.vm_id(id);
        }
        if let Some(d) = data_dir {
            b = b.data_dir(d);
        }
        if let Some(d) = socket_dir {
            b = b.socket_dir(d);
        }
        let vm = py.allow_threads(|| b.from_snapshot(name)).py_err()?;
        Ok(Vm::owning(vm))
    }
}

impl Vm {
    /// A handle owning `vm` (deleted when the handle is collected without `close()`).
    pub(crate) fn owning(vm: SmolVm) -> Vm {
        Vm {
            vm_id: vm.vm_id().to_string(),
            inner: Arc::new(RwLock::new(Some(vm))),
            owned: true,
        }
    }
}
