//! The QEMU command line, built by a pure function so tests can assert it whole.
//!
//! Every option below exists in QEMU 7.2 (Debian 12) and later; the integration tests run the result
//! against the installed binary. Choices:
//! * `-M microvm,acpi=on`: the guest kernel (Debian cloud) cannot take virtio-mmio devices from its
//!   command line, so they are described in ACPI. Under TCG `pit=on`, else timer calibration can hang.
//! * `-cpu host` under KVM; `-cpu max` under TCG (every feature TCG emulates, including RDRAND; boots as
//!   fast as `qemu64` in measurements).
//! * `-accel tcg,tb-size=N`: QEMU's default translation cache is sized for big guests and costs host
//!   memory (about 128 MiB of RSS for a 128 MiB guest); see `TCG_TB_SIZE_MIB`.
//! * `tsc_early_khz=<host kHz>` appended under TCG: the guest TSC runs at the host rate, and telling the
//!   kernel avoids a calibration that hangs about one boot in ten under load.
//! * `tsc=reliable` appended under TCG: the guest TSC is the host's (constant, shared by every vCPU),
//!   but microvm has no HPET or ACPI PM timer, so the kernel's clocksource watchdog checks it against
//!   jiffies, which lose ticks when the host is busy. The watchdog then calls the TSC unstable and
//!   the guest keeps time with jiffies (seen on loaded boots here); `tsc=reliable` skips that check.
//! * An ELF kernel (`vmlinux`) is entered through PVH, skipping the bzImage's real-mode setup and
//!   decompression. That setup code is also what masks the i8259: microvm's ACPI tables say
//!   "hardware reduced", so Linux never touches the PIC itself, and on a PVH entry a PIT tick then
//!   arrives through the unprogrammed PIC as vector 0 once interrupts are enabled (a triple fault in
//!   about one loaded boot in six, traced with `-d int`). `pic=off` removes the PIC for such boots.
//! * virtio-rng on every accelerator: without RDRAND (TCG, older CPUs) the guest blocks waiting for
//!   entropy, and it costs nothing where RDRAND exists.
//! * `-sandbox` ([`SANDBOX`]): QEMU's seccomp filter, installed before any guest code runs. It denies
//!   obsolete syscalls, setuid/setgid and friends, fork/exec and scheduler/affinity changes. Nothing
//!   smolvm asks of QEMU needs them: no `-daemonize` (smolvm detaches QEMU itself), no helper scripts
//!   (`script=no`, the TAP device already exists), snapshots migrate to a `file:` URI (no `exec:`).
//!   Measured with QEMU 10.0.2 under TCG: boot, exec, pause/resume, snapshot, restore and fork all work.
//! * `-run-with user=UID:GID` when the spec names a VMM user ([`crate::vmm_user`]): QEMU drops root
//!   after opening its files and devices and before the guest runs; the sandbox then allows the
//!   set*id calls QEMU itself makes for that ([`SANDBOX_DROPPING_ROOT`]).
//! * Paths go into `key=value` option strings, where a comma separates options: commas in paths are
//!   doubled (QEMU's escape), so no path can inject options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::QemuAccel;
use crate::backend::{LaunchSpec, NetAttachment};
use crate::host::Accelerator;

/// The name of the guest's virtio-serial port for the agent (shared with the agent).
pub(crate) use smolvm_protocol::AGENT_PORT_NAME;

/// QEMU's seccomp sandbox: every optional denial on (`spawn=deny` also blocks `-daemonize`, which
/// smolvm does not use).
pub(crate) const SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The sandbox of a QEMU that switches user (`-run-with user=`): QEMU installs its seccomp filter
/// before it drops root, so `elevateprivileges=deny` would kill it at its own `setgid` ("Bad system
/// call", checked with QEMU 10.0.2). Allowing the set*id calls gives the dropped process nothing:
/// after `setuid` from root to another id it holds no capabilities, so it can only "change" to the
/// ids it already has, and `spawn=deny` still stops it from executing a setuid binary.
pub(crate) const SANDBOX_DROPPING_ROOT: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// The image format of a root disk: `qcow2` for the overlays of VMs made from a snapshot (their
/// backing file is the snapshot's disk), `raw` for everything else.
pub(crate) fn disk_format(disk: &Path) -> &'static str {
    if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// How QEMU enters the guest kernel, decided by the kernel file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelEntry {
    /// A bzImage (Linux boot protocol: real-mode setup, then decompression).
    BzImage,
    /// An uncompressed ELF `vmlinux` with a PVH note, entered directly in 32-bit protected mode.
    Pvh,
}

