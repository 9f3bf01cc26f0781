"""E2E: pause/resume, snapshots, forks and start-from-snapshot from Python, and the spec's retained
disk example (a disk kept by ``retain_disk_on_delete`` is reused by the next VM with that id)."""

import pytest

from smolvm import SmolVM, VMConfig, VMState
from smolvm.build import SSH_BOOT_ARGS
from smolvm.exceptions import SnapshotError

pytestmark = pytest.mark.e2e


def test_pause_snapshot_fork_and_restore(vm_env):
    with SmolVM() as vm:
        assert vm.run("echo base > /root/f; sync").ok
        assert vm.pause().status == VMState.PAUSED
        assert vm.resume().status == VMState.RUNNING
        snap = vm.snapshot("s1")
        assert snap["name"] == "s1"
        forks = vm.fork(2)
        try:
            assert len({f.vm_id for f in forks} | {vm.vm_id}) == 3
            uuids = {f.run("cat /proc/sys/kernel/random/uuid").output for f in forks}
            assert len(uuids) == 2, "forks share their random state"
            assert forks[0].run("echo only0 > /root/g; sync").ok
            assert forks[1].run("cat /root/g").exit_code != 0
            assert vm.run("cat /root/g").exit_code != 0
            assert vm.run("cat /root/f").output == "base"
        finally:
            for f in forks:
                f.delete()
        restored = SmolVM.from_snapshot("s1")
        try:
            assert restored.status == VMState.RUNNING
            assert restored.vm_id != vm.vm_id
            assert restored.run("cat /root/f").output == "base"
        finally:
            restored.delete()
        with pytest.raises(SnapshotError, match="nope"):
            SmolVM.from_snapshot("nope")


def test_retained_disk_is_reused_by_the_next_vm_with_that_id(vm_env, image):
    kernel, rootfs = image
    config = VMConfig(
        vm_id="stateful-vm",
        kernel_path=kernel,
        rootfs_path=rootfs,
        boot_args=SSH_BOOT_ARGS,
        retain_disk_on_delete=True,
    )
    with SmolVM(config) as vm:
        assert vm.run("echo kept > /root/k; sync").ok
    # Later, a new VM with the same id (without the flag) reuses the disk, as the spec's example says.
    config2 = VMConfig(
        vm_id="stateful-vm",
        kernel_path=kernel,
        rootfs_path=rootfs,
        boot_args=SSH_BOOT_ARGS,
    )
    with SmolVM(config2) as vm:
        assert vm.run("cat /root/k").output == "kept"
