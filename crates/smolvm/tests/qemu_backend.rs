//! The QEMU backend against the real `qemu-system-x86_64` (microvm, TCG). Needs `SMOLVM_E2E=1`; skips
//! otherwise. The guest is a tiny PVH kernel written by the test: it prints a marker on the serial
//! console and halts, which exercises the whole argv (disk, rng, network, agent port, console, QMP)
//! without needing a real kernel image.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use smolvm::internals::backend::qemu::{QemuAccel, QemuBackend, QemuError};
use smolvm::internals::backend::{Backend, BackendError, LaunchSpec, NetAttachment};
use smolvm::HostCapabilities;

const MARKER: &str = "smolvm-pvh-ok";

/// The QEMU backend for tests, or `None` (skip) when SMOLVM_E2E is not 1. With SMOLVM_E2E=1 a missing
/// QEMU is a failure.
fn backend() -> Option<QemuBackend> {
    if std::env::var("SMOLVM_E2E").as_deref() != Ok("1") {
        eprintln!("skipping: real-QEMU test; set SMOLVM_E2E=1 to run it");
        return None;
    }
    let caps = HostCapabilities::detect();
    let q = caps.tools.qemu_system.as_ref().expect(
        "SMOLVM_E2E=1 but qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
    );
    Some(QemuBackend::new(
        q.path.clone(),
        QemuAccel::tcg(caps.tsc_khz, Some(32)),
    ))
}

/// A minimal 32-bit ELF with a Xen PVH entry note: writes MARKER to COM1, then `cli; hlt` forever.
fn pvh_kernel(path: &Path) {
    const BASE: u32 = 0x10_0000;
    const HDRS: u32 = 52 + 2 * 32;
    let mut note = Vec::new();
    for v in [4u32, 4, 18] {
        note.extend_from_slice(&v.to_le_bytes()); // namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
    }
    note.extend_from_slice(b"Xen\0");
    let entry = BASE + HDRS + note.len() as u32 + 4;
    note.extend_from_slice(&entry.to_le_bytes());
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in MARKER.bytes().chain(*b"\n") {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp hlt
    let filesz = HDRS + (note.len() + code.len()) as u32;

    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    for v in [2u16, 3] {
        elf.extend_from_slice(&v.to_le_bytes()); // ET_EXEC, EM_386
    }
    for v in [1u32, entry, 52, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes()); // version, entry, phoff, shoff, flags
    }
    for v in [52u16, 32, 2, 40, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    // PT_LOAD of the whole file, then PT_NOTE over the note (QEMU finds the PVH entry there).
    for v in [1u32, 0, BASE, BASE, filesz, filesz, 5, 4] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    let n = note.len() as u32;
    for v in [4u32, HDRS, BASE + HDRS, BASE + HDRS, n, n, 4, 4] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&note);
    elf.extend_from_slice(&code);
    fs::write(path, elf).unwrap();
}

fn spec(be: &QemuBackend, dir: &Path, vm_id: &str, net: Option<NetAttachment>) -> LaunchSpec {
    let kernel = dir.join("pvh.elf");
    pvh_kernel(&kernel);
    let disk = dir.join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    LaunchSpec {
        vm_id: vm_id.into(),
        vcpu_count: 1,
        mem_size_mib: 128,
        kernel,
        initrd: None,
        kernel_cmdline: "console=ttyS0".into(),
        disk,
        disk_read_only: false,
        net,
        control_socket: be.control_socket(dir, vm_id),
        agent: be.agent_endpoint(dir, vm_id),
        console_log: dir.join("console.log"),
        vmm_log: dir.join("vmm.log"),
        store: None,
        cgroup_procs: Vec::new(),
        run_as: None,
    }
}

/// Waits until the console log holds the marker `count` times (once per boot so far).
fn wait_for_marker(console: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if fs::read_to_string(console).is_ok_and(|s| s.matches(MARKER).count() >= count) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("guest never wrote {MARKER} to {}", console.display());
}

