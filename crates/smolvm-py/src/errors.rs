//! `smolvm::Error` -> the Python exception class of its kind (module `smolvm.exceptions`).

use pyo3::prelude::*;

/// The exception class name for each `smolvm::Error::kind()`, one to one.
pub const KINDS: &[(&str, &str)] = &[
    ("validation", "ValidationError"),
    ("vm_not_found", "VMNotFoundError"),
    ("vm_already_exists", "VMAlreadyExistsError"),
    ("invalid_state", "InvalidStateError"),
    ("operation_timeout", "OperationTimeoutError"),
    ("network", "NetworkError"),
    ("backend", "BackendError"),
    ("prerequisites", "PrerequisitesError"),
    ("state", "StateStoreError"),
    ("image", "ImageError"),
    ("exec", "ExecError"),
    ("snapshot", "SnapshotError"),
    ("io", "HostIOError"),
];

/// The (kind, class name) table, so the Python tests can check that every kind has its class.
#[pyfunction]
pub fn error_kinds() -> Vec<(&'static str, &'static str)> {
    KINDS.to_vec()
}

/// The error's message followed by its whole cause chain (`outer: cause: root cause`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        // thiserror's `transparent` and wrappers that repeat their source would print it twice.
        if !msg.ends_with(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = c.source();
    }
    msg
}

/// Converts a library error into the matching `smolvm.exceptions` instance (with `.message` and
/// `.kind`). If that module cannot be imported, a `RuntimeError` with the same message.
pub fn to_py(e: smolvm::Error) -> PyErr {
    let kind = e.kind();
    let msg = chain(&e);
    let field = match &e {
        smolvm::Error::Validation(v) => Some(v.field.clone()),
        _ => None,
    };
    Python::with_gil(|py| {
        let class = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| *c)
            .unwrap_or("SmolVMError");
        let made = py
            .import_bound("smolvm.exceptions")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| cls.call1((msg.clone(),)))
            .and_then(|exc| {
                exc.setattr("kind", kind)?;
                if let Some(f) = &field {
                    exc.setattr("field", f)?;
                }
                Ok(exc)
            });
        match made {
            Ok(exc) => PyErr::from_value_bound(exc),
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
        }
    })
}

/// `Result` of the library mapped to a Python exception.
pub trait IntoPy<T> {
    /// Maps the error with [`to_py`].
    fn py_err(self) -> PyResult<T>;
}

impl<T, E: Into<smolvm::Error>> IntoPy<T> for Result<T, E> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(|e| to_py(e.into()))
    }
}
