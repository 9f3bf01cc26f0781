"""The code examples of the five spec files (shared/spec/*.txt), verbatim. test_spec_examples.py
runs each with only the placeholder paths replaced by a built image. Sequences the spec shows as
consecutive steps of one session are joined into one example."""

# vm-config.txt ---------------------------------------------------------------------------------
CONFIG_BASIC = '''
from smolvm import VMConfig
from pathlib import Path

config = VMConfig(
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
)

print(config.vm_id)  # Auto-generated, e.g., "vm-a1b2c3d4"
print(config.vcpu_count)  # 2 (default)
print(config.mem_size_mib)  # 512 (default)
'''

CONFIG_CUSTOM = '''
from smolvm import VMConfig
from pathlib import Path

config = VMConfig(
    vm_id="my-custom-vm",
    vcpu_count=4,
    mem_size_mib=2048,
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
)
'''

CONFIG_SSH_ENV = '''
from smolvm import VMConfig, SSH_BOOT_ARGS
from pathlib import Path

config = VMConfig(
    vm_id="api-server",
    vcpu_count=2,
    mem_size_mib=1024,
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/alpine-ssh.ext4"),
    boot_args=SSH_BOOT_ARGS,  # Includes init=/init for SSH support
    env_vars={
        "API_KEY": "secret-key",
        "DATABASE_URL": "postgresql://localhost/mydb",
        "LOG_LEVEL": "debug",
    },
)
'''

CONFIG_SHARED = '''
from smolvm import VMConfig
from pathlib import Path

# Multiple VMs can boot from the same rootfs
config = VMConfig(
    vm_id="shared-vm-1",
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/shared/rootfs.ext4"),
    disk_mode="shared",
)
'''

CONFIG_PERSISTENT = '''
from smolvm import VMConfig
from pathlib import Path

# Keep VM disk after deletion for state persistence
config = VMConfig(
    vm_id="stateful-vm",
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
    disk_mode="isolated",
    retain_disk_on_delete=True,
)

# Later, create a new VM with the same ID to reuse the disk
config2 = VMConfig(
    vm_id="stateful-vm",  # Same ID
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
    disk_mode="isolated",
)
'''

CONFIG_QEMU = '''
from smolvm import VMConfig
from pathlib import Path

config = VMConfig(
    vm_id="qemu-vm",
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
    backend="qemu",
    boot_args="console=ttyAMA0 reboot=k panic=1 init=/init",
)
'''

# The spec says the assignment raises; the test checks it raises pydantic's ValidationError.
CONFIG_IMMUTABLE = '''
config = VMConfig(
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
)

# This raises an error
config.vcpu_count = 4  # ValidationError: "VMConfig" is frozen
'''

CONFIG_IMMUTABLE_AFTER = '''
# Instead, create a new instance
from pydantic import BaseModel

new_config = config.model_copy(update={"vcpu_count": 4})
'''

CONFIG_WITH_SMOLVM = '''
from smolvm import SmolVM, VMConfig
from pathlib import Path

config = VMConfig(
    vm_id="my-vm",
    vcpu_count=2,
    mem_size_mib=512,
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
    boot_args="console=ttyS0 reboot=k panic=1 init=/init",
)

with SmolVM(config) as vm:
    result = vm.run("echo 'Hello from configured VM'")
    print(result.stdout)
'''

CONFIG_IMAGE_BUILDER = '''
from smolvm import ImageBuilder, VMConfig, SmolVM
from pathlib import Path

# Build an SSH-capable Alpine Linux image
builder = ImageBuilder()
public_key = Path("~/.ssh/id_rsa.pub").expanduser().read_text()

kernel, rootfs = builder.build_alpine_ssh_key(
    public_key=public_key,
    name="my-alpine",
    rootfs_size_mb=512,
)

# Use the built images in VMConfig
config = VMConfig(
    vm_id="alpine-vm",
    kernel_path=kernel,
    rootfs_path=rootfs,
    boot_args="console=ttyS0 reboot=k panic=1 init=/init",
)

with SmolVM(config) as vm:
    result = vm.run("cat /etc/os-release")
    print(result.stdout)
'''

