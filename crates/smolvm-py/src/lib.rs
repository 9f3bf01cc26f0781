//! `smolvm._native`: the PyO3 binding of the smolvm library, used by the pure-Python package `smolvm`
//! (python/smolvm). Kept thin on purpose: configs and infos cross the boundary as JSON (the library's
//! serde shapes, validated by pydantic on the Python side and by `VmConfigSpec::build` here), every
//! blocking call releases the GIL, and every `smolvm::Error` becomes the exception class of its kind
//! from `smolvm.exceptions`.

// PyO3 0.22's #[pyfunction]/#[pymethods] expansion converts PyErr into PyErr, which this clippy flags
// at every function returning PyResult; the code itself has no such conversion.
#![allow(clippy::useless_conversion)]

mod errors;
mod image;
mod manager;
mod vm;
mod vm_snapshot;

use pyo3::prelude::*;

/// Validates a config (JSON of the spec's `VMConfig` fields plus `initrd_path`) with the Rust rules and
/// returns the validated config as JSON (with a generated `vm_id` when none was given).
#[pyfunction]
fn validate_config(config_json: &str) -> PyResult<String> {
    let config = vm::parse_config(config_json)?;
    vm::to_json(&config)
}

/// The library's `SSH_BOOT_ARGS`.
#[pyfunction]
fn ssh_boot_args() -> &'static str {
    smolvm::SSH_BOOT_ARGS
}

/// The library's `DEFAULT_BOOT_ARGS`.
#[pyfunction]
fn default_boot_args() -> &'static str {
    smolvm::DEFAULT_BOOT_ARGS
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(ssh_boot_args, m)?)?;
    m.add_function(wrap_pyfunction!(default_boot_args, m)?)?;
    m.add_function(wrap_pyfunction!(image::build_image, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_kinds, m)?)?;
    m.add_class::<vm::Vm>()?;
    m.add_class::<manager::Manager>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
