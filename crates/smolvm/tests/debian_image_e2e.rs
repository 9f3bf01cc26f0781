//! End-to-end tests of Debian images: the python preset is built once from Debian's mirror (package
//! traffic of the host, outside any namespace; cached under `CARGO_TARGET_TMPDIR` next to the default
//! image, so later runs are cache hits), then booted with no network inside a namespace the test makes.
//! Run with `SMOLVM_E2E=1` as root; they skip otherwise.

mod netns_util;
mod vm_util;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use netns_util::{e2e, Entered, Netns};
use smolvm::BackendKind;
use smolvm::{CreateOptions, NetworkMode};
use smolvm::{
    DebianOptions, GuestImage, ImageBuilder, ImageProgress as Progress, ImageSource, Preset,
};
use vm_util::TestEnv;

const BOOT: Duration = Duration::from_secs(120);
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4", "ip", "mmdebstrap"];

fn cache_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images")
}

fn python_options() -> DebianOptions {
    DebianOptions {
        preset: Some(Preset::Python),
        progress: Progress::Quiet,
        ..DebianOptions::default()
    }
}

/// The python-preset Debian image, built once per test process.
fn python_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = cache_dir();
        ImageBuilder::new(&cache)
            .with_cache_dir(&cache)
            .build_debian(&python_options())
            .expect("build the debian python image (needs mmdebstrap and the Debian mirror)")
    })
}

/// Skip check, image built outside the namespace, then a fresh namespace entered. Fields drop in order:
/// VMs deleted inside the namespace, the thread leaves it, then it is removed.
struct Scene {
    env: TestEnv,
    _inside: Entered,
    _ns: Netns,
}

impl Scene {
    fn enter(test: &str) -> Option<Scene> {
        if !e2e(test, TOOLS) {
            return None;
        }
        python_image();
        let ns = Netns::new();
        let inside = ns.enter();
        Some(Scene {
            env: TestEnv::new(),
            _inside: inside,
            _ns: ns,
        })
    }
}

#[test]
fn python_preset_boots_and_runs_python_and_pip() {
    let Some(scene) = Scene::enter("debian python image") else {
        return;
    };
    let img = python_image();
    assert!(matches!(
        &img.source,
        ImageSource::Debian { suite, packages, .. }
            if suite == "bookworm" && packages.iter().any(|p| p == "python3-pip")
    ));
    let env = &scene.env;
    let config = img
        .vm_config(BackendKind::Qemu)
        .vm_id("deb-py")
        .mem_size_mib(512)
        .vcpu_count(1)
        .disk_size_mib(2048)
        .build()
        .unwrap();
    env.manager
        .create_with(
            &config,
            &CreateOptions {
                network: NetworkMode::None,
                ..CreateOptions::default()
            },
        )
        .unwrap();
    env.manager.start("deb-py", BOOT).unwrap();
    let vm = env.reconnect("deb-py");

    let r = vm
        .run("python3 -c 'import sys; print(sys.version)'")
        .unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.starts_with("3."), "{r:?}");
    let r = vm.run("pip --version").unwrap();
    assert!(r.ok() && r.stdout.starts_with("pip "), "{r:?}");
    let r = vm.run("cat /etc/os-release").unwrap();
    assert!(r.ok() && r.stdout.contains("ID=debian"), "{r:?}");
    assert!(r.stdout.contains("bookworm"), "{r:?}");
    // The rest of the preset, and apt for installing more when the VM has network. (A venv without
    // pip: seeding pip into it takes minutes under TCG; pip itself was checked above.)
    let r = vm
        .run_with_timeout(
            "git --version && curl --version >/dev/null && python3 -m venv --without-pip /tmp/v \
             && /tmp/v/bin/python -c 'print(42)' && apt-get --version >/dev/null",
            Some(Duration::from_secs(120)),
        )
        .unwrap();
    assert!(r.ok() && r.stdout.ends_with("42\n"), "{r:?}");
    // The agent is PID 1 and the SSH server is Debian's dropbear.
    let r = vm
        .run("cat /proc/1/cmdline | tr '\\0' ' '; echo; pidof dropbear || ps -e | grep -c dropbear")
        .unwrap();
    assert!(r.ok() && r.stdout.starts_with("/init"), "{r:?}");
    assert_eq!(vm.run("hostname").unwrap().stdout.trim(), "deb-py");
    // The VM's disk was grown from the image's size and its filesystem fills it.
    assert!(img.rootfs_size_mib < 1500);
    let r = vm.run("df -m / | awk 'NR==2 {print $2}'").unwrap();
    let root_mib: u64 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("{r:?}"));
    assert!(root_mib > 1800, "root filesystem is {root_mib} MiB");
    // The image cannot be removed while this VM boots from it.
    let users = env.manager.image_users(img).unwrap();
    assert_eq!(users, ["deb-py"]);
    let err = ImageBuilder::new(&cache_dir())
        .with_cache_dir(cache_dir())
        .remove(&img.name, &users)
        .unwrap_err();
    assert!(err.to_string().contains("deb-py"), "{err}");
    assert!(img.is_complete());
    vm.close();
    env.manager.delete("deb-py").unwrap();
    env.assert_no_leaks("deb-py");
}

#[test]
fn rebuild_with_the_same_inputs_is_a_cache_hit() {
    if !e2e("debian image cache", TOOLS) {
        return;
    }
    let first = python_image();
    let cache = cache_dir();
    let again = ImageBuilder::new(&cache)
        .with_cache_dir(&cache)
        .build_debian(&python_options())
        .unwrap();
    assert!(again.cached);
    assert_eq!(again.fingerprint, first.fingerprint);
    // Another package list is another image (not built here: only its fingerprint would differ).
    let listed = ImageBuilder::new(&cache)
        .with_cache_dir(&cache)
        .list()
        .unwrap();
    assert!(listed
        .iter()
        .any(|i| i.name == "debian-bookworm-python" && i.source.kind() == "debian"));
}

#[test]
fn unknown_package_fails_clearly_and_leaves_nothing() {
    if !e2e("debian image bad package", TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // Share the prepared kernel of the main cache is not possible across dirs; a private cache keeps
    // the failed build away from the shared one. The kernel is prepared before mmdebstrap runs.
    let b = ImageBuilder::new(t.path());
    let err = b
        .build_debian(&DebianOptions {
            name: Some("broken".into()),
            packages: vec!["smolvm-no-such-package".into()],
            progress: Progress::Quiet,
            ..DebianOptions::default()
        })
        .unwrap_err();
    let msg = format!("{err}");
    assert!(msg.contains("smolvm-no-such-package"), "{msg}");
    assert!(b.list().unwrap().is_empty());
    let left: Vec<String> = std::fs::read_dir(b.images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "broken" || n.starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "partial build left: {left:?}");
}