# vm-info.txt -----------------------------------------------------------------------------------
INFO_ACCESS = '''
from smolvm import SmolVM

with SmolVM() as vm:
    info = vm.info
    
    print(f"VM ID: {info.vm_id}")
    print(f"Status: {info.status.value}")
    print(f"vCPUs: {info.config.vcpu_count}")
    print(f"Memory: {info.config.mem_size_mib} MiB")
    
    if info.network:
        print(f"Guest IP: {info.network.guest_ip}")
        print(f"TAP device: {info.network.tap_device}")
    
    if info.pid:
        print(f"Process ID: {info.pid}")
'''

INFO_STATUS = '''
from smolvm import SmolVM, VMState

with SmolVM() as vm:
    info = vm.info
    
    if info.status == VMState.RUNNING:
        print("VM is running")
        result = vm.run("hostname")
        print(f"Hostname: {result.output}")
    elif info.status == VMState.STOPPED:
        print("VM is stopped")
        vm.start()
    elif info.status == VMState.ERROR:
        print("VM encountered an error")
'''

INFO_NETWORK = '''
from smolvm import SmolVM

with SmolVM() as vm:
    info = vm.info
    
    if info.network:
        print(f"Guest IP: {info.network.guest_ip}")
        print(f"Gateway: {info.network.gateway_ip}")
        print(f"Netmask: {info.network.netmask}")
        print(f"MAC: {info.network.guest_mac}")
        
        if info.network.ssh_host_port:
            print(f"SSH available at: localhost:{info.network.ssh_host_port}")
    else:
        print("VM has no network configuration")
'''

INFO_CONFIG = '''
from smolvm import SmolVM

with SmolVM() as vm:
    config = vm.info.config
    
    print(f"Kernel: {config.kernel_path}")
    print(f"Rootfs: {config.rootfs_path}")
    print(f"Boot args: {config.boot_args}")
    print(f"Backend: {config.backend or 'auto'}")
    print(f"Disk mode: {config.disk_mode}")
    
    if config.env_vars:
        print("Environment variables:")
        for key, value in config.env_vars.items():
            print(f"  {key}={value}")
'''

INFO_REFRESH = '''
from smolvm import SmolVM
import time

vm = SmolVM()
vm.start()

print(f"Initial status: {vm.info.status.value}")
print(f"Initial PID: {vm.info.pid}")

# Perform some operations...
time.sleep(5)

# Refresh to get latest state
vm.refresh()

print(f"Current status: {vm.info.status.value}")
print(f"Current PID: {vm.info.pid}")

vm.stop()
vm.delete()
vm.close()
'''

INFO_OUTSIDE_CM = '''
from smolvm import SmolVM, VMConfig
from pathlib import Path

config = VMConfig(
    vm_id="my-vm",
    vcpu_count=2,
    mem_size_mib=512,
    kernel_path=Path("/path/to/vmlinux"),
    rootfs_path=Path("/path/to/rootfs.ext4"),
)

vm = SmolVM(config)
info = vm.info

print(f"Created VM: {info.vm_id}")
print(f"Status: {info.status.value}")  # created

vm.start()
vm.refresh()  # Update info

info = vm.info
print(f"Status after start: {info.status.value}")  # running
print(f"Process PID: {info.pid}")

vm.close()
'''

INFO_PSUTIL = '''
from smolvm import SmolVM
import psutil

with SmolVM() as vm:
    info = vm.info
    
    if info.pid:
        try:
            process = psutil.Process(info.pid)
            print(f"Process name: {process.name()}")
            print(f"CPU percent: {process.cpu_percent(interval=1.0)}%")
            print(f"Memory: {process.memory_info().rss / 1024 / 1024:.2f} MiB")
        except psutil.NoSuchProcess:
            print(f"Process {info.pid} not found")
'''

INFO_SOCKET = '''
from smolvm import SmolVM

with SmolVM() as vm:
    info = vm.info
    
    if info.socket_path:
        print(f"Firecracker socket: {info.socket_path}")
'''

