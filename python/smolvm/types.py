"""The spec's data models: :class:`VMConfig`, :class:`VMInfo`, :class:`NetworkConfig`, :class:`VMState`.

All models are frozen pydantic (v2) models: assigning a field raises ``pydantic.ValidationError``
(``"... is frozen"``); use ``model_copy(update=...)`` for a changed copy. The rules are the Rust
library's (``smolvm::VmConfigSpec::build``); the shared table ``tests/config_cases.json`` is run by
both test suites so the two cannot disagree.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = ["VMState", "VMConfig", "VMInfo", "NetworkConfig", "NetworkAllowList", "DEFAULT_BOOT_ARGS"]

#: Default kernel command line (spec: ``boot_args`` default).
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"

_VM_ID = re.compile(r"^(?:[a-z0-9][a-z0-9-]{0,62}[a-z0-9]|[a-z0-9])$")
_ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_BACKENDS = ("firecracker", "qemu", "auto")


#: The ``init=`` value that hands the guest over to smolvm's agent as PID 1.
_AGENT_INIT = "/init"


def _boots_agent(boot_args: str) -> bool:
    """True when ``boot_args`` hand over to smolvm's agent (``init=/init``), tokenised as the kernel
    and the Rust library do (``smolvm_protocol::boot::tokens``): double quotes group, ``--`` ends the
    kernel's part, the last ``init=`` wins."""
    tokens: List[str] = []
    cur, have, in_quotes = "", False, False
    for c in boot_args:
        if c == '"':
            in_quotes, have = not in_quotes, True
        elif c.isspace() and not in_quotes:
            if have and cur == "--":
                break
            if have:
                tokens.append(cur)
            cur, have = "", False
        else:
            cur, have = cur + c, True
    else:
        if have and cur != "--":
            tokens.append(cur)
    init = None
    for tok in tokens:
        key, _, value = tok.partition("=")
        if key == "init":
            init = value
    return init == _AGENT_INIT


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_ENTRIES = 256


class NetworkAllowList(BaseModel):
    """An egress allow-list (smolvm extension, the ``network_policy`` of :class:`VMConfig`): the guest
    may reach these CIDRs/addresses and the current addresses of these domains (resolved by smolvm on
    the host, re-resolved on their TTL), on these TCP/UDP ports (none = every port). Same rules as
    the Rust library: entries are normalised, sorted and deduplicated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cidrs: List[str] = Field(default_factory=list, max_length=_MAX_ENTRIES)
    domains: List[str] = Field(default_factory=list, max_length=_MAX_ENTRIES)
    ports: List[int] = Field(default_factory=list, max_length=_MAX_ENTRIES)

    @field_validator("cidrs")
    @classmethod
    def _cidr_rule(cls, v: List[str]) -> List[str]:
        nets = set()
        for c in v:
            try:
                nets.add(ipaddress.IPv4Network(c, strict=True))
            except ValueError as e:
                raise ValueError(f"{c!r} is not an IPv4 address or CIDR without host bits: {e}") from None
        return [str(n.network_address) if n.prefixlen == 32 else str(n) for n in sorted(nets)]

    @field_validator("domains")
    @classmethod
    def _domain_rule(cls, v: List[str]) -> List[str]:
        out = set()
        for name in v:
            d = name[:-1] if name.endswith(".") else name
            d = d.lower()
            labels = d.split(".")
            ok = 0 < len(d) <= 253 and len(labels) >= 2 and all(_LABEL.match(lab) for lab in labels)
            if not ok:
                raise ValueError(f"{name!r} is not a domain name (two or more labels of letters, digits and '-')")
            try:
                ipaddress.IPv4Address(d)
                raise ValueError(f"{name!r} is an address: list it as a CIDR")
            except ipaddress.AddressValueError:
                pass
            out.add(d)
        return sorted(out)

    @field_validator("ports")
    @classmethod
    def _port_rule(cls, v: List[int]) -> List[int]:
        for p in v:
            if not 1 <= p <= 65535:
                raise ValueError(f"port {p} is not a destination port (1-65535)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _not_empty(self) -> "NetworkAllowList":
        if not self.cidrs and not self.domains:
            raise ValueError('an allow-list needs at least one CIDR or domain (use "none" to allow nothing)')
        return self


#: An egress policy: ``"open"`` (everything), ``"none"`` (nothing beyond the gateway) or an allow-list.
NetworkPolicy = Union[Literal["open", "none"], NetworkAllowList]


def _generate_vm_id() -> str:
    return f"vm-{secrets.token_hex(4)}"


def _check_paths(info: ValidationInfo) -> bool:
    # Infos loaded from the state store describe VMs whose files may have gone since: they are
    # validated with context {"check_paths": False}.
    ctx = info.context
    return not (isinstance(ctx, dict) and ctx.get("check_paths") is False)


class VMState(str, Enum):
    """Lifecycle state of a VM."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"
    #: smolvm extension (``vm.pause()``): vCPUs stopped, VMM and memory kept.
    PAUSED = "paused"

    def __str__(self) -> str:
        return f"VMState.{self.name}"

    def __format__(self, spec: str) -> str:
        # Same text in f-strings on every Python version (3.11 would format the value otherwise).
        return format(str(self), spec)


