//! Default guest image: kernel from the distribution, generated initramfs, rootfs, cache.