INFO_COMPARE = '''
from smolvm import SmolVM

vm1 = SmolVM(mem_size_mib=512)
vm2 = SmolVM(mem_size_mib=1024)

vm1.start()
vm2.start()

info1 = vm1.info
info2 = vm2.info

print(f"VM1 memory: {info1.config.mem_size_mib} MiB")
print(f"VM2 memory: {info2.config.mem_size_mib} MiB")
print(f"VM1 IP: {info1.network.guest_ip if info1.network else 'N/A'}")
print(f"VM2 IP: {info2.network.guest_ip if info2.network else 'N/A'}")

vm1.stop()
vm2.stop()
vm1.delete()
vm2.delete()
vm1.close()
vm2.close()
'''

INFO_PERSIST = '''
from smolvm import SmolVM
import json

with SmolVM() as vm:
    info = vm.info
    
    # Convert to dict for serialization
    info_dict = {
        "vm_id": info.vm_id,
        "status": info.status.value,
        "vcpu_count": info.config.vcpu_count,
        "mem_size_mib": info.config.mem_size_mib,
        "guest_ip": info.network.guest_ip if info.network else None,
        "pid": info.pid,
    }
    
    # Save to file
    with open(f"/tmp/{info.vm_id}.json", "w") as f:
        json.dump(info_dict, f, indent=2)
    
    print(f"VM info saved to /tmp/{info.vm_id}.json")
'''

# The spec notes the VM was deleted by the context manager: from_id raises VMNotFoundError.
INFO_RECONNECT = '''
from smolvm import SmolVM

# First session: create and use VM
with SmolVM() as vm:
    vm_id = vm.info.vm_id
    print(f"Created VM: {vm_id}")
    vm.run("echo 'First session'")

# Second session: reconnect to the same VM
# (Note: The VM was deleted by the context manager above,
# so this is just for illustration)
reconnected_vm = SmolVM.from_id(vm_id)
'''

INFO_IMMUTABLE = '''
from smolvm import SmolVM, VMState
with SmolVM() as vm:
    info = vm.info
    
    # This raises an error
    try:
        info.status = VMState.STOPPED  # ValidationError: "VMInfo" is frozen
        raise AssertionError("assignment did not raise")
    except ValidationError as e:
        assert "frozen" in str(e)
    
    # To get updated info, call refresh()
    vm.refresh()
    updated_info = vm.info
'''

# vm-lifecycle.txt ------------------------------------------------------------------------------
LIFECYCLE_STEPS = '''
from smolvm import SmolVM
# Auto-configuration mode
vm = SmolVM()
print(f"Created VM: {vm.vm_id}")
print(f"Status: {vm.status}")  # VMState.CREATED
assert vm.status == VMState.CREATED

vm.start(boot_timeout=30.0)
print(f"VM started: {vm.status}")  # VMState.RUNNING
print(f"IP address: {vm.get_ip()}")
assert vm.status == VMState.RUNNING
assert vm.start() is vm  # already running: no-op, chainable

vm.stop(timeout=3.0)
print(f"VM stopped: {vm.status}")  # VMState.STOPPED
assert vm.status == VMState.STOPPED

vm.delete()
# VM is now removed from state database
# All network resources are cleaned up
'''

LIFECYCLE_CM = '''
from smolvm import SmolVM

with SmolVM() as vm:
    # VM automatically starts on context entry
    print(f"VM running: {vm.vm_id}")
    result = vm.run("hostname")
    print(result.output)
    # VM automatically stops and deletes on context exit

# VM is created, started, and cleaned up automatically
with SmolVM() as vm:
    vm.run("echo 'hello'")
# VM is now deleted
'''

LIFECYCLE_RECONNECT = '''
from smolvm import SmolVM

# Create a VM without context manager
vm = SmolVM()
vm.start()
vm_id = vm.vm_id
vm.close()  # Release resources but don't delete

# Later, reconnect to the same VM
vm2 = SmolVM.from_id(vm_id)
print(f"Reconnected to {vm2.vm_id}")
print(f"Status: {vm2.status}")  # VMState.RUNNING

# Continue using the VM
result = vm2.run("uptime")
print(result.output)
'''

