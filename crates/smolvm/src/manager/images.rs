//! Image removal that knows about VMs: an image is in use while a VM in the state store boots from it
//! (its kernel, initrd or rootfs path lies in the image's directory).

use crate::error::Result;
use crate::image::{uses_image, GuestImage, ImageBuilder};

use super::SmolVmManager;

impl SmolVmManager {
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
