"""The shared table tests/config_cases.json against the pydantic models AND the Rust rules behind
the native module (the Rust test crates/smolvm/tests/config_cases.rs runs the same table)."""

import json
from pathlib import Path

import pydantic
import pytest

from smolvm import VMConfig, _native
from smolvm.exceptions import ValidationError as SmolValidationError

TABLE = Path(__file__).resolve().parents[2] / "tests" / "config_cases.json"
CASES = json.loads(TABLE.read_text())["cases"]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    (d / "vmlinux").write_bytes(b"k")
    (d / "rootfs.ext4").write_bytes(b"r")
    return {
        "$KERNEL": str(d / "vmlinux"),
        "$ROOTFS": str(d / "rootfs.ext4"),
        "$DIR": str(d),
        "$MISSING": str(d / "does-not-exist"),
    }


def fields(case, places):
    f = {"kernel_path": "$KERNEL", "rootfs_path": "$ROOTFS", **case["fields"]}
    out = {}
    for k, v in f.items():
        if v == "$ABSENT":
            continue
        out[k] = places.get(v, v) if isinstance(v, str) else v
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_pydantic_model_follows_the_shared_table(case, places):
    f = fields(case, places)
    if case["valid"]:
        c = VMConfig(**f)
        for k, v in case.get("expect", {}).items():
            assert c.model_dump(mode="json")[k] == v, k
        if case["fields"].get("vm_id", 0) is None:
            assert c.vm_id.startswith("vm-") and len(c.vm_id) == 11
    else:
        with pytest.raises(pydantic.ValidationError) as e:
            VMConfig(**f)
        locs = {err["loc"][0] for err in e.value.errors()}
        assert case["field"] in locs, e.value


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_rust_rules_follow_the_shared_table(case, places):
    doc = json.dumps(fields(case, places))
    if case["valid"]:
        got = json.loads(_native.validate_config(doc))
        for k, v in case.get("expect", {}).items():
            assert got[k] == v, k
    else:
        with pytest.raises(SmolValidationError):
            _native.validate_config(doc)


@pytest.mark.parametrize("case", [c for c in CASES if c["valid"]], ids=lambda c: c["name"])
def test_a_valid_model_is_valid_in_rust_too(case, places):
    # What SmolVM sends to the library is the model's JSON: it must pass the Rust rules unchanged.
    c = VMConfig(**fields(case, places))
    got = json.loads(_native.validate_config(c.model_dump_json()))
    assert got["vm_id"] == c.vm_id
