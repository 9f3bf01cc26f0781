//! End to end on smolvm's minimal kernel (`smolvm image build --kernel minimal`): compiles it from
//! Debian's `linux-source` (minutes, once: cached under `CARGO_TARGET_TMPDIR` like the default image, so
//! later runs on the same machine reuse it), then boots it without an initramfs through the whole
//! lifecycle and the agent's features. `scripts/test.sh` runs this test alone before the rest of the
//! suite, so the compile does not compete with VM boots. Run with `SMOLVM_E2E=1` as root.

mod netns_util;
mod vm_util;

use std::path::Path;
use std::time::Duration;

use netns_util::{e2e, Netns};
use smolvm::{BackendKind, VmState};
use smolvm::{CreateOptions, NetworkChoice};
use smolvm::{GuestImage, ImageBuilder, ImageOptions};
use vm_util::TestEnv;

const BOOT: Duration = Duration::from_secs(60);
const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "mkfs.ext4",
    "ip",
    "apt-get",
    "make",
    "gcc",
    "flex",
    "bison",
    "bc",
];

fn minimal_image() -> GuestImage {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
    ImageBuilder::new(&cache)
        .with_cache_dir(&cache)
        .with_minimal_kernel()
        .build(&ImageOptions {
            name: "minimal".into(),
            ..ImageOptions::default()
        })
        .expect("build the minimal-kernel image")
}

#[test]
fn minimal_kernel_boots_without_initramfs_through_the_lifecycle() {
    if !e2e("minimal kernel", TOOLS) {
        return;
    }
    let img = minimal_image();
    assert!(!img.needs_initrd);
    assert!(!img.initrd.exists(), "a minimal image has no initramfs");
    let release = img.kernel_release.clone().unwrap_or_default();
    assert!(release.ends_with("-smolvm-min"), "release {release:?}");
    let elf = std::fs::read(&img.kernel_elf).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");

    let ns = Netns::new();
    let _inside = ns.enter();
    let env = TestEnv::new();
    let m = &env.manager;
    let spec = img.vm_config(BackendKind::Qemu);
    // QEMU boots the minimal kernel's bzImage (its PVH entry is unreliable under load, see
    // `minkernel`); Firecracker would get the ELF.
    assert_eq!(spec.kernel_path, img.kernel);
    let bz = std::fs::read(&img.kernel).unwrap();
    assert_eq!(&bz[0x202..0x206], b"HdrS", "not a bzImage");
    assert_eq!(spec.initrd_path, None);
    let config = spec
        .vm_id("mini-1")
        .mem_size_mib(256)
        .vcpu_count(2)
        .env_var("WHO", "minimal")
        .build()
        .unwrap();
    let none = CreateOptions {
        network: NetworkChoice::None,
        ..CreateOptions::default()
    };
    m.create_with(&config, &none).unwrap();
    let info = m.start("mini-1", BOOT).unwrap();
    assert_eq!(info.status, VmState::Running);

    let vm = env.reconnect("mini-1");
    let r = vm.run("uname -r; cat /proc/cmdline; echo $WHO").unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], release);
    assert!(lines[1].contains("root=/dev/vda"), "{}", lines[1]);
    assert_eq!(lines[2], "minimal");
    // Root is the disk itself (no initramfs switched to it), writable, and what is written survives a
    // stop and start.
    let r = vm
        .run("grep ' / ' /proc/mounts; echo kept > /root/mark; sync")
        .unwrap();
    // The kernel mounted it itself (it names it /dev/root); an initramfs would have mounted /dev/vda.
    assert!(r.stdout.starts_with("/dev/root / ext4 rw"), "{}", r.stdout);
    vm.close();

    m.stop("mini-1", Duration::from_secs(30)).unwrap();
    m.start("mini-1", BOOT).unwrap();
    let vm = env.reconnect("mini-1");
    assert_eq!(vm.run("cat /root/mark").unwrap().stdout, "kept\n");
    // The agent's other features on this kernel: a file in and out, exit codes, stderr.
    let r = vm.run("echo oops >&2; exit 7").unwrap();
    assert_eq!((r.exit_code, r.stderr.as_str()), (7, "oops\n"));
    vm.close();

    m.delete("mini-1").unwrap();
    env.assert_no_leaks("mini-1");
}
