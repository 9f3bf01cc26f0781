"""E2E: every code example of the spec runs as written (placeholder paths replaced by a built image),
and the lines the spec says raise do raise the documented error."""

import os
from pathlib import Path

import pydantic
import pytest

import smolvm
from smolvm import SmolVM, VMConfig, VMState
from smolvm.exceptions import VMNotFoundError

import spec_examples as ex

pytestmark = pytest.mark.e2e


def run(code, image, tmp=None, ns=None):
    kernel, rootfs = image
    for placeholder in ["/path/to/vmlinux", "/path/to/kernel"]:
        code = code.replace(placeholder, str(kernel))
    for placeholder in ["/path/to/rootfs.ext4", "/path/to/alpine-ssh.ext4", "/shared/rootfs.ext4"]:
        code = code.replace(placeholder, str(rootfs))
    if tmp is not None:
        code = code.replace('"/custom/', f'"{tmp}/custom/')
    g = ns if ns is not None else {}
    # Names the spec's continuation snippets use without importing them again.
    g.setdefault("SmolVM", SmolVM)
    g.setdefault("VMConfig", VMConfig)
    g.setdefault("VMState", VMState)
    g.setdefault("Path", Path)
    g.setdefault("ValidationError", pydantic.ValidationError)
    exec(compile(code, "<spec example>", "exec"), g)
    return g


def no_vms_left(data_dir):
    return smolvm.SmolVMManager(data_dir=data_dir).list_vms() == []


@pytest.mark.parametrize(
    "name",
    ["CONFIG_BASIC", "CONFIG_CUSTOM", "CONFIG_SSH_ENV", "CONFIG_SHARED", "CONFIG_PERSISTENT", "CONFIG_QEMU"],
)
def test_config_examples(name, image):
    g = run(getattr(ex, name), image)
    assert isinstance(g["config"], VMConfig)


def test_config_immutability(image):
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        g = {}
        run(ex.CONFIG_IMMUTABLE, image, ns=g)
    g = run(ex.CONFIG_IMMUTABLE_AFTER, image, ns=g)
    assert g["new_config"].vcpu_count == 4 and g["config"].vcpu_count == 2


def test_config_with_smolvm_and_image_builder(image, vm_env, capsys):
    run(ex.CONFIG_WITH_SMOLVM, image)
    run(ex.CONFIG_IMAGE_BUILDER, image)
    out = capsys.readouterr().out
    assert "Hello from configured VM" in out and "ID=" in out
    assert no_vms_left(vm_env)


@pytest.mark.parametrize(
    "name",
    ["INFO_ACCESS", "INFO_STATUS", "INFO_NETWORK", "INFO_CONFIG", "INFO_PSUTIL", "INFO_SOCKET",
     "INFO_PERSIST", "INFO_IMMUTABLE", "INFO_REFRESH", "INFO_COMPARE"],
)
def test_info_examples(name, image, vm_env, capsys):
    run(getattr(ex, name), image)
    out = capsys.readouterr().out
    if name == "INFO_STATUS":
        assert "VM is running" in out and "Hostname: vm-" in out
    if name == "INFO_REFRESH":
        assert "Current status: running" in out
    if name == "INFO_PSUTIL":
        assert "Process name: qemu" in out
    if name == "INFO_PERSIST":
        saved = out.split("saved to ")[1].strip()
        assert '"status": "running"' in Path(saved).read_text()
        os.remove(saved)
    assert no_vms_left(vm_env)


def test_info_outside_context_manager(image, vm_env, capsys):
    # Default boot args (no init=/init): the image pair must still boot.
    g = run(ex.INFO_OUTSIDE_CM, image)
    assert "Status after start: running" in capsys.readouterr().out
    # close() kept the VM: it is still there for from_id.
    # The handle must stay referenced: a reconnected VM is stopped when its handle is collected.
    vm = run(ex.LIFECYCLE_REFRESH, image)["vm"]
    assert vm.status == VMState.RUNNING
    assert vm.run("echo via-ssh").output == "via-ssh"
    vm.stop()
    vm.delete()
    assert g["vm"].vm_id == "my-vm"


def test_info_reconnect_after_context_manager_raises_not_found(image, vm_env):
    with pytest.raises(VMNotFoundError):
        run(ex.INFO_RECONNECT, image)


def test_lifecycle_examples(image, vm_env, capsys):
    run(ex.LIFECYCLE_STEPS, image)
    run(ex.LIFECYCLE_CM, image)
    g = run(ex.LIFECYCLE_RECONNECT, image)
    g["vm2"].stop().delete()
    run(ex.LIFECYCLE_MANUAL, image)
    run(ex.LIFECYCLE_WAIT_SSH, image)
    out = capsys.readouterr().out
    assert "Status: VMState.CREATED" in out and "VM started: VMState.RUNNING" in out
    assert "VM stopped: VMState.STOPPED" in out and "Status: VMState.RUNNING" in out
    assert "root" in out


def test_long_running_vm_across_sessions(image, vm_env, capsys):
    run(ex.LIFECYCLE_LONG_RUNNING_1, image)
    run(ex.LIFECYCLE_LONG_RUNNING_2, image)
    run(ex.LIFECYCLE_LONG_RUNNING_3, image)
    assert "Status: VMState.RUNNING" in capsys.readouterr().out
    assert no_vms_left(vm_env)


def test_overview_examples(image, vm_env, capsys):
    run(ex.OVERVIEW_AUTO, image)
    run(ex.OVERVIEW_SIZED, image)
    g = run(ex.OVERVIEW_MANUAL, image)
    cfg = g["config"].model_copy(update={"vm_id": "my-vm-2"})
    run(ex.OVERVIEW_CM_CONFIG, image, ns={"config": cfg})
    run(ex.OVERVIEW_MANUAL_LIFECYCLE, image, ns={"config": cfg})
    run(ex.OVERVIEW_ERRORS, image)
    run(ex.OVERVIEW_PROPERTIES, image)
    out = capsys.readouterr().out
    assert "Linux" in out and "Mem:" in out and "Command failed:" in out and "True" in out
    assert no_vms_left(vm_env)


def test_manager_examples(image, vm_env, tmp_path, capsys):
    run(ex.MANAGER_CONSTRUCT, image, tmp=tmp_path)
    run(ex.MANAGER_LIFECYCLE, image)
    out = capsys.readouterr().out
    assert "Created VM: test-vm with IP" in out and "test-vm: " in out
    assert no_vms_left(vm_env)