impl KernelEntry {
    /// [`Pvh`](Self::Pvh) if `kernel` starts with the ELF magic, else [`BzImage`](Self::BzImage) (an
    /// unreadable file too: QEMU reports that with the path when it starts).
    pub(crate) fn detect(kernel: &Path) -> KernelEntry {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let is_elf = std::fs::File::open(kernel)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if is_elf {
            KernelEntry::Pvh
        } else {
            KernelEntry::BzImage
        }
    }
}

/// The complete argv (program first) that boots `spec` with `accel`, the kernel entry detected from
/// the kernel file.
pub fn build_argv(binary: &Path, spec: &LaunchSpec, accel: QemuAccel) -> Vec<OsString> {
    build_argv_for(binary, spec, accel, KernelEntry::detect(&spec.kernel))
}

/// The fd set a QEMU that drops root finds its writable root disk in.
pub(crate) const DISK_FDSET: u32 = 3;

/// Descriptors of the root disk that QEMU inherits instead of opening a path: read-write and
/// read-only, because QEMU reopens the disk with the other access mode around a migration
/// (inactivate/activate) and picks the matching descriptor of the set. A QEMU that has dropped root
/// may not be able to reach the disk's path at all (root's home is 0700).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskFds {
    /// Opened read-write.
    pub rw: std::os::fd::RawFd,
    /// Opened read-only.
    pub ro: std::os::fd::RawFd,
}

/// [`build_argv`] with the root disk given as `disk_fds` (in [`DISK_FDSET`]) when there are some.
pub(crate) fn build_argv_with_disk(
    binary: &Path,
    spec: &LaunchSpec,
    accel: QemuAccel,
    disk_fds: Option<DiskFds>,
) -> Vec<OsString> {
    build_argv_full(
        binary,
        spec,
        accel,
        KernelEntry::detect(&spec.kernel),
        disk_fds,
    )
}

/// The complete argv (program first) that boots `spec` with `accel`, entering the kernel as `entry`.
pub(crate) fn build_argv_for(
    binary: &Path,
    spec: &LaunchSpec,
    accel: QemuAccel,
    entry: KernelEntry,
) -> Vec<OsString> {
    build_argv_full(binary, spec, accel, entry, None)
}

