//! The image the benchmark boots: smolvm's default image (built once and cached), as the facade's
//! auto-configuration uses it, or a named image already in the cache (e.g. `minimal`, to measure the
//! minimal kernel against its raw-VMM floor).

use std::path::Path;

use smolvm::BackendKind;
use smolvm::VmConfig;
use smolvm::{ImageBuilder, ImageOptions};

/// The config for `backend` of the image `name` (`None`: the default image, built if needed) from the
/// image cache under `data_dir`.
pub(super) fn image_config(
    data_dir: &Path,
    name: Option<&str>,
    backend: BackendKind,
) -> smolvm::Result<VmConfig> {
    let builder = ImageBuilder::new(data_dir);
    let image = match name {
        Some(n) => builder.get(n)?,
        None => builder.build(&ImageOptions::default())?,
    };
    Ok(image.vm_config(backend).backend(Some(backend)).build()?)
}
