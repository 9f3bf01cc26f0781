"""``SmolVM`` (one VM, the spec's facade) and ``SmolVMManager`` (low-level orchestration).

Both are thin wrappers over the Rust library (``smolvm._native``); every blocking call releases the
GIL, so several Python threads can drive several VMs at once.

Cleanup rules (spec: context manager):

* ``SmolVM()`` / ``SmolVM(config)`` **own** their VM. ``with`` starts it on entry; on exit it is
  stopped, deleted and the handle closed.
* ``SmolVM.from_id(...)`` is **reconnected**: ``with`` leaves its state on entry; on exit the VM is
  stopped, not deleted.
* ``close()`` releases the handle and leaves the VM as it is (running VMs keep running, for a later
  ``from_id``).
* An owned VM whose ``SmolVM`` is garbage-collected, or still open when the interpreter exits,
  without ``close()`` is deleted (a reconnected one is stopped), so nothing is leaked by mistake.
"""

from __future__ import annotations

import atexit
import json
import threading
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _native
from pydantic import TypeAdapter

from .types import NetworkPolicy, VMConfig, VMInfo, VMState

_POLICY: TypeAdapter = TypeAdapter(NetworkPolicy)

__all__ = ["SmolVM", "SmolVMManager", "CommandResult"]

PathLike = Union[str, Path]

#: Default seconds ``start`` waits for the guest (spec).
DEFAULT_BOOT_TIMEOUT = 30.0
#: Default seconds of ``run`` (spec).
DEFAULT_RUN_TIMEOUT = 30.0


class CommandResult:
    """The outcome of ``vm.run``: ``exit_code``, ``stdout``, ``stderr``, ``output`` and ``ok``."""

    __slots__ = ("exit_code", "stdout", "stderr")

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def ok(self) -> bool:
        """True if the command exited with code 0."""
        return self.exit_code == 0

    @property
    def output(self) -> str:
        """Stdout with surrounding whitespace removed."""
        return self.stdout.strip()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommandResult):
            return NotImplemented
        return (self.exit_code, self.stdout, self.stderr) == (
            other.exit_code,
            other.stdout,
            other.stderr,
        )

    def __repr__(self) -> str:
        return (
            f"CommandResult(exit_code={self.exit_code}, stdout={_short(self.stdout)!r}, "
            f"stderr={_short(self.stderr)!r})"
        )


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _opt_path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else str(Path(p).expanduser())


# Handles still open at interpreter exit get the same cleanup as on garbage collection.
_open_vms: "weakref.WeakSet[SmolVM]" = weakref.WeakSet()
_open_lock = threading.Lock()


@atexit.register
def _cleanup_at_exit() -> None:
    with _open_lock:
        vms = list(_open_vms)
    for vm in vms:
        try:
            vm._native.drop_now()
        except Exception:  # noqa: BLE001 - exit must go on for the other VMs
            pass