fn build_argv_full(
    binary: &Path,
    spec: &LaunchSpec,
    accel: QemuAccel,
    entry: KernelEntry,
    disk_fds: Option<DiskFds>,
) -> Vec<OsString> {
    let mut a = Argv(vec![binary.as_os_str().to_owned()]);
    a.push("-name");
    a.push(opt("guest=", Path::new(&spec.vm_id)));
    // See the module comment: a PVH entry leaves the i8259 unmasked and unprogrammed.
    let pic = match entry {
        KernelEntry::BzImage => "",
        KernelEntry::Pvh => ",pic=off",
    };
    match accel.accelerator {
        Accelerator::Kvm => {
            a.push("-M");
            a.push(format!("microvm,acpi=on{pic}"));
            a.push_all(&["-accel", "kvm", "-cpu", "host"]);
        }
        Accelerator::Tcg => {
            a.push("-M");
            a.push(format!("microvm,acpi=on,pit=on{pic}"));
            a.push("-accel");
            a.push(match accel.tb_size_mib {
                Some(mib) => format!("tcg,tb-size={mib}"),
                None => "tcg".to_string(),
            });
            a.push_all(&["-cpu", "max"]);
        }
    }
    a.push("-m");
    a.push(format!("{}M", qemu_mem_mib(spec)));
    a.push("-smp");
    a.push(spec.vcpu_count.to_string());
    a.push_all(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);

    // -kernel, -initrd and -append take their value verbatim (no option parsing).
    a.push("-kernel");
    a.push(spec.kernel.as_os_str());
    if let Some(initrd) = &spec.initrd {
        a.push("-initrd");
        a.push(initrd.as_os_str());
    }
    let mut cmdline = spec.kernel_cmdline.clone();
    if accel.accelerator == Accelerator::Tcg {
        if let Some(khz) = accel.tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline.push_str(" tsc=reliable");
    }
    a.push("-append");
    a.push(cmdline);

    // Root disk.
    let prefix = if disk_format(&spec.disk) == "qcow2" {
        "id=root,format=qcow2,if=none,file="
    } else {
        "id=root,format=raw,if=none,file="
    };
    let mut drive = match disk_fds {
        Some(fds) => {
            for fd in [fds.rw, fds.ro] {
                a.push("-add-fd");
                a.push(format!("fd={fd},set={DISK_FDSET}"));
            }
            // QEMU's image locks are per open file: with the disk reopened on the set's other
            // descriptor it would conflict with itself ("Failed to get write lock"). The disk is this
            // VM's own file and the VM lock already keeps a second VMM off it.
            OsString::from(format!("{prefix}/dev/fdset/{DISK_FDSET},file.locking=off"))
        }
        None => opt(prefix, &spec.disk),
    };
    drive.push(if spec.disk_read_only {
        ",readonly=on"
    } else {
        // Let the guest's discards punch holes, so a sparse per-VM clone stays sparse.
        ",discard=unmap"
    });
    a.push("-drive");
    a.push(drive);
    a.push_all(&["-device", "virtio-blk-device,drive=root"]);

    a.push_all(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ]);

    match &spec.net {
        Some(NetAttachment::Tap { tap, mac }) => {
            let mut netdev = opt("tap,id=net0,ifname=", Path::new(tap));
            netdev.push(",script=no,downscript=no");
            a.push("-netdev");
            a.push(netdev);
            a.push("-device");
            a.push(format!("virtio-net-device,netdev=net0,mac={mac}"));
        }
        Some(NetAttachment::User {
            mac,
            guest_ip,
            ssh_host_port,
        }) => {
            let o = guest_ip.octets();
            let mut netdev = format!(
                "user,id=net0,net={}.{}.{}.0/24,dhcpstart={guest_ip}",
                o[0], o[1], o[2]
            );
            if let Some(port) = ssh_host_port {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-{guest_ip}:22"));
            }
            a.push("-netdev");
            a.push(netdev);
            a.push("-device");
            a.push(format!("virtio-net-device,netdev=net0,mac={mac}"));
        }
        None => {}
    }

    // Agent channel: a virtio-serial port backed by a Unix socket QEMU listens on.
    a.push_all(&["-device", "virtio-serial-device,id=vser0"]);
    let mut agent = opt("socket,id=agent,path=", spec.agent.path());
    agent.push(",server=on,wait=off");
    a.push("-chardev");
    a.push(agent);
    a.push("-device");
    a.push(format!(
        "virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}"
    ));

    // Serial console, appended so that a restarted VM's earlier boots stay readable.
    let mut console = opt("file,id=console,path=", &spec.console_log);
    console.push(",append=on");
    a.push("-chardev");
    a.push(console);
    a.push_all(&["-serial", "chardev:console"]);

    // QMP control socket.
    let mut qmp = opt("socket,id=qmp,path=", &spec.control_socket);
    qmp.push(",server=on,wait=off");
    a.push("-chardev");
    a.push(qmp);
    a.push_all(&["-mon", "chardev=qmp,mode=control"]);
    match spec.run_as {
        // QEMU opens every file, socket and device above as the caller, then switches to the VM's
        // own user before the guest runs (`-runas` is deprecated in favour of this).
        Some(user) => {
            a.push_all(&["-sandbox", SANDBOX_DROPPING_ROOT, "-run-with"]);
            a.push(format!("user={}:{}", user.uid, user.gid));
        }
        None => a.push_all(&["-sandbox", SANDBOX]),
    }
    a.0
}

/// Guest RAM to give QEMU. With exactly 2048 MiB and an initramfs, QEMU 10's microvm resets the guest
/// during the bzImage's real-mode setup (right after "Probing EDD"; QEMU exits with status 0) - 2047,
/// 2049, 2560 and 3000 MiB, or no initramfs, boot (measured, QEMU 10.0.2 TCG). That size gets one MiB
/// more, which the guest sees in `free`.
fn qemu_mem_mib(spec: &LaunchSpec) -> u32 {
    if spec.mem_size_mib == 2048 && spec.initrd.is_some() {
        2049
    } else {
        spec.mem_size_mib
    }
}

struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, s: impl AsRef<OsStr>) {
        self.0.push(s.as_ref().to_owned());
    }
    fn push_all(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(OsString::from));
    }
}

/// `prefix` followed by `path` with commas doubled (QEMU's escape inside option strings).
fn opt(prefix: &str, path: &Path) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

#[cfg(test)]
#[path = "argv_tests.rs"]
mod tests;