LIFECYCLE_MANUAL = '''
from smolvm import SmolVM

try:
    # Create but don't start
    vm = SmolVM()
    print(f"VM created: {vm.vm_id} (status: {vm.status})")

    # Manually start when ready
    vm.start()
    print(f"VM started (status: {vm.status})")

    # Do work
    result = vm.run("cat /etc/os-release")
    print(result.output)

    # Manually stop
    vm.stop()
    print(f"VM stopped (status: {vm.status})")

finally:
    # Clean up resources
    vm.delete()
    print("VM deleted")
'''

LIFECYCLE_LONG_RUNNING_1 = '''
from smolvm import SmolVM, VMConfig
from smolvm.build import ImageBuilder, SSH_BOOT_ARGS

builder = ImageBuilder()
kernel, rootfs = builder.build_alpine_ssh()

config = VMConfig(
    vm_id="persistent-agent-vm",  # Stable, reusable ID
    vcpu_count=2,
    mem_size_mib=2048,
    kernel_path=kernel,
    rootfs_path=rootfs,
    boot_args=SSH_BOOT_ARGS,
)

vm = SmolVM(config)
vm.start()
print(f"Created persistent VM: {vm.vm_id}")
vm.close()  # Release SDK resources, keep VM running
'''

LIFECYCLE_LONG_RUNNING_2 = '''
from smolvm import SmolVM

# In a different Python session or script
vm = SmolVM.from_id("persistent-agent-vm")
print(f"Reconnected to {vm.vm_id}")
print(f"Status: {vm.status}")

result = vm.run("uptime")
print(result.output)
'''

LIFECYCLE_LONG_RUNNING_3 = '''
vm = SmolVM.from_id("persistent-agent-vm")
vm.stop()
vm.delete()
print("VM permanently deleted")
'''

LIFECYCLE_WAIT_SSH = '''
vm = SmolVM()
vm.start()

# Wait up to 60 seconds for SSH
vm.wait_for_ssh(timeout=60.0)
print("SSH is ready")

# Now run commands
result = vm.run("whoami")
print(result.output)
'''

LIFECYCLE_REFRESH = '''
vm = SmolVM.from_id("my-vm")
print(vm.status)  # Cached value

vm.refresh()
print(vm.status)  # Fresh value from database
'''

# vm-management-overview.txt --------------------------------------------------------------------
OVERVIEW_AUTO = '''
from smolvm import SmolVM

# Auto-configured VM with sensible defaults
with SmolVM() as vm:
    print(f"VM ID: {vm.vm_id}")
    print(f"IP Address: {vm.get_ip()}")
    result = vm.run("uname -a")
    print(result.stdout)
'''

OVERVIEW_SIZED = '''
with SmolVM(mem_size_mib=1024, disk_size_mib=1024) as vm:
    result = vm.run("free -h")
    print(result.output)
'''

OVERVIEW_MANUAL = '''
from smolvm import ImageBuilder
from smolvm.build import SSH_BOOT_ARGS

builder = ImageBuilder()
kernel, rootfs = builder.build_alpine_ssh(
    name="my-custom-image",
    ssh_password="secure-password",
    rootfs_size_mb=1024
)

from smolvm import VMConfig

config = VMConfig(
    vm_id="my-vm",
    vcpu_count=2,
    mem_size_mib=1024,
    kernel_path=kernel,
    rootfs_path=rootfs,
    boot_args=SSH_BOOT_ARGS,
)

from smolvm import SmolVM

vm = SmolVM(config)
vm.start()
print(f"VM running at {vm.get_ip()}")

vm.stop(timeout=3.0)
print(vm.status)  # VMState.STOPPED

vm.start(boot_timeout=30.0)

# Check status
print(vm.status)  # VMState.RUNNING

# Refresh cached information from the state store
vm.refresh()
print(vm.info)  # Updated VMInfo

vm.delete()
'''

OVERVIEW_CM_CONFIG = '''
with SmolVM(config) as vm:
    # VM automatically starts on context entry
    result = vm.run("hostname")
    print(result.output)
    # VM automatically stops and deletes on context exit
'''

