//! Image removal that knows about VMs: an image is in use while a VM in the state store boots from it
//! (its kernel, initrd or rootfs path lies in the image's directory).

use crate::config::{BackendKind, VmConfigSpec};
use crate::error::Result;
use crate::image::{uses_image, GuestImage, ImageBuilder};

use super::SmolVmManager;

impl SmolVmManager {
    /// The config of a VM booting the cached image `image` (default: the default image, built on first
    /// use) with the resolved backend (`backend`, else the manager's choice, else auto) and every other
    /// field at its default: the auto-configuration of the facade and the CLI. Slow the first time
    /// (image build): validate user input before calling it.
    pub fn image_config(
        &self,
        image: Option<&str>,
        backend: Option<BackendKind>,
    ) -> Result<VmConfigSpec> {
        let backend = self.resolve(backend)?;
        let img = ImageBuilder::new(self.data_dir()).image_for_vm(image)?;
        Ok(img.vm_config(backend).backend(Some(backend)))
    }

    /// The ids of the VMs (any state) whose kernel, initrd or rootfs comes from `img`.
    pub fn image_users(&self, img: &GuestImage) -> Result<Vec<String>> {
        Ok(self
            .list_vms(None)?
            .into_iter()
            .filter(|vm| {
                let c = &vm.config;
                uses_image(img, c.kernel_path())
                    || uses_image(img, c.rootfs_path())
                    || c.initrd_path().is_some_and(|p| uses_image(img, p))
            })
            .map(|vm| vm.vm_id)
            .collect())
    }

    /// Removes the cached image `name` of this manager's data directory, refusing while a VM uses it.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let builder = ImageBuilder::new(self.data_dir());
        let img = builder.get(name)?;
        let users = self.image_users(&img)?;
        Ok(builder.remove(name, &users)?)
    }
}
