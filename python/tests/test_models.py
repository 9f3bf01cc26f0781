"""Models, enums, results and exceptions: no VM needed."""

import json
from pathlib import Path

import pydantic
import pytest

import smolvm
from smolvm import (
    SSH_BOOT_ARGS,
    CommandResult,
    ImageBuilder,
    NetworkConfig,
    SmolVM,
    SmolVMManager,
    VMConfig,
    VMInfo,
    VMState,
    _native,
    exceptions,
)
from smolvm.build import SSH_BOOT_ARGS as B_SSH, ImageBuilder as B_IB
from smolvm.types import NetworkConfig as T_NC, VMConfig as T_VC, VMInfo as T_VI, VMState as T_VS
from smolvm.vm import SmolVMManager as V_M


@pytest.fixture
def files(tmp_path):
    k, r = tmp_path / "vmlinux", tmp_path / "rootfs.ext4"
    k.write_bytes(b"k")
    r.write_bytes(b"r")
    return k, r


def test_public_names_are_where_the_spec_imports_them():
    assert (T_VC, T_VI, T_VS, T_NC) == (VMConfig, VMInfo, VMState, NetworkConfig)
    assert V_M is SmolVMManager and B_IB is ImageBuilder and B_SSH == SSH_BOOT_ARGS
    assert "init=/init" in SSH_BOOT_ARGS
    for name in ["SmolVM", "VMConfig", "VMInfo", "VMState", "NetworkConfig", "CommandResult",
                 "ImageBuilder", "SSH_BOOT_ARGS", "SmolVMManager"]:
        assert hasattr(smolvm, name), name


def test_vmconfig_defaults_and_generated_id(files):
    k, r = files
    c = VMConfig(kernel_path=k, rootfs_path=r)
    assert c.vcpu_count == 2 and c.mem_size_mib == 512
    assert c.boot_args == "console=ttyS0 reboot=k panic=1 pci=off" == _native.default_boot_args()
    assert c.backend is None and c.disk_mode == "isolated" and c.retain_disk_on_delete is False
    assert c.env_vars == {} and c.initrd_path is None
    assert c.vm_id.startswith("vm-") and len(c.vm_id) == 11
    assert VMConfig(kernel_path=k, rootfs_path=r).vm_id != c.vm_id
    assert VMConfig(vm_id=None, kernel_path=k, rootfs_path=r).vm_id.startswith("vm-")


def test_vmconfig_is_frozen_and_model_copy_works(files):
    k, r = files
    c = VMConfig(kernel_path=k, rootfs_path=r)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        c.vcpu_count = 4
    n = c.model_copy(update={"vcpu_count": 4})
    assert n.vcpu_count == 4 and c.vcpu_count == 2 and n.vm_id == c.vm_id


def test_vmconfig_refuses_unknown_keywords_and_wrong_types(files):
    k, r = files
    with pytest.raises(pydantic.ValidationError, match="vcpus"):
        VMConfig(kernel_path=k, rootfs_path=r, vcpus=2)
    with pytest.raises(pydantic.ValidationError, match="vcpu_count"):
        VMConfig(kernel_path=k, rootfs_path=r, vcpu_count="two")
    with pytest.raises(pydantic.ValidationError, match="env_vars"):
        VMConfig(kernel_path=k, rootfs_path=r, env_vars=["A=1"])
    # A numeric string is a number (pydantic's lax mode), as a Python user expects.
    assert VMConfig(kernel_path=k, rootfs_path=r, vcpu_count="4").vcpu_count == 4


def test_vmstate_is_a_str_enum_with_the_spec_values():
    # The spec's four values, then smolvm's extension for pause().
    assert [s.value for s in VMState] == ["created", "running", "stopped", "error", "paused"]
    assert VMState.RUNNING == "running" and isinstance(VMState.RUNNING, str)
    assert str(VMState.CREATED) == "VMState.CREATED" == f"{VMState.CREATED}"


def test_vminfo_and_network_are_frozen(files):
    k, r = files
    info = VMInfo(
        vm_id="a", status=VMState.CREATED, config=VMConfig(vm_id="a", kernel_path=k, rootfs_path=r),
        network=NetworkConfig(guest_ip="172.16.0.2", gateway_ip="172.16.0.1", netmask="255.255.255.0",
                              tap_device="tap0", guest_mac="02:00:00:00:00:01", ssh_host_port=2200),
    )
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        info.status = VMState.STOPPED
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        info.network.guest_ip = "1.2.3.4"
    assert info.pid is None and info.socket_path is None