class SmolVM:
    """One microVM.

    ``SmolVM()`` auto-configures a VM from the default image (built once and cached);
    ``SmolVM(mem_size_mib=..., disk_size_mib=...)`` sizes it; ``SmolVM(config)`` uses a
    :class:`VMConfig`. The VM is created (state ``created``) by the constructor; ``start()`` boots it.
    ``data_dir``/``socket_dir``/``backend`` choose the state directory, socket directory and VMM;
    ``network`` (smolvm extension) is ``"auto"`` (TAP when permitted, else QEMU user networking),
    ``"tap"``, ``"user"`` or ``"none"``.
    """

    def __init__(
        self,
        config: Optional[VMConfig] = None,
        *,
        mem_size_mib: Optional[int] = None,
        disk_size_mib: Optional[int] = None,
        data_dir: Optional[PathLike] = None,
        socket_dir: Optional[PathLike] = None,
        backend: Optional[str] = None,
        network: str = "auto",
        _native_vm: Any = None,
    ) -> None:
        if _native_vm is None:
            if config is not None and not isinstance(config, VMConfig):
                raise TypeError(f"config must be a VMConfig, not {type(config).__name__}")
            if config is not None and (mem_size_mib is not None or disk_size_mib is not None):
                raise TypeError("mem_size_mib/disk_size_mib are for auto-configuration; set them in the VMConfig")
            _native_vm = _native.Vm.create(
                None if config is None else config._native_json(),
                data_dir=_opt_path(data_dir),
                socket_dir=_opt_path(socket_dir),
                backend=backend,
                mem_size_mib=mem_size_mib,
                disk_size_mib=disk_size_mib,
                network=network,
            )
        self._native = _native_vm
        self._info = VMInfo._from_native(_native_vm.info_json())
        with _open_lock:
            _open_vms.add(self)

    @classmethod
    def from_id(
        cls,
        vm_id: str,
        *,
        data_dir: Optional[Path] = None,
        socket_dir: Optional[Path] = None,
        backend: Optional[str] = None,
        ssh_user: str = "root",
        ssh_key_path: Optional[str] = None,
    ) -> "SmolVM":
        """Reconnects to an existing VM by id. Raises ``VMNotFoundError`` if there is none."""
        native = _native.Vm.from_id(
            vm_id,
            data_dir=_opt_path(data_dir),
            socket_dir=_opt_path(socket_dir),
            backend=backend,
            ssh_user=ssh_user,
            ssh_key_path=_opt_path(ssh_key_path),
        )
        return cls(_native_vm=native)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, boot_timeout: float = DEFAULT_BOOT_TIMEOUT) -> "SmolVM":
        """Boots the VM and waits (at most ``boot_timeout`` s) until it is ready; no-op when running.
        Returns self."""
        self._info = VMInfo._from_native(self._native.start(float(boot_timeout)))
        return self

    def stop(self, timeout: float = 3.0) -> "SmolVM":
        """Shuts the VM down gracefully, killing it after ``timeout`` s. Returns self."""
        self._info = VMInfo._from_native(self._native.stop(float(timeout)))
        return self

    def delete(self) -> None:
        """Deletes the VM and everything it holds (process, network, disk, state row). Permanent."""
        self._native.delete()
        self._forget()

    def close(self) -> None:
        """Releases this handle; the VM itself is left as it is. Idempotent."""
        self._native.close()
        self._forget()

    def refresh(self) -> "SmolVM":
        """Reloads ``info``/``status`` from the state store. Returns self."""
        self._info = VMInfo._from_native(self._native.refresh())
        return self

    # -- pause, snapshots, forks (smolvm extensions beside the spec) -------------------------------

    def pause(self) -> "SmolVM":
        """Pauses the running VM: its vCPUs stop, the VMM and its memory stay. Returns self."""
        self._info = VMInfo._from_native(self._native.pause())
        return self

    def resume(self) -> "SmolVM":
        """Resumes a paused VM. Returns self."""
        self._info = VMInfo._from_native(self._native.resume())
        return self

    def snapshot(self, name: str) -> Dict[str, Any]:
        """Takes the snapshot ``name`` of this running or paused VM (memory, device state and disk,
        stored under the data dir) and returns its description (name, size, creation time, ...)."""
        info: Dict[str, Any] = json.loads(self._native.snapshot(name))
        self.refresh()
        return info

    def fork(self, n: int) -> List["SmolVM"]:
        """Forks this VM into ``n`` new running VMs, each with its own id, IP, MAC, host key, disk
        and reseeded random generator. The returned VMs are owned: deleted on exit or collection."""
        return [SmolVM(_native_vm=v) for v in self._native.fork(int(n))]

    @classmethod
    def from_snapshot(
        cls,
        name: str,
        vm_id: Optional[str] = None,
        *,
        data_dir: Optional[Path] = None,
        socket_dir: Optional[Path] = None,
        backend: Optional[str] = None,
    ) -> "SmolVM":
        """A new, independent, running VM started from the snapshot ``name`` (owned)."""
        native = _native.Vm.from_snapshot(
            name,
            vm_id,
            data_dir=_opt_path(data_dir),
            socket_dir=_opt_path(socket_dir),
            backend=backend,
        )
        return cls(_native_vm=native)

    def _forget(self) -> None:
        with _open_lock:
            _open_vms.discard(self)

    # -- commands --------------------------------------------------------------------------------

    def run(self, command: str, timeout: Optional[float] = DEFAULT_RUN_TIMEOUT) -> CommandResult:
        """Runs ``command`` with ``/bin/sh -lc`` in the guest and returns its :class:`CommandResult`.
        A non-zero exit is a normal result; :class:`OperationTimeoutError` after ``timeout`` s."""
        code, out, err = self._native.run(command, None if timeout is None else float(timeout))
        return CommandResult(code, out, err)

    def wait_for_ssh(self, timeout: float = 60.0) -> "SmolVM":
        """Waits until the guest's SSH server accepts smolvm's key. Returns self."""
        self._native.wait_for_ssh(float(timeout))
        return self

    def get_ip(self) -> str:
        """The guest's IP address."""
        return self._native.get_ip()

    def can_run_commands(self) -> bool:
        """True when ``run`` can reach this VM (agent image or SSH over its network)."""
        return self._native.can_run_commands()

    # -- environment and files (through the guest agent) -----------------------------------------

    def set_network_policy(self, policy: "NetworkPolicy | dict") -> "SmolVM":
        """Replaces the VM's egress policy: ``"open"``, ``"none"`` or an allow-list
        (:class:`NetworkAllowList` or a dict with ``cidrs``, ``domains``, ``ports``). In force when this
        returns for a running VM, else at its next start. Returns self."""
        checked = _POLICY.validate_python(policy)
        self._info = VMInfo._from_native(self._native.set_network_policy(_POLICY.dump_json(checked).decode()))
        return self

    def network_policy_status(self) -> Dict[str, Any]:
        """The policy and how many packets it dropped: ``{"vm_id", "policy", "active",
        "dropped_packets", "dropped_bytes"}``."""
        return json.loads(self._native.network_policy_status())

    def refresh_network_policy(self) -> Dict[str, Any]:
        """Re-resolves the allow-listed domains now (smolvm's resolver) and updates the rules; returns
        ``{"domains", "failures", "next_refresh"}``. Call again after ``next_refresh``: domain addresses
        expire shortly after their TTL when nothing refreshes them."""
        return json.loads(self._native.refresh_network_policy())

    def set_env_vars(self, env_vars: Dict[str, str], *, merge: bool = True) -> List[str]:
        """Persists environment variables in the guest (``/etc/profile.d/smolvm_env.sh``); with
        ``merge=False`` every other variable is removed. Returns the sorted keys now set."""
        if not merge:
            stale = [k for k in self._native.list_env_vars() if k not in env_vars]
            if stale:
                self._native.unset_env_vars(stale)
        self._native.set_env_vars({str(k): str(v) for k, v in env_vars.items()})
        return sorted(self._native.list_env_vars())

    def unset_env_vars(self, keys: List[str]) -> Dict[str, str]:
        """Removes environment variables; returns the removed ones with their old values."""
        current = self._native.list_env_vars()
        self._native.unset_env_vars(list(keys))
        return {k: current[k] for k in keys if k in current}

    def list_env_vars(self) -> Dict[str, str]:
        """The persisted guest environment variables."""
        return dict(self._native.list_env_vars())

    def upload_file(self, local_path: PathLike, remote_path: str, mode: Optional[int] = None) -> int:
        """Copies a local file to an absolute guest path; returns the bytes copied."""
        return self._native.upload_file(str(local_path), remote_path, mode)

    def download_file(self, remote_path: str, local_path: PathLike) -> int:
        """Copies a guest file to a local path; returns the bytes copied."""
        return self._native.download_file(remote_path, str(local_path))

    # -- properties ------------------------------------------------------------------------------

    @property
    def vm_id(self) -> str:
        """The VM id."""
        return self._native.vm_id

    @property
    def info(self) -> VMInfo:
        """Cached :class:`VMInfo` (see :meth:`refresh`)."""
        return self._info

    @property
    def status(self) -> VMState:
        """Cached status (see :meth:`refresh`)."""
        return self._info.status

    @property
    def data_dir(self) -> Path:
        """The state directory of this VM's manager."""
        return Path(self._native.data_dir)

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> "SmolVM":
        if self._native.owned:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._native.is_open:
                if self.refresh().status == VMState.RUNNING:
                    self.stop()
                if self._native.owned:
                    self.delete()
        finally:
            self.close()

    def __repr__(self) -> str:
        kind = "owned" if self._native.owned else "reconnected"
        state = self._info.status.value if self._native.is_open else "closed"
        return f"<SmolVM {self.vm_id} {state} ({kind})>"


