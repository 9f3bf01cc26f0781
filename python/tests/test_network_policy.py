"""Egress policies from Python: the model rules (no VM) and, with SMOLVM_E2E=1, changing the policy of a
running VM (the pytest process runs in its own network namespace, see conftest)."""

import subprocess

import pydantic
import pytest

from smolvm import NetworkAllowList, SmolVM, VMConfig
from smolvm.exceptions import ValidationError as SmolValidationError


def test_allow_lists_are_normalised_like_the_library(tmp_path):
    k, r = tmp_path / "k", tmp_path / "r"
    k.write_bytes(b"k")
    r.write_bytes(b"r")
    c = VMConfig(
        kernel_path=k,
        rootfs_path=r,
        network_policy={"cidrs": ["10.0.0.0/8", "192.0.2.7/32"], "domains": ["A.Test."], "ports": [443, 80]},
    )
    assert c.network_policy == NetworkAllowList(cidrs=["10.0.0.0/8", "192.0.2.7"], domains=["a.test"], ports=[80, 443])
    assert VMConfig(kernel_path=k, rootfs_path=r).network_policy == "open"
    with pytest.raises(pydantic.ValidationError) as e:
        VMConfig(kernel_path=k, rootfs_path=r, network_policy={"cidrs": ["10.0.0.1/8"]})
    assert e.value.errors()[0]["loc"][0] == "network_policy"
    assert "10.0.0.1/8" in str(e.value)


@pytest.mark.e2e
def test_policy_changes_on_a_running_vm(vm_env):
    with SmolVM() as vm:
        vm.start()
        assert vm.network_policy_status()["policy"] == "open"
        vm.set_network_policy("none")
        assert vm.info.config.network_policy == "none"
        status = vm.network_policy_status()
        assert status["active"] is True and status["dropped_packets"] is not None, status
        rules = subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout
        assert f"jump eg_{vm.vm_id}" in rules, rules
        # The agent is no network path: commands still run.
        assert vm.run("echo agent-ok").output == "agent-ok"
        vm.set_network_policy({"cidrs": ["192.0.2.0/24"], "ports": [443]})
        assert vm.network_policy_status()["policy"] == {"cidrs": ["192.0.2.0/24"], "ports": [443]}
        rules = subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout
        assert "192.0.2.0/24" in rules and "th dport 443" in rules, rules
        with pytest.raises((pydantic.ValidationError, SmolValidationError)):
            vm.set_network_policy({"domains": ["bad_name.test"]})
        vm.set_network_policy("open")
        rules = subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout
        assert f"eg_{vm.vm_id}" not in rules, rules
