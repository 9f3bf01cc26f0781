"""Test setup. Unit tests need nothing. End-to-end tests (marked ``e2e``) run only with
``SMOLVM_E2E=1``; then a missing prerequisite FAILS them (never skips).

For E2E runs the whole pytest process moves into a fresh network namespace of its own at start
(``unshare(CLONE_NEWNET)`` before any thread exists; it vanishes with the process), so the TAP
devices and nft rules that VMs get never touch the host's network. Every test gets its own data
directory and socket directory (through ``SMOLVM_DATA_DIR`` and ``TMPDIR``, so the spec's examples
run exactly as written); the built image is shared through a symlinked ``images`` directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

E2E = os.environ.get("SMOLVM_E2E") == "1"
CLONE_NEWNET = 0x40000000
_SHARED = Path(tempfile.mkdtemp(prefix="smolvm-py-")) if E2E else None
_PROBLEMS: list = []


def _enter_own_netns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        _PROBLEMS.append(f"unshare(CLONE_NEWNET) failed: errno {ctypes.get_errno()} (needs root)")
        return
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: boots real VMs; runs only with SMOLVM_E2E=1")
    if not E2E:
        return
    if os.geteuid() != 0:
        _PROBLEMS.append("E2E tests need root")
    for tool in ["qemu-system-x86_64", "ip", "nft", "ssh", "ssh-keygen", "mkfs.ext4"]:
        if shutil.which(tool) is None:
            _PROBLEMS.append(f"prerequisite {tool!r} is not installed")
    if not _PROBLEMS:
        _prepare_images()
    if not _PROBLEMS:
        _enter_own_netns()


def _prepare_images() -> None:
    # The kernel comes from the distribution mirror (apt-get download), which the namespace cannot
    # reach: build the images the tests use first, in the host namespace. Later builds in the tests
    # reuse the prepared kernel and need no network.
    from smolvm import ImageBuilder, _native

    try:
        ImageBuilder(_SHARED).build_alpine_ssh()
        _native.build_image(name="default", rootfs_size_mib=512, data_dir=str(_SHARED))
    except Exception as e:  # noqa: BLE001 - reported as a failure of every E2E test
        _PROBLEMS.append(f"building the test images failed: {e}")


def pytest_unconfigure(config):
    # The session's images, data and socket directories (every VM in them was deleted by its test).
    if _SHARED is not None:
        shutil.rmtree(_SHARED, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if E2E:
        return
    skip = pytest.mark.skip(reason="set SMOLVM_E2E=1 to boot VMs (needs root)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_images():
    """The image cache shared by every test, with the default image and one built by the spec's
    ``build_alpine_ssh`` call (built once)."""
    if _PROBLEMS:
        pytest.fail("; ".join(_PROBLEMS))
    images = _SHARED / "images"
    images.mkdir(exist_ok=True)
    return images


@pytest.fixture
def vm_env(shared_images, monkeypatch):
    """Per-test data and socket directories (short paths: Unix socket names are limited to 108
    bytes), a HOME with an SSH key pair, and the shared image cache."""
    base = Path(tempfile.mkdtemp(prefix="t", dir=_SHARED))
    data, tmp, home = base / "d", base / "s", base / "h"
    for d in (data, tmp, home / ".ssh"):
        d.mkdir(parents=True)
    (data / "images").symlink_to(shared_images)
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", str(home / ".ssh" / "id_rsa")], check=True)
    monkeypatch.setenv("SMOLVM_DATA_DIR", str(data))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("HOME", str(home))
    tempfile.tempdir = None  # let Python's own tempfile see the new TMPDIR too
    yield data
    tempfile.tempdir = None
    _delete_leftovers(data)


def _delete_leftovers(data: Path) -> None:
    # A failing test may leave VMs behind: delete them so no QEMU outlives the test.
    from smolvm import SmolVMManager

    try:
        m = SmolVMManager(data_dir=data)
        for info in m.list_vms():
            try:
                m.delete(info.vm_id)
            except Exception:  # noqa: BLE001
                pass
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture
def image(vm_env):
    """``(kernel, rootfs)`` of an image built by the spec's ``ImageBuilder().build_alpine_ssh()``."""
    from smolvm import ImageBuilder

    return ImageBuilder().build_alpine_ssh()
