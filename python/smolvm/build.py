"""Guest images: :class:`ImageBuilder` and :data:`SSH_BOOT_ARGS`.

Alpine packages cannot be fetched on every host, so ``build_alpine_ssh*`` build smolvm's default image
under that name: Debian's cloud kernel, a busybox userland, the dropbear SSH server and the smolvm
guest agent as ``/init``. The returned ``(kernel, rootfs)`` pair boots on its own: a
:class:`~smolvm.VMConfig` naming just these two files gets the image's initramfs automatically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

from . import _native

__all__ = ["ImageBuilder", "SSH_BOOT_ARGS"]

#: Kernel command line for images built by :class:`ImageBuilder` (includes ``init=/init``).
SSH_BOOT_ARGS: str = _native.ssh_boot_args()


class ImageBuilder:
    """Builds and caches guest images under ``data_dir/images`` (default data directory when None).

    A build with unchanged inputs returns the cached image at once.
    """

    def __init__(self, data_dir: Optional[Union[str, Path]] = None) -> None:
        self.data_dir = None if data_dir is None else Path(data_dir).expanduser()

    def _build(self, name: str, rootfs_size_mb: int, **kw: Optional[str]) -> Tuple[Path, Path]:
        kernel, rootfs = _native.build_image(
            name=name,
            rootfs_size_mib=int(rootfs_size_mb),
            data_dir=None if self.data_dir is None else str(self.data_dir),
            **kw,
        )
        return Path(kernel), Path(rootfs)

    def build_alpine_ssh(
        self,
        name: str = "alpine-ssh",
        ssh_password: Optional[str] = "smolvm",
        rootfs_size_mb: int = 512,
    ) -> Tuple[Path, Path]:
        """Builds an SSH-capable image where root logs in with ``ssh_password`` (and smolvm's key).
        Returns ``(kernel_path, rootfs_path)``."""
        return self._build(name, rootfs_size_mb, ssh_password=ssh_password)

    def build_alpine_ssh_key(
        self,
        public_key: str,
        name: str = "alpine-ssh-key",
        rootfs_size_mb: int = 512,
    ) -> Tuple[Path, Path]:
        """Builds an SSH-capable image with ``public_key`` as root's authorized key (no password).
        Returns ``(kernel_path, rootfs_path)``."""
        return self._build(name, rootfs_size_mb, public_key=public_key)

    def __repr__(self) -> str:
        return f"ImageBuilder(data_dir={None if self.data_dir is None else str(self.data_dir)!r})"