OVERVIEW_MANUAL_LIFECYCLE = '''
from smolvm import SmolVM, VMConfig

vm = SmolVM(config)
try:
    vm.start()
    # Do work...
    result = vm.run("uptime")
    print(result.output)
finally:
    vm.stop()
    vm.delete()
    vm.close()
'''

OVERVIEW_ERRORS = '''
from smolvm import SmolVM
from smolvm.exceptions import SmolVMError, OperationTimeoutError

try:
    with SmolVM(mem_size_mib=512) as vm:
        result = vm.run("some-command", timeout=10)
        if not result.ok:
            print(f"Command failed: {result.stderr}")
except OperationTimeoutError as e:
    print(f"Operation timed out: {e.message}")
except SmolVMError as e:
    print(f"VM error: {e}")
'''

OVERVIEW_PROPERTIES = '''
with SmolVM() as vm:
    # Unique identifier
    print(vm.vm_id)
    
    # Current status (VMState enum)
    print(vm.status)  # VMState.RUNNING
    
    # Full VM information
    print(vm.info)  # VMInfo object
    
    # Guest IP address
    print(vm.get_ip())
    
    # Data directory
    print(vm.data_dir)
    
    # Check if commands can be executed
    print(vm.can_run_commands())  # True for SSH-capable VMs
'''

# vm-manager.txt --------------------------------------------------------------------------------
MANAGER_CONSTRUCT = '''
from smolvm.vm import SmolVMManager
from pathlib import Path
# Use default data directory resolution
sdk = SmolVMManager()
# Or specify custom paths
sdk = SmolVMManager(
data_dir=Path("/custom/state"),
socket_dir=Path("/custom/sockets"),
backend="firecracker",
)
'''

MANAGER_LIFECYCLE = '''
from smolvm.vm import SmolVMManager
from smolvm.types import VMConfig
from pathlib import Path
sdk = SmolVMManager()
config = VMConfig(
vm_id="test-vm",
vcpu_count=2,
mem_size_mib=512,
kernel_path=Path("/path/to/kernel"),
rootfs_path=Path("/path/to/rootfs.ext4"),
boot_args="console=ttyS0 reboot=k panic=1 pci=off init=/init",
)
vm_info = sdk.create(config)
print(f"Created VM: {vm_info.vm_id} with IP {vm_info.network.guest_ip}")

from smolvm.vm import SmolVMManager
sdk = SmolVMManager.from_id("test-vm")
info = sdk.get("test-vm")
print(info.status)

sdk.start("test-vm")

from smolvm.vm import SmolVMManager
from smolvm.types import VMState
sdk = SmolVMManager()
# List all VMs
all_vms = sdk.list_vms()
# List only running VMs
running = sdk.list_vms(status=VMState.RUNNING)
for vm in running:
    print(f"{vm.vm_id}: {vm.network.guest_ip}")
assert [v.vm_id for v in running] == ["test-vm"]

sdk = SmolVMManager()
stale_vms = sdk.reconcile()
if stale_vms:
    print(f"Found {len(stale_vms)} stale VMs: {stale_vms}")

sdk = SmolVMManager()
commands = sdk.get_ssh_commands(
"test-vm",
ssh_user="ubuntu",
key_path="~/.ssh/id_ed25519",
)
print("SSH via localhost:", commands["localhost_port"])
print("SSH via private IP:", commands["private_ip"])

sdk = SmolVMManager()
errors = sdk.check_prerequisites()
if errors:
    print("Prerequisites missing:")
    for error in errors:
        print(f" - {error}")
else:
    print("All prerequisites met!")

sdk.stop("test-vm")
sdk.delete("test-vm")

with SmolVMManager() as sdk:
    vm_info = sdk.create(config)
    sdk.start(vm_info.vm_id)
    # Resources automatically released on exit
sdk.close()
sdk.close()
print(sdk.data_dir, sdk.socket_dir, sdk.backend, sdk.disk_dir)
SmolVMManager().delete("test-vm")
'''
