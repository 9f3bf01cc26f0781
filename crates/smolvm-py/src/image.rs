//! `_native.build_image`: the library's `ImageBuilder` (spec: `build_alpine_ssh`, `build_alpine_ssh_key`).

use std::path::PathBuf;

use pyo3::prelude::*;
use smolvm::Dirs;
use smolvm::ImageBuilder;

use crate::errors::IntoPy;

/// Builds (or returns from the cache) an SSH-capable image under `data_dir/images/<name>`; returns
/// `(kernel, rootfs)`. The kernel sits in the image directory, so a config naming only these two files
/// still gets the image's initramfs.
#[pyfunction]
#[pyo3(signature = (*, name, rootfs_size_mib, data_dir=None, ssh_password=None, public_key=None))]
pub fn build_image(
    py: Python<'_>,
    name: &str,
    rootfs_size_mib: u64,
    data_dir: Option<PathBuf>,
    ssh_password: Option<String>,
    public_key: Option<String>,
) -> PyResult<(PathBuf, PathBuf)> {
    py.allow_threads(|| {
        let dirs = Dirs::resolve(data_dir.as_deref(), None)?;
        let builder = ImageBuilder::new(&dirs.data_dir);
        let img = match public_key {
            Some(k) => builder.build_alpine_ssh_key(&k, name, rootfs_size_mib)?,
            None => builder.build_alpine_ssh(name, ssh_password.as_deref(), rootfs_size_mib)?,
        };
        Ok::<_, smolvm::Error>((img.kernel, img.rootfs))
    })
    .py_err()
}