/// Pids of processes whose command line mentions `needle` (to prove nothing was left running).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Boots (the `boot`-th time on this console log), checks QMP and the console, and kills QEMU.
fn boot_and_quit(be: &QemuBackend, s: &LaunchSpec, boot: usize) {
    let id = be.launch(s).expect("launch");
    assert!(id.is_alive());
    assert!(s.control_socket.exists() && s.agent.path().exists());
    // QMP answers: a pause/resume round trip goes through the control socket.
    be.pause(&s.control_socket).expect("stop");
    be.resume(&s.control_socket).expect("cont");
    wait_for_marker(&s.console_log, boot);
    // The dummy guest ignores the ACPI button, but QEMU must accept the request.
    be.request_shutdown(&s.control_socket)
        .expect("system_powerdown");
    // Like the manager after its stop timeout: kill the process (ours, by its identity).
    assert!(id.kill());
    assert!(id.wait_gone(Duration::from_secs(30)), "QEMU still running");
    // The next launch over the same paths must cope with the sockets QEMU left behind.
}

#[test]
fn boots_tcg_microvm_with_user_network_talks_qmp_and_quits() {
    let Some(be) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = spec(
        &be,
        dir.path(),
        "vm-e2e-user",
        Some(NetAttachment::User {
            mac: "02:fc:00:00:00:01".into(),
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            ssh_host_port: Some(port),
        }),
    );
    boot_and_quit(&be, &s, 1);

    // A second start over the same paths works (stale state is handled) and the console log keeps
    // both boots.
    let mut again = s.clone();
    again.disk_read_only = true;
    again.net = None;
    boot_and_quit(&be, &again, 2);
    let console = fs::read_to_string(&s.console_log).unwrap();
    assert_eq!(console.matches(MARKER).count(), 2, "{console}");
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let Some(be) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&be, dir.path(), "vm-e2e-fail", None);
    s.kernel = dir.path().join("no-such-kernel");
    let err = be.launch(&s).unwrap_err();
    let BackendError::Qemu(QemuError::ExitedEarly { tail, .. }) = &err else {
        panic!("unexpected error: {err:?}");
    };
    assert!(tail.contains("no-such-kernel"), "{tail}");
    assert!(!s.control_socket.exists());
    assert!(!s.agent.path().exists());
    assert_eq!(
        processes_mentioning(&s.control_socket.to_string_lossy()),
        Vec::<u32>::new()
    );

    // A socket path beyond sun_path is refused before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let long_dir = dir.path().join("d".repeat(100));
    fs::create_dir_all(&long_dir).unwrap();
    let mut s = spec(&be, dir.path(), "vm-e2e-long", None);
    s.control_socket = be.control_socket(&long_dir, "vm-e2e-long");
    let err = be.launch(&s).unwrap_err();
    assert!(
        matches!(err, BackendError::Qemu(QemuError::SocketPathTooLong { .. })),
        "{err:?}"
    );
    assert!(!dir.path().join("vmm.log").exists(), "QEMU was started");
}

/// Deletes the network namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

#[test]
fn boots_with_a_tap_inside_a_private_network_namespace() {
    let Some(be) = backend() else { return };
    // Network rule: the TAP lives in a namespace this test creates and deletes.
    let ns = Netns(format!("smolvm-qemu-{}", std::process::id()));
    run(&["ip", "netns", "add", &ns.0]);
    run(&[
        "ip", "-n", &ns.0, "tuntap", "add", "dev", "smq0", "mode", "tap",
    ]);
    run(&["ip", "-n", &ns.0, "link", "set", "smq0", "up"]);

    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        &be,
        dir.path(),
        "vm-e2e-tap",
        Some(NetAttachment::Tap {
            tap: "smq0".into(),
            mac: "02:fc:00:00:00:02".into(),
        }),
    );
    let ns_path = PathBuf::from(format!("/run/netns/{}", ns.0));
    // Namespaces are per thread, and a spawned process inherits the spawning thread's: enter the
    // namespace on a thread of our own, so QEMU starts inside it and the test process stays outside.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let f = fs::File::open(&ns_path).unwrap();
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                boot_and_quit(&be, &s, 1);
            })
            .join()
            .unwrap();
    });
}
