"""E2E: what a Python user expects beyond the examples: threads, ownership rules, errors."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from smolvm import SmolVM, SmolVMManager, VMConfig, VMState
from smolvm.exceptions import OperationTimeoutError, VMAlreadyExistsError, VMNotFoundError

pytestmark = pytest.mark.e2e


def ids(data_dir):
    return sorted(i.vm_id for i in SmolVMManager(data_dir=data_dir).list_vms())


def test_blocking_calls_release_the_gil(vm_env):
    # Thread A sits in a 20 s guest command on vm1; meanwhile this thread boots vm2 and runs a
    # command in it. With the GIL held by A's native call, nothing here could run until A returned.
    vm1, vm2 = SmolVM().start(), SmolVM()
    entered, done = threading.Event(), threading.Event()
    result = {}

    def long_command():
        entered.set()
        result["a"] = vm1.run("sleep 20; echo a-done", timeout=120)
        done.set()

    t = threading.Thread(target=long_command)
    t.start()
    entered.wait()
    vm2.start()
    assert vm2.run("echo b").output == "b"
    assert not done.is_set(), "vm2 only ran after vm1's command: the GIL was not released"
    t.join()
    assert result["a"].output == "a-done"
    for vm in (vm1, vm2):
        vm.stop().delete()
    assert ids(vm_env) == []


def test_two_threads_drive_two_vms(vm_env):
    out, errors = {}, []

    def work(name):
        try:
            with SmolVM() as vm:
                out[name] = vm.run(f"echo {name}").output
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and out == {"one": "one", "two": "two"}
    assert ids(vm_env) == []


def test_context_manager_rules_for_reconnected_vms(vm_env):
    vm = SmolVM().start()
    vm_id = vm.vm_id
    vm.close()
    with SmolVM.from_id(vm_id) as again:
        assert again.status == VMState.RUNNING  # entry leaves a reconnected VM as it is
        assert again.run("echo x").output == "x"
    # exit stopped it but did not delete it
    left = SmolVM.from_id(vm_id)
    assert left.status == VMState.STOPPED
    with left:  # a stopped reconnected VM is not started by entry
        assert left.status == VMState.STOPPED
    SmolVM.from_id(vm_id).delete()
    with pytest.raises(VMNotFoundError):
        SmolVM.from_id(vm_id)


def test_an_owned_vm_is_deleted_when_garbage_collected(vm_env):
    vm = SmolVM()
    vm_id = vm.vm_id
    assert ids(vm_env) == [vm_id]
    del vm
    gc.collect()
    assert ids(vm_env) == []


def test_second_vm_with_an_id_in_use_raises_and_changes_nothing(vm_env, image):
    kernel, rootfs = image
    cfg = VMConfig(vm_id="dup", kernel_path=kernel, rootfs_path=rootfs)
    first = SmolVM(cfg)
    before = SmolVMManager(data_dir=vm_env).get("dup")
    with pytest.raises(VMAlreadyExistsError) as e:
        SmolVM(cfg)
    assert "dup" in e.value.message
    assert SmolVMManager(data_dir=vm_env).get("dup") == before
    first.delete()
    first.close()


def test_run_timeout_raises_operation_timeout(vm_env):
    with SmolVM() as vm:
        with pytest.raises(OperationTimeoutError) as e:
            vm.run("sleep 30", timeout=1)
        assert e.value.message
        assert vm.run("echo still-usable").output == "still-usable"


def test_env_vars_and_files(vm_env, tmp_path):
    with SmolVM() as vm:
        assert vm.set_env_vars({"A_KEY": "1", "B_KEY": "two words"}) == ["A_KEY", "B_KEY"]
        assert vm.run("echo $B_KEY").output == "two words"
        assert vm.unset_env_vars(["A_KEY"]) == {"A_KEY": "1"}
        assert vm.list_env_vars() == {"B_KEY": "two words"}
        src = tmp_path / "in.txt"
        src.write_text("hello file\n")
        assert vm.upload_file(src, "/tmp/in.txt") == len("hello file\n")
        assert vm.run("cat /tmp/in.txt").output == "hello file"
        assert vm.download_file("/tmp/in.txt", tmp_path / "out.txt") == len("hello file\n")
        assert (tmp_path / "out.txt").read_text() == "hello file\n"


def test_repr_is_informative(vm_env):
    vm = SmolVM()
    assert repr(vm) == f"<SmolVM {vm.vm_id} created (owned)>"
    vm.delete()
    assert "closed" in repr(vm)


def _interrupt_soon(delay=1.0):
    # What Ctrl-C does: SIGINT to the process, handled by Python in the main thread.
    t = threading.Timer(delay, os.kill, args=(os.getpid(), signal.SIGINT))
    t.start()
    return t


def test_ctrl_c_during_run_raises_keyboard_interrupt(vm_env):
    with SmolVM() as vm:
        t = _interrupt_soon()
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            vm.run("sleep 15; echo late", timeout=60)
        # Reported, not asserted (no timing assertions): about 1 s when prompt, 15 s when not.
        print(f"KeyboardInterrupt after {time.monotonic() - began:.2f} s (SIGINT at 1 s)")
        t.join()
        assert vm.run("echo still-usable", timeout=60).output == "still-usable"
    assert ids(vm_env) == []


def test_ctrl_c_during_start_leaves_nothing_running(vm_env):
    vm = SmolVM()
    t = _interrupt_soon(0.5)
    with pytest.raises(KeyboardInterrupt):
        vm.start()
    t.join()
    vm.delete()  # waits for the interrupted boot to end, then removes everything
    assert ids(vm_env) == []


def _numbered(tag, n=300):
    return "".join(f"{tag}-{i}\n" for i in range(1, n + 1))


def _numbering_command(tag, n=300):
    # Many lines of its own, then a second of sleep, so that every caller's command overlaps the others.
    return f"i=1; while [ $i -le {n} ]; do echo {tag}-$i; i=$((i+1)); done; sleep 1"


def test_threads_and_processes_run_commands_on_one_vm_at_once(vm_env):
    # Several threads share one SmolVM and several Python processes reach the same VM by id, all at
    # the same moment: every command succeeds with exactly its own output (the VM's channel owner
    # multiplexes every client over QEMU's one agent connection).
    vm = SmolVM().start()
    results, errors = {}, []

    def work(tag):
        try:
            results[tag] = vm.run(_numbering_command(tag), timeout=120)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    script = (
        "import sys\n"
        "from smolvm import SmolVM\n"
        "vm = SmolVM.from_id(sys.argv[1])\n"
        "r = vm.run(sys.argv[2], timeout=120)\n"
        "vm.close()\n"
        "sys.stdout.write(r.stdout)\n"
        "sys.exit(r.exit_code)\n"
    )
    # Spawned, never forked: each is a fresh interpreter (the environment names this test's dirs).
    procs = {
        f"p{n}": subprocess.Popen(
            [sys.executable, "-c", script, vm.vm_id, _numbering_command(f"p{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    }
    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(8):
        r = results[f"t{n}"]
        assert r.exit_code == 0 and r.stdout == _numbered(f"t{n}"), f"thread {n}: {r!r}"
    for tag, p in procs.items():
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"process {tag}: {err}"
        assert out == _numbered(tag), f"process {tag} got other output"
    vm.stop().delete()
    assert ids(vm_env) == []


def test_each_vmm_runs_as_its_own_user_when_root(vm_env):
    # As root every VM's VMM drops to an unprivileged user of its own; otherwise it runs as the caller.
    vms = [SmolVM().start(), SmolVM().start()]
    m = SmolVMManager(data_dir=vm_env)
    users = []
    for vm in vms:
        user = m.vmm_user(vm.vm_id)
        if os.geteuid() != 0:
            assert user is None
            continue
        assert user is not None and user[0] != 0 and user[0] == user[1]
        status = open(f"/proc/{m.get(vm.vm_id).pid}/status").read()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(user[0])] * 4, status
        assert vm.run("echo ok").output == "ok"
        users.append(user)
    if os.geteuid() == 0:
        assert users[0] != users[1], "two VMs share a VMM user"
    for vm in vms:
        vm.stop().delete()
    assert ids(vm_env) == []