def test_vminfo_from_the_store_accepts_files_that_are_gone(tmp_path):
    doc = {
        "vm_id": "gone", "status": "error", "network": None, "pid": None, "socket_path": None,
        "config": {"vm_id": "gone", "kernel_path": str(tmp_path / "k"), "rootfs_path": str(tmp_path / "r")},
    }
    info = VMInfo._from_native(json.dumps(doc))
    assert info.status is VMState.ERROR and info.config.kernel_path == tmp_path / "k"


def test_command_result():
    r = CommandResult(0, "  hi\n", "")
    assert r.ok and r.output == "hi" and r.exit_code == 0 and r.stderr == ""
    assert not CommandResult(3, "", "bad").ok
    assert "exit_code=0" in repr(r)


def test_every_rust_error_kind_has_its_own_exception_class():
    kinds = dict(_native.error_kinds())
    assert set(kinds) == set(exceptions.KIND_TO_CLASS)
    classes = set()
    for kind, name in kinds.items():
        cls = getattr(exceptions, name)
        assert cls is exceptions.KIND_TO_CLASS[kind]
        assert issubclass(cls, exceptions.SmolVMError)
        classes.add(cls)
    assert len(classes) == len(kinds)
    e = exceptions.OperationTimeoutError("boot timed out")
    assert e.message == "boot timed out" and isinstance(e, TimeoutError)
    # A backend the host cannot run is reported as missing prerequisites; `except BackendError`
    # written before that distinction still catches it.
    assert issubclass(exceptions.PrerequisitesError, exceptions.BackendError)


def test_native_errors_become_the_right_class_with_message_and_field():
    with pytest.raises(exceptions.ValidationError) as e:
        _native.validate_config(json.dumps({"kernel_path": "/nonexistent/k", "rootfs_path": "/nonexistent/r"}))
    assert e.value.field == "kernel_path" and e.value.kind == "validation"
    assert "/nonexistent/k" in e.value.message and "No such file" in e.value.message  # cause kept


def test_manager_and_from_id_on_an_empty_store(tmp_path):
    with SmolVMManager(data_dir=tmp_path / "d", socket_dir=tmp_path / "s") as m:
        assert m.data_dir == tmp_path / "d" and m.socket_dir == tmp_path / "s"
        assert m.disk_dir == tmp_path / "d" / "disks"
        assert m.list_vms() == [] and m.reconcile() == []
        assert isinstance(m.check_prerequisites(), list)
        with pytest.raises(exceptions.VMNotFoundError):
            m.get("nope")
        with pytest.raises(exceptions.VMNotFoundError):
            m.delete("nope")
    m.close()  # idempotent
    with pytest.raises(exceptions.VMNotFoundError) as e:
        SmolVM.from_id("nope", data_dir=tmp_path / "d", socket_dir=tmp_path / "s")
    assert "nope" in e.value.message
    with pytest.raises(exceptions.VMNotFoundError):
        SmolVMManager.from_id("nope", data_dir=tmp_path / "d", socket_dir=tmp_path / "s")


def test_smolvm_refuses_a_config_that_is_not_a_model(tmp_path):
    with pytest.raises(TypeError):
        SmolVM({"vm_id": "x"}, data_dir=tmp_path)


def test_docstrings_on_public_api():
    for obj in [SmolVM, SmolVMManager, VMConfig, VMInfo, VMState, NetworkConfig, CommandResult, ImageBuilder]:
        assert obj.__doc__, obj
    for name in ["start", "stop", "delete", "close", "refresh", "run", "wait_for_ssh", "get_ip",
                 "can_run_commands", "from_id", "set_env_vars", "upload_file", "download_file"]:
        assert getattr(SmolVM, name).__doc__, name


def test_the_package_ships_type_information():
    pkg = Path(smolvm.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_native.pyi").is_file()



def test_a_network_without_tap_reads_as_an_empty_tap_device():
    # The Rust library says None (user mode has no TAP); the spec's NetworkConfig.tap_device is a str.
    net = NetworkConfig.model_validate_json(
        '{"guest_ip": "10.0.2.15", "gateway_ip": "10.0.2.2", "netmask": "255.255.255.0", '
        '"tap_device": null, "guest_mac": "02:00:0a:00:02:0f", "ssh_host_port": 42000, "mode": "user"}'
    )
    assert net.tap_device == "" and net.mode == "user"