class HostLimits(BaseModel):
    """Host limits of one VM's VMM, enforced with a cgroup per VM (smolvm extension). ``None`` fields
    take the defaults: memory = guest RAM + 256 MiB, 256 pids, CPU weight 100, no CPU cap."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    cpu_quota_percent: Optional[int] = Field(default=None, ge=1, le=3200, description="Hard CPU cap, percent of one host CPU.")
    cpu_weight: Optional[int] = Field(default=None, ge=1, le=10000, description="Relative CPU weight (default 100).")
    memory_limit_mib: Optional[int] = Field(default=None, ge=1, description="VMM memory cap in MiB, at least guest RAM + 64.")
    pids_max: Optional[int] = Field(default=None, ge=32, le=65536, description="Cap on the VMM's host processes/threads.")


class VMConfig(BaseModel):
    """Configuration of one microVM (spec: vm-config). Immutable; unknown fields are refused.

    ``initrd_path`` is a smolvm extension: an explicit initramfs. When omitted and the kernel is a
    file of an image built by :class:`smolvm.ImageBuilder`, that image's initramfs is used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    vm_id: str = Field(default_factory=_generate_vm_id, description="Unique VM id, ^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$ or ^[a-z0-9]$.")
    vcpu_count: int = Field(default=2, ge=1, le=32, description="Virtual CPUs, 1-32.")
    mem_size_mib: int = Field(default=512, ge=128, le=16384, description="Guest memory in MiB, 128-16384.")
    kernel_path: Path = Field(description="Kernel image; must exist as a file.")
    rootfs_path: Path = Field(description="Root filesystem image; must exist as a file.")
    initrd_path: Optional[Path] = Field(default=None, description="Optional initramfs (smolvm extension).")
    boot_args: str = Field(default=DEFAULT_BOOT_ARGS, description="Kernel command line.")
    agent: Optional[StrictBool] = Field(
        default=None,
        validate_default=True,
        description="The guest runs smolvm's agent (smolvm extension). None: derived from boot_args "
        "(init=/init); True needs that hand-over; False for an image with an /init of its own.",
    )
    backend: Optional[str] = Field(default=None, description='"firecracker", "qemu", "auto" or None (auto).')
    disk_mode: Literal["isolated", "shared"] = Field(default="isolated", description="Disk lifecycle mode.")
    retain_disk_on_delete: StrictBool = Field(default=False, description="Keep an isolated disk after delete.")
    disk_size_mib: Optional[int] = Field(
        default=None,
        ge=64,
        le=1 << 20,
        description="Grow the VM's isolated root disk to this size in MiB (smolvm extension; 64-1048576).",
    )
    env_vars: Dict[str, str] = Field(default_factory=dict, description="Guest environment variables.")
    host_limits: Optional[HostLimits] = Field(default=None, description="Host limits of the VMM (smolvm extension).")
    network_policy: NetworkPolicy = Field(
        default="open",
        description='Egress policy (smolvm extension): "open", "none" or a NetworkAllowList (TAP networking).',
    )

    @field_validator("vm_id", mode="before")
    @classmethod
    def _vm_id_default(cls, v: Any) -> Any:
        return _generate_vm_id() if v is None else v

    @field_validator("vm_id")
    @classmethod
    def _vm_id_rule(cls, v: str) -> str:
        if not _VM_ID.match(v):
            raise ValueError(
                "must be 1-64 lowercase letters, digits or hyphens, starting and ending with a "
                f"letter or digit, got {v!r}"
            )
        return v

    @field_validator("kernel_path", "rootfs_path", "initrd_path")
    @classmethod
    def _path_rule(cls, v: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        if v is None or not _check_paths(info):
            return v
        if not v.exists():
            raise ValueError(f"{v} does not exist")
        if not v.is_file():
            raise ValueError(f"{v} is not a regular file")
        return v

    @field_validator("agent")
    @classmethod
    def _agent_rule(cls, v: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        boot_args = info.data.get("boot_args")
        if boot_args is None:
            return v  # boot_args itself is invalid and reported
        runs = _boots_agent(boot_args)
        if v is None:
            return runs
        if v and not runs:
            raise ValueError(
                f"the guest cannot run smolvm's agent: boot_args must hand over to it with "
                f"init={_AGENT_INIT} (got {boot_args!r}); set agent to False for an image without the agent"
            )
        return v

    @field_validator("backend")
    @classmethod
    def _backend_rule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in _BACKENDS:
            raise ValueError(f'must be one of "firecracker", "qemu", "auto" or None, got {v!r}')
        return v

    @field_validator("env_vars")
    @classmethod
    def _env_rule(cls, v: Dict[str, str]) -> Dict[str, str]:
        for key in v:
            if not _ENV_KEY.match(key):
                raise ValueError(f"key {key!r} must match ^[a-zA-Z_][a-zA-Z0-9_]*$")
        return v

    @field_validator("host_limits")
    @classmethod
    def _memory_limit_rule(cls, v: Optional[HostLimits], info: ValidationInfo) -> Optional[HostLimits]:
        mem = info.data.get("mem_size_mib")
        if v is not None and v.memory_limit_mib is not None and mem is not None and v.memory_limit_mib < mem + 64:
            raise ValueError(
                f"memory_limit_mib must be at least guest RAM + 64 ({mem + 64}), got {v.memory_limit_mib}"
            )
        return v

    def _native_json(self) -> str:
        return self.model_dump_json()


class NetworkConfig(BaseModel):
    """Network configuration of a VM (spec: NetworkConfig).

    ``mode`` is a smolvm extension: ``"tap"`` (a host TAP device; the guest is reachable at
    ``guest_ip``) or ``"user"`` (QEMU user networking, no privileges; reach SSH via
    ``ssh_host_port`` on 127.0.0.1). ``tap_device`` keeps the spec's ``str``: ``""`` in user mode,
    which has no TAP (the Rust library and the state store say ``None``/NULL).
    """

    model_config = ConfigDict(frozen=True)

    guest_ip: str
    gateway_ip: str
    netmask: str
    tap_device: str
    guest_mac: str
    ssh_host_port: Optional[int] = None
    mode: Literal["tap", "user"] = "tap"

    @field_validator("tap_device", mode="before")
    @classmethod
    def _no_tap_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v


class VMInfo(BaseModel):
    """Runtime information about a VM (spec: vm-info). Immutable: call ``vm.refresh()`` for news."""

    model_config = ConfigDict(frozen=True)

    vm_id: str
    status: VMState
    config: VMConfig
    network: Optional[NetworkConfig] = None
    pid: Optional[int] = None
    socket_path: Optional[Path] = None

    @classmethod
    def _from_native(cls, data: str) -> "VMInfo":
        return cls.model_validate_json(data, context={"check_paths": False})
