use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;
use crate::backend::AgentEndpoint;

fn spec() -> LaunchSpec {
    LaunchSpec {
        vm_id: "vm-1234abcd".into(),
        vcpu_count: 2,
        mem_size_mib: 512,
        kernel: PathBuf::from("/img/vmlinuz"),
        initrd: None,
        kernel_cmdline: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        disk: PathBuf::from("/data/disks/vm-1234abcd.ext4"),
        disk_read_only: false,
        net: None,
        control_socket: PathBuf::from("/tmp/smolvm-0/vm-1234abcd.qmp"),
        agent: AgentEndpoint::UnixSocket(PathBuf::from("/tmp/smolvm-0/vm-1234abcd.agent")),
        console_log: PathBuf::from("/data/vms/vm-1234abcd/console.log"),
        vmm_log: PathBuf::from("/data/vms/vm-1234abcd/vmm.log"),
        store: None,
        cgroup_procs: Vec::new(),
        run_as: None,
    }
}

fn strings(argv: Vec<OsString>) -> Vec<String> {
    argv.into_iter()
        .map(|a| a.into_string().expect("utf-8 argv"))
        .collect()
}

/// The part after the disk, which only the network changes.
fn tail(net: &[&str]) -> Vec<String> {
    let mut v: Vec<&str> = vec![
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ];
    v.extend_from_slice(net);
    v.extend_from_slice(&[
        "-device",
        "virtio-serial-device,id=vser0",
        "-chardev",
        "socket,id=agent,path=/tmp/smolvm-0/vm-1234abcd.agent,server=on,wait=off",
        "-device",
        "virtserialport,bus=vser0.0,chardev=agent,name=org.smolvm.agent",
        "-chardev",
        "file,id=console,path=/data/vms/vm-1234abcd/console.log,append=on",
        "-serial",
        "chardev:console",
        "-chardev",
        "socket,id=qmp,path=/tmp/smolvm-0/vm-1234abcd.qmp,server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    v.into_iter().map(String::from).collect()
}

fn expect(head: &[&str], net: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    v.extend(tail(net));
    v
}

#[test]
fn kvm_without_network() {
    let argv = strings(build_argv(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &spec(),
        QemuAccel::KVM,
    ));
    assert_eq!(
        argv,
        expect(
            &[
                "/usr/bin/qemu-system-x86_64",
                "-name",
                "guest=vm-1234abcd",
                "-M",
                "microvm,acpi=on",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "512M",
                "-smp",
                "2",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-kernel",
                "/img/vmlinuz",
                "-append",
                "console=ttyS0 reboot=k panic=1 pci=off",
                "-drive",
                "id=root,format=raw,if=none,file=/data/disks/vm-1234abcd.ext4,discard=unmap",
                "-device",
                "virtio-blk-device,drive=root",
            ],
            &[],
        )
    );
}

#[test]
fn tcg_with_tap_readonly_disk_and_initrd() {
    let mut s = spec();
    s.vcpu_count = 1;
    s.mem_size_mib = 1024;
    s.initrd = Some(PathBuf::from("/img/initrd.cpio"));
    s.disk_read_only = true;
    s.net = Some(NetAttachment::Tap {
        tap: "smol0a1b".into(),
        mac: "02:fc:00:00:00:05".into(),
    });
    let argv = strings(build_argv(
        Path::new("qemu-system-x86_64"),
        &s,
        QemuAccel::tcg(Some(2_445_426), Some(32)),
    ));
    assert_eq!(
        argv,
        expect(
            &[
                "qemu-system-x86_64",
                "-name",
                "guest=vm-1234abcd",
                "-M",
                "microvm,acpi=on,pit=on",
                "-accel",
                "tcg,tb-size=32",
                "-cpu",
                "max",
                "-m",
                "1024M",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-kernel",
                "/img/vmlinuz",
                "-initrd",
                "/img/initrd.cpio",
                "-append",
                "console=ttyS0 reboot=k panic=1 pci=off tsc_early_khz=2445426 tsc=reliable",
                "-drive",
                "id=root,format=raw,if=none,file=/data/disks/vm-1234abcd.ext4,readonly=on",
                "-device",
                "virtio-blk-device,drive=root",
            ],
            &[
                "-netdev",
                "tap,id=net0,ifname=smol0a1b,script=no,downscript=no",
                "-device",
                "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05",
            ],
        )
    );
}

#[test]
fn tcg_with_user_network_and_unknown_tsc() {
    let mut s = spec();
    s.net = Some(NetAttachment::User {
        mac: "02:fc:00:00:00:09".into(),
        guest_ip: Ipv4Addr::new(10, 0, 2, 15),
        ssh_host_port: Some(2222),
    });
    let argv = strings(build_argv(
        Path::new("qemu-system-x86_64"),
        &s,
        QemuAccel::tcg(None, None),
    ));
    // Without a known TSC frequency only the watchdog exemption is appended.
    let append = argv.iter().position(|a| a == "-append").unwrap();
    assert_eq!(
        argv[append + 1],
        "console=ttyS0 reboot=k panic=1 pci=off tsc=reliable"
    );
    let netdev = argv.iter().position(|a| a == "-netdev").unwrap();
    assert_eq!(
        argv[netdev..netdev + 4],
        [
            "-netdev",
            "user,id=net0,net=10.0.2.0/24,dhcpstart=10.0.2.15,\
             hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22",
            "-device",
            "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:09",
        ]
    );

    // No forwarded port: no hostfwd.
    s.net = Some(NetAttachment::User {
        mac: "02:fc:00:00:00:09".into(),
        guest_ip: Ipv4Addr::new(172, 16, 5, 2),
        ssh_host_port: None,
    });
    let argv = strings(build_argv(Path::new("q"), &s, QemuAccel::KVM));
    assert!(argv.contains(&"user,id=net0,net=172.16.5.0/24,dhcpstart=172.16.5.2".to_string()));
}

#[test]
fn commas_in_paths_cannot_inject_options() {
    let mut s = spec();
    s.disk = PathBuf::from("/d/a,readonly=off,b.img");
    s.control_socket = PathBuf::from("/s/x,server=off");
    let argv = strings(build_argv(Path::new("q"), &s, QemuAccel::KVM));
    assert!(argv.contains(
        &"id=root,format=raw,if=none,file=/d/a,,readonly=off,,b.img,discard=unmap".to_string()
    ));
    assert!(argv.contains(&"socket,id=qmp,path=/s/x,,server=off,server=on,wait=off".to_string()));
}

#[test]
fn non_utf8_paths_pass_through() {
    use std::os::unix::ffi::OsStrExt;
    let mut s = spec();
    s.kernel = PathBuf::from(OsStr::from_bytes(b"/k/\xff"));
    let argv = build_argv(Path::new("q"), &s, QemuAccel::KVM);
    let k = argv.iter().position(|a| a == "-kernel").unwrap();
    assert_eq!(argv[k + 1].as_bytes(), b"/k/\xff");
}

/// 2048 MiB with an initramfs makes QEMU 10 reset the guest in early boot: one MiB more.
#[test]
fn two_gib_with_an_initrd_gets_one_mib_more() {
    let argv_mem = |mem: u32, initrd: bool| {
        let mut s = spec();
        s.mem_size_mib = mem;
        s.initrd = initrd.then(|| PathBuf::from("/img/initrd"));
        let a = strings(build_argv(Path::new("q"), &s, QemuAccel::tcg(None, None)));
        a[a.iter().position(|x| x == "-m").unwrap() + 1].clone()
    };
    assert_eq!(argv_mem(2048, true), "2049M");
    assert_eq!(argv_mem(2048, false), "2048M");
    assert_eq!(argv_mem(1024, true), "1024M");
}

#[test]
fn pvh_entry_turns_the_pic_off_on_both_accelerators() {
    let mut s = spec();
    s.kernel = PathBuf::from("/img/vmlinux");
    let tcg = QemuAccel::tcg(None, Some(32));
    let argv = strings(build_argv_for(Path::new("q"), &s, tcg, KernelEntry::Pvh));
    assert_eq!(
        argv[3..9],
        [
            "-M",
            "microvm,acpi=on,pit=on,pic=off",
            "-accel",
            "tcg,tb-size=32",
            "-cpu",
            "max"
        ]
    );
    let kernel = argv.iter().position(|a| a == "-kernel").unwrap();
    assert_eq!(argv[kernel + 1], "/img/vmlinux");
    let argv = strings(build_argv_for(
        Path::new("q"),
        &s,
        QemuAccel::KVM,
        KernelEntry::Pvh,
    ));
    assert_eq!(argv[3..5], ["-M", "microvm,acpi=on,pic=off"]);
    // The command line is the same for both entries: PVH needs no parameter of its own.
    let append = argv.iter().position(|a| a == "-append").unwrap();
    assert_eq!(argv[append + 1], "console=ttyS0 reboot=k panic=1 pci=off");
}

#[test]
fn the_entry_is_detected_from_the_elf_magic() {
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("vmlinux");
    std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
    let bz = dir.path().join("vmlinuz");
    // A bzImage starts with the legacy boot sector (and "HdrS" at 0x202).
    std::fs::write(&bz, [0xeau8, 0x05, 0x00, 0xc0, 0x07]).unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, b"\x7fE").unwrap();
    assert_eq!(KernelEntry::detect(&elf), KernelEntry::Pvh);
    assert_eq!(KernelEntry::detect(&bz), KernelEntry::BzImage);
    assert_eq!(KernelEntry::detect(&short), KernelEntry::BzImage);
    assert_eq!(
        KernelEntry::detect(&dir.path().join("missing")),
        KernelEntry::BzImage
    );

    let mut s = spec();
    s.kernel = elf;
    let argv = strings(build_argv(Path::new("q"), &s, QemuAccel::KVM));
    assert_eq!(argv[4], "microvm,acpi=on,pic=off");
}

#[test]
fn a_vmm_user_makes_qemu_drop_root_with_a_sandbox_that_lets_it() {
    let spec = LaunchSpec {
        run_as: Some(crate::vmm_user::VmmUser {
            uid: 1879048197,
            gid: 1879048198,
        }),
        ..spec()
    };
    let argv = strings(build_argv(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &spec,
        QemuAccel::KVM,
    ));
    let without = strings(build_argv(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &self::spec(),
        QemuAccel::KVM,
    ));
    // Everything up to the sandbox is the same; the end differs exactly so.
    let n = without.len() - 2;
    assert_eq!(argv[..n], without[..n]);
    assert_eq!(
        argv[n..],
        [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
            "-run-with",
            "user=1879048197:1879048198",
        ]
    );
    assert_eq!(
        without[n..],
        [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
    );
}

#[test]
fn a_dropping_qemu_gets_its_writable_disk_as_an_fd_set() {
    let spec = spec();
    let fds = super::DiskFds { rw: 11, ro: 12 };
    let argv = strings(super::build_argv_with_disk(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &spec,
        QemuAccel::KVM,
        Some(fds),
    ));
    let plain = strings(build_argv(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &spec,
        QemuAccel::KVM,
    ));
    let at = plain.iter().position(|a| a == "-drive").unwrap();
    // Both descriptors go into one set right before the drive, which names the set, not the path.
    assert_eq!(argv[..at], plain[..at]);
    assert_eq!(
        argv[at..at + 6],
        [
            "-add-fd",
            "fd=11,set=3",
            "-add-fd",
            "fd=12,set=3",
            "-drive",
            "id=root,format=raw,if=none,file=/dev/fdset/3,file.locking=off,discard=unmap",
        ]
    );
    assert_eq!(argv[at + 6..], plain[at + 2..]);
    assert!(!argv.iter().any(|a| a.contains("vm-1234abcd.ext4")));
}
