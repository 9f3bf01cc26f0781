"""Auto-configuration's kernel choice (``SMOLVM_AUTO_KERNEL``) as a Python user meets it: Python's
``SmolVM()`` goes through the library's one decision (``ImageBuilder::auto_image``), so a wrong value
is refused with a ``ValidationError`` naming the variable, before any image is built or VM created."""

import pytest

from smolvm import SmolVM, SmolVMManager
from smolvm.exceptions import ValidationError


def test_an_unknown_auto_kernel_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    data = tmp_path / "d"
    monkeypatch.setenv("SMOLVM_DATA_DIR", str(data))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("SMOLVM_AUTO_KERNEL", "tiny")
    with pytest.raises(ValidationError, match="SMOLVM_AUTO_KERNEL.*auto, debian or minimal"):
        SmolVM()
    assert not (data / "images" / "default").exists()
    assert not (data / "images" / "default-minimal").exists()
    assert SmolVMManager(data_dir=data).list_vms() == []
