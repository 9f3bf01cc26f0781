//! The image the benchmark boots: the one the facade's auto-configuration uses (the default image, or
//! its minimal-kernel variant once that kernel is compiled: `SMOLVM_AUTO_KERNEL`), or a named image
//! already in the cache (e.g. `minimal`, to measure the minimal kernel against its raw-VMM floor).

use std::path::Path;

use smolvm::BackendKind;
use smolvm::VmConfig;
use smolvm::{AutoKernel, ImageBuilder};

/// The name and config for `backend` of the image `name` (`None`: auto-configuration's image, built if
/// needed) from the image cache under `data_dir`.
pub(super) fn image_config(
    data_dir: &Path,
    name: Option<&str>,
    backend: BackendKind,
) -> smolvm::Result<(String, VmConfig)> {
    let builder = ImageBuilder::new(data_dir);
    let image = match name {
        Some(n) => builder.get(n)?,
        None => builder.auto_image(AutoKernel::from_env()?)?,
    };
    let config = image.vm_config(backend).backend(Some(backend)).build()?;
    Ok((image.name, config))
}
