//! The image the benchmark boots: smolvm's default image (built once and cached), as the facade's
//! auto-configuration uses it.

use std::path::Path;

use crate::config::BackendKind;
use crate::image::{ImageBuilder, ImageOptions};
use crate::VmConfig;

/// The default image's config for `backend`, from the image cache under `data_dir`.
pub fn default_config(data_dir: &Path, backend: BackendKind) -> crate::Result<VmConfig> {
    let image = ImageBuilder::new(data_dir).build(&ImageOptions::default())?;
    Ok(image.vm_config(backend).backend(Some(backend)).build()?)
}
