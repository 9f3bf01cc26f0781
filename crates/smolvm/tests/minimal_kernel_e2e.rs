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
use smolvm::{AutoKernel, GuestImage, ImageBuilder, ImageOptions, AUTO_MINIMAL_IMAGE_NAME};
use smolvm::{BackendKind, SmolVm, VmState};
use smolvm::{CreateOptions, NetworkMode};
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
    // QEMU enters the minimal kernel's ELF through PVH, like Firecracker; the bzImage stays beside it
    // as the fallback.
    assert_eq!(spec.kernel_path, img.kernel_elf);
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
        network: NetworkMode::None,
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
    // The guest keeps time with the TSC (`tsc=reliable` under TCG: the clocksource watchdog would
    // otherwise fall back to jiffies on a loaded host), and its clock runs.
    let r = vm
        .run(
            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
              cut -d' ' -f1 /proc/uptime; sleep 1; cut -d' ' -f1 /proc/uptime",
        )
        .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("tsc"), "clocksource {:?}", lines[0]);
    let up: Vec<f64> = lines[1..].iter().map(|l| l.parse().unwrap()).collect();
    assert!(up[1] >= up[0] + 1.0, "guest uptime {up:?} across `sleep 1`");
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

/// Hard-links every file under `from` into `to` (prepared kernels: no copy of megabytes per test),
/// leaving out locks and unfinished builds (dot names).
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            link_tree(&e.path(), &dst);
        } else {
            std::fs::hard_link(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn auto_configuration_boots_the_minimal_kernel_once_it_is_compiled() {
    if !e2e("auto-configuration with the minimal kernel", TOOLS) {
        return;
    }
    let img = minimal_image();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
    // The choice itself, in the shared cache (the minimal kernel is compiled there).
    let b = ImageBuilder::new(&cache).with_cache_dir(&cache);
    let auto = b.auto_image(AutoKernel::Auto).unwrap();
    assert_eq!(auto.name, AUTO_MINIMAL_IMAGE_NAME);
    assert!(!auto.needs_initrd);
    assert_eq!(auto.kernel_release, img.kernel_release);
    let debian = b.auto_image(AutoKernel::Debian).unwrap();
    assert_eq!(debian.name, "default");
    assert!(debian.needs_initrd);

    // Through the facade (what the CLI and Python use): a data directory whose kernel cache holds the
    // compiled minimal kernel gets a VM on it without naming any image.
    let ns = Netns::new();
    let _inside = ns.enter();
    let env = TestEnv::new();
    let images = env.data_dir().join("images");
    link_tree(&cache.join(".kernels"), &images.join(".kernels"));
    link_tree(&cache.join(".cache"), &images.join(".cache"));
    let mut vm = SmolVm::builder()
        .data_dir(env.data_dir())
        .socket_dir(env.socket_dir())
        .network(NetworkMode::None)
        .mem_size_mib(256)
        .build()
        .unwrap();
    vm.start().unwrap();
    let r = vm.run("uname -r").unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().next(), img.kernel_release.as_deref());
    let id = vm.vm_id().to_string();
    drop(vm);
    env.assert_no_leaks(&id);
    assert!(images
        .join(AUTO_MINIMAL_IMAGE_NAME)
        .join("image.json")
        .is_file());
    assert!(
        !images.join("default").exists(),
        "the Debian image was not built"
    );
}
