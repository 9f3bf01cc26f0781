"""E2E: a guest that floods output or hands out dangerous file modes cannot hurt the Python host."""

import os
import resource
import stat

import pytest

from smolvm import SmolVM
from smolvm.exceptions import ExecError

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
# smolvm_protocol::limits::MAX_OUTPUT_LEN: what run() collects at most.
MAX_OUTPUT = 64 * MIB


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_endless_output_is_refused_with_bounded_memory(vm_env):
    with SmolVM() as vm:
        before = peak_rss()
        with pytest.raises(ExecError) as e:
            vm.run("yes flood", timeout=900)
        grew = peak_rss() - before
        assert "exceeds" in e.value.message
        # The buffer of at most MAX_OUTPUT bytes, grown by doubling: never the endless stream.
        assert grew <= 2 * MAX_OUTPUT + 32 * MIB, f"peak RSS grew by {grew} bytes"
        # The flooding command was killed in the guest; the VM is still usable.
        assert vm.run("pidof yes || echo none").output == "none"


def test_downloaded_file_loses_setuid_and_setgid(vm_env, tmp_path):
    with SmolVM() as vm:
        vm.run("printf x > /tmp/suid && chmod 6755 /tmp/suid")
        assert vm.download_file("/tmp/suid", tmp_path / "suid") == 1
        mode = stat.S_IMODE(os.stat(tmp_path / "suid").st_mode)
        assert mode == 0o755, oct(mode)
