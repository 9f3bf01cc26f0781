"""smolvm: disposable, hardware-isolated Linux microVMs.

>>> from smolvm import SmolVM
>>> with SmolVM() as vm:                      # doctest: +SKIP
...     print(vm.run("uname -a").stdout)

Public names: :class:`SmolVM`, :class:`SmolVMManager`, :class:`VMConfig`, :class:`VMInfo`,
:class:`VMState`, :class:`NetworkConfig`, :class:`CommandResult`, :class:`ImageBuilder`,
:data:`SSH_BOOT_ARGS`; errors in :mod:`smolvm.exceptions`.
"""

from .build import SSH_BOOT_ARGS, ImageBuilder
from .exceptions import SmolVMError
from .types import HostLimits, NetworkAllowList, NetworkConfig, VMConfig, VMInfo, VMState
from .vm import CommandResult, SmolVM, SmolVMManager

__all__ = [
    "SmolVM",
    "SmolVMManager",
    "HostLimits",
    "VMConfig",
    "VMInfo",
    "VMState",
    "NetworkConfig",
    "NetworkAllowList",
    "CommandResult",
    "ImageBuilder",
    "SSH_BOOT_ARGS",
    "SmolVMError",
]

__version__ = "0.1.0"
