"""Exceptions raised by smolvm.

Every error of the Rust library has one kind, and each kind maps to exactly one class here (see
``KIND_TO_CLASS``). All derive from :class:`SmolVMError`, whose ``.message`` holds the full message
including the Rust cause chain (``outer: cause: root cause``).

Pydantic's own ``pydantic.ValidationError`` is raised by the models (:class:`smolvm.VMConfig` ...)
for invalid fields; :class:`ValidationError` here is raised by the library for invalid input it
finds itself (a bad argument, a config the Rust rules refuse).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "SmolVMError",
    "ValidationError",
    "VMNotFoundError",
    "VMAlreadyExistsError",
    "InvalidStateError",
    "OperationTimeoutError",
    "NetworkError",
    "BackendError",
    "PrerequisitesError",
    "StateStoreError",
    "ImageError",
    "ExecError",
    "SnapshotError",
    "HostIOError",
    "KIND_TO_CLASS",
]


class SmolVMError(Exception):
    """Base class of every smolvm error. ``message`` is the human-readable text with its causes."""

    #: Stable kind name of the Rust error (``"vm_not_found"`` ...), ``None`` for Python-side errors.
    kind: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ValidationError(SmolVMError):
    """Invalid input: a config field or argument broke a rule (``.field`` names it when known)."""

    field: Optional[str] = None


class VMNotFoundError(SmolVMError):
    """No VM with this id exists in the state store."""


class VMAlreadyExistsError(SmolVMError):
    """A VM with this id already exists; nothing was changed."""


class InvalidStateError(SmolVMError):
    """The operation is not allowed in the VM's current state (e.g. starting a VM in ``error``)."""


class OperationTimeoutError(SmolVMError, TimeoutError):
    """Something (boot, a command, SSH) did not finish in time. Also a ``TimeoutError``."""


class NetworkError(SmolVMError):
    """Network setup or teardown failed (TAP, NAT, port forwarding)."""


class BackendError(SmolVMError):
    """The VMM (QEMU or Firecracker) failed or is unavailable."""


class PrerequisitesError(BackendError):
    """The host lacks something the chosen backend needs (a subclass of BackendError: the backend cannot run)."""


class StateStoreError(SmolVMError):
    """The SQLite state store failed."""


class ImageError(SmolVMError):
    """Building or finding a guest image failed."""


class ExecError(SmolVMError):
    """Running a command or moving a file in the guest failed (not a non-zero exit code)."""


class SnapshotError(SmolVMError):
    """A snapshot could not be taken, restored, forked or deleted (the message names the snapshot)."""


class HostIOError(SmolVMError, OSError):
    """A filesystem operation on a smolvm-owned path failed."""


#: Rust error kind -> exception class, one to one.
KIND_TO_CLASS = {
    "validation": ValidationError,
    "vm_not_found": VMNotFoundError,
    "vm_already_exists": VMAlreadyExistsError,
    "invalid_state": InvalidStateError,
    "operation_timeout": OperationTimeoutError,
    "network": NetworkError,
    "backend": BackendError,
    "prerequisites": PrerequisitesError,
    "state": StateStoreError,
    "image": ImageError,
    "exec": ExecError,
    "snapshot": SnapshotError,
    "io": HostIOError,
}