class SmolVMManager:
    """Low-level VM orchestration over one state store (spec: vm-manager).

    ``data_dir`` defaults to ``$SMOLVM_DATA_DIR``, ``~/.local/state/smolvm`` or ``/var/lib/smolvm``;
    ``socket_dir`` to a private directory under the temp dir; ``backend`` to auto-detection.
    """

    def __init__(
        self,
        data_dir: Optional[Path] = None,
        socket_dir: Optional[Path] = None,
        backend: Optional[str] = None,
    ) -> None:
        self._native = _native.Manager(_opt_path(data_dir), _opt_path(socket_dir), backend)
        self._closed = False

    @classmethod
    def from_id(cls, vm_id: str, **kwargs: Any) -> "SmolVMManager":
        """A manager whose store holds ``vm_id``; ``VMNotFoundError`` otherwise."""
        mgr = cls(**kwargs)
        mgr.get(vm_id)
        return mgr

    def create(self, config: VMConfig, *, network: str = "auto") -> VMInfo:
        """Creates a VM (allocates network, disk and state) without starting it."""
        return VMInfo._from_native(self._native.create(config._native_json(), network))

    def start(self, vm_id: str, boot_timeout: float = DEFAULT_BOOT_TIMEOUT) -> VMInfo:
        """Starts a created or stopped VM and waits for it to be ready."""
        return VMInfo._from_native(self._native.start(vm_id, float(boot_timeout)))

    def stop(self, vm_id: str, timeout: float = 10.0) -> VMInfo:
        """Stops a running VM (graceful, then killed after ``timeout`` s)."""
        return VMInfo._from_native(self._native.stop(vm_id, float(timeout)))

    def delete(self, vm_id: str) -> None:
        """Deletes a VM and all its resources."""
        self._native.delete(vm_id)

    def get(self, vm_id: str) -> VMInfo:
        """The :class:`VMInfo` of one VM; ``VMNotFoundError`` if there is none."""
        return VMInfo._from_native(self._native.get(vm_id))

    def list_vms(self, status: Optional[VMState] = None) -> List[VMInfo]:
        """Every VM, or only those in ``status``."""
        import json

        st = None if status is None else VMState(status).value
        raw = json.loads(self._native.list_vms(st))
        return [VMInfo.model_validate(r, context={"check_paths": False}) for r in raw]

    def vmm_user(self, vm_id: str) -> Optional[Tuple[int, int]]:
        """``(uid, gid)`` the VM's VMM runs as when smolvm runs as root: an unprivileged user of the
        VM's own, so a VMM its guest took over can reach no other VM. ``None``: the VMM runs as the
        caller (not root, or ``SMOLVM_VMM_USER=off``)."""
        user = self._native.vmm_user(vm_id)
        return None if user is None else (int(user[0]), int(user[1]))

    def reconcile(self) -> List[str]:
        """Marks VMs recorded as running whose process is gone as ``error``; returns their ids."""
        return list(self._native.reconcile())

    def get_ssh_commands(
        self,
        vm_id: str,
        *,
        ssh_user: str = "root",
        key_path: Optional[PathLike] = None,
        public_host: Optional[str] = None,
    ) -> Dict[str, str]:
        """Ready-to-run SSH commands: ``private_ip``, ``localhost_port`` and (with ``public_host``)
        ``public``."""
        return dict(self._native.get_ssh_commands(vm_id, ssh_user, _opt_path(key_path), public_host))

    def check_prerequisites(self) -> List[str]:
        """Missing host prerequisites for the backend (empty when all good)."""
        return list(self._native.check_prerequisites())

    @property
    def data_dir(self) -> Path:
        """Directory of the state database and VM files."""
        return Path(self._native.data_dir)

    @property
    def socket_dir(self) -> Path:
        """Directory of VM sockets."""
        return Path(self._native.socket_dir)

    @property
    def disk_dir(self) -> Path:
        """Directory of isolated VM disks (``data_dir/disks``)."""
        return Path(self._native.disk_dir)

    @property
    def backend(self) -> str:
        """The resolved backend (``"firecracker"`` or ``"qemu"``)."""
        return self._native.backend()

    def close(self) -> None:
        """Releases the manager's resources. Idempotent."""
        self._closed = True

    def __enter__(self) -> "SmolVMManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SmolVMManager data_dir={str(self.data_dir)!r}>"

