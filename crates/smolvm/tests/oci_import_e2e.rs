//! End-to-end tests of OCI/Docker image import. The test builds its own OCI layout with `umoci` (no
//! registry, no network): two layers holding a whiteout, a hard link, a symlink and a setuid file, on a
//! busybox userland copied from the host; then imports it (as a layout and as a `docker save`-style
//! archive made by skopeo), boots it with no network inside a namespace it creates, and checks the
//! layers and the image's Env/WorkingDir. Broken inputs must fail clearly and leave no image behind.
//! Run with `SMOLVM_E2E=1` as root; they skip otherwise.

mod netns_util;
mod vm_util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns_util::{e2e, Entered, Netns};
use smolvm::BackendKind;
use smolvm::{CreateOptions, NetworkMode};
use smolvm::{ImageBuilder, ImageError, ImageProgress as Progress, ImportOptions, ImportSource};
use vm_util::TestEnv;

const BOOT: Duration = Duration::from_secs(120);
const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "mkfs.ext4",
    "ip",
    "umoci",
    "skopeo",
    "busybox",
];

fn run(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An OCI layout at `dir/layout` (tag `t`) of two layers: a busybox base with files the second layer
/// deletes (whiteout) or links to (hard link, symlink), and a setuid copy of busybox; the config sets
/// Env and WorkingDir.
fn make_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:t", s(&layout));
    run(&["umoci", "init", "--layout", s(&layout)]);
    run(&["umoci", "new", "--image", &image]);
    run(&["umoci", "unpack", "--image", &image, s(&bundle)]);
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(
        smolvm::internals::network::find_program("busybox").unwrap(),
        root.join("bin/busybox"),
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/removed"), "gone\n").unwrap();
    std::fs::write(root.join("data/orig"), "first\n").unwrap();
    run(&["umoci", "repack", "--image", &image, s(&bundle)]);
    std::fs::remove_dir_all(&bundle).unwrap();

    run(&["umoci", "unpack", "--image", &image, s(&bundle)]);
    let root = bundle.join("rootfs");
    std::fs::remove_file(root.join("etc/removed")).unwrap();
    std::fs::write(root.join("data/orig"), "second\n").unwrap();
    std::fs::hard_link(root.join("data/orig"), root.join("data/hard")).unwrap();
    std::os::unix::fs::symlink("/data/orig", root.join("data/sym")).unwrap();
    std::fs::copy(root.join("bin/busybox"), root.join("bin/suid")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("bin/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("srv/app")).unwrap();
    run(&["umoci", "repack", "--image", &image, s(&bundle)]);
    run(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.env",
        "GREETING=hello from the image",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/srv/app",
        "--config.cmd",
        "/bin/sh",
    ]);
    layout
}

fn options(name: &str, source: ImportSource) -> ImportOptions {
    ImportOptions {
        name: name.into(),
        source,
        insecure_registry: false,
        registry_credentials: None,
        progress: Progress::Quiet,
    }
}

fn builder(dir: &Path) -> ImageBuilder {
    // A private cache per test keeps the shared cache free of test images; the prepared kernel is
    // fetched once per cache (apt keeps the package, so that is quick).
    ImageBuilder::new(dir).with_cache_dir(dir.join("images"))
}

struct Scene {
    env: TestEnv,
    _inside: Entered,
    _ns: Netns,
}

#[test]
fn layout_imports_boots_and_applies_layers_env_and_workdir() {
    if !e2e("oci import", TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layout = make_layout(t.path());
    let b = builder(t.path());
    let img = b
        .import(&options("oci-test", ImportSource::Path(layout.clone())))
        .unwrap();
    let rc = img.runtime.as_ref().expect("runtime config recorded");
    assert!(rc.env.iter().any(|e| e == "GREETING=hello from the image"));
    assert_eq!(rc.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(rc.cmd, ["/bin/sh"]);
    assert_eq!(img.source.kind(), "archive");

    // The same image as a docker-archive (what `docker save` writes), made by skopeo.
    let tar = t.path().join("saved.tar");
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        &format!("oci:{}:t", s(&layout)),
        &format!("docker-archive:{}:test/app:1", s(&tar)),
    ]);
    let saved = b
        .import(&options("docker-test", ImportSource::Path(tar)))
        .unwrap();
    assert_eq!(
        saved.runtime.as_ref().unwrap().working_dir.as_deref(),
        Some("/srv/app")
    );

    let ns = Netns::new();
    let inside = ns.enter();
    let scene = Scene {
        env: TestEnv::new(),
        _inside: inside,
        _ns: ns,
    };
    let env = &scene.env;
    let config = img
        .vm_config(BackendKind::Qemu)
        .vm_id("oci-1")
        .mem_size_mib(256)
        .vcpu_count(1)
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
    env.manager.start("oci-1", BOOT).unwrap();
    let vm = env.reconnect("oci-1");
    let r = vm.run("printf '%s|' \"$GREETING\" \"$(pwd)\"").unwrap();
    assert_eq!(r.stdout, "hello from the image|/srv/app|", "{r:?}");
    let r = vm
        .run("test ! -e /etc/removed && echo whiteout-ok; cat /data/sym; stat -c '%h %i' /data/orig /data/hard; stat -c '%a %u' /bin/suid")
        .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "whiteout-ok", "{r:?}");
    assert_eq!(lines[1], "second", "{r:?}");
    assert_eq!(lines[2], lines[3], "hard link: same inode: {r:?}");
    assert!(lines[2].starts_with("2 "), "{r:?}");
    assert_eq!(lines[4], "4755 0", "{r:?}");
    vm.close();
    env.manager.delete("oci-1").unwrap();
    env.assert_no_leaks("oci-1");
}

#[test]
fn broken_sources_fail_clearly_and_leave_no_image() {
    if !e2e("oci import errors", TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layout = make_layout(t.path());
    let b = builder(t.path());

    let corrupt = t.path().join("corrupt.tar");
    std::fs::write(&corrupt, vec![0x5au8; 4096]).unwrap();
    let e = b
        .import(&options("bad", ImportSource::Path(corrupt)))
        .unwrap_err();
    assert!(e.to_string().contains("not a readable tar archive"), "{e}");

    // A layout whose largest blob (the busybox layer) is gone.
    let missing = t.path().join("missing");
    run(&["cp", "-a", s(&layout), s(&missing)]);
    let biggest = std::fs::read_dir(missing.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    std::fs::remove_file(&biggest).unwrap();
    let e = b
        .import(&options("bad", ImportSource::Path(missing)))
        .unwrap_err();
    assert!(matches!(e, ImageError::Import { .. }), "{e:?}");
    let name = biggest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(e.to_string().contains(&name), "names the blob: {e}");

    // The same image declared for arm64.
    let arm = t.path().join("arm");
    run(&["cp", "-a", s(&layout), s(&arm)]);
    run(&[
        "umoci",
        "config",
        "--image",
        &format!("{}:t", s(&arm)),
        "--architecture",
        "arm64",
    ]);
    // umoci keeps the old manifest in the index untagged; keep only the tagged one.
    let index = std::fs::read_to_string(arm.join("index.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&index).unwrap();
    let tagged: Vec<_> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("annotations").is_some())
        .cloned()
        .collect();
    let mut v = v.clone();
    v["manifests"] = serde_json::Value::Array(tagged);
    std::fs::write(arm.join("index.json"), v.to_string()).unwrap();
    let e = b
        .import(&options("bad", ImportSource::Path(arm)))
        .unwrap_err();
    assert!(e.to_string().contains("arm64"), "{e}");

    assert!(b.list().unwrap().is_empty(), "no image was made");
    let left: Vec<String> = std::fs::read_dir(b.images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "bad" || n.starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "partial import left: {left:?}");
}

/// Starts `docker-registry` on `127.0.0.1:port` of the namespace the calling thread is in, with
/// storage under `dir`; with `auth`, an htpasswd realm whose only user's password nobody knows.
fn start_registry(ns: &Netns, dir: &Path, port: u16, auth: bool) -> netns_util::ChildGuard {
    let storage = dir.join(format!("registry-{port}"));
    std::fs::create_dir_all(&storage).unwrap();
    let mut config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        s(&storage)
    );
    if auth {
        let htpasswd = dir.join("htpasswd");
        let salt_and_hash: String = (0..53)
            .map(|i| {
                b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[(i * 7) % 64]
                    as char
            })
            .collect();
        std::fs::write(&htpasswd, format!("someone:$2y$05${salt_and_hash}\n")).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: smolvm-test\n    path: {}\n",
            s(&htpasswd)
        ));
    }
    let config_path = dir.join(format!("registry-{port}.yml"));
    std::fs::write(&config_path, config).unwrap();
    let guard = ns.spawn(&["docker-registry", "serve", s(&config_path)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    guard
}

#[test]
fn pull_from_a_loopback_registry_boots_and_refused_auth_fails_clearly() {
    if !e2e("oci pull", &[TOOLS, &["docker-registry"]].concat()) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layout = make_layout(t.path());
    // The shared test cache holds the prepared kernel (built outside the namespace, where apt can
    // reach the mirror); inside the namespace nothing needs the network but the loopback registry.
    vm_util::image();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
    let b = ImageBuilder::new(&cache).with_cache_dir(&cache);
    let name = format!("pull-test-{}", std::process::id());

    let ns = Netns::new();
    let inside = ns.enter();
    let open = start_registry(&ns, t.path(), 5000, false);
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:t", s(&layout)),
        "docker://127.0.0.1:5000/test/app:1",
    ]);
    let mut opts = options(
        &name,
        ImportSource::Registry("127.0.0.1:5000/test/app:1".into()),
    );
    opts.insecure_registry = true;
    let img = b.import(&opts).unwrap();
    assert_eq!(img.source.to_string(), "oci 127.0.0.1:5000/test/app:1");
    assert_eq!(
        img.runtime.as_ref().unwrap().working_dir.as_deref(),
        Some("/srv/app")
    );

    let locked = start_registry(&ns, t.path(), 5001, true);
    let mut bad = options(
        "pull-refused",
        ImportSource::Registry("127.0.0.1:5001/test/app:1".into()),
    );
    bad.insecure_registry = true;
    bad.registry_credentials = Some("someone:wrong".into());
    let e = b.import(&bad).unwrap_err();
    let msg = e.to_string().to_lowercase();
    assert!(
        msg.contains("unauthorized") || msg.contains("authentication"),
        "{e}"
    );
    assert!(
        b.get("pull-refused").is_err(),
        "no image after a refused pull"
    );
    drop(locked);
    drop(open);

    let scene = Scene {
        env: TestEnv::new(),
        _inside: inside,
        _ns: ns,
    };
    let env = &scene.env;
    let config = img
        .vm_config(BackendKind::Qemu)
        .vm_id("pull-1")
        .mem_size_mib(256)
        .vcpu_count(1)
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
    env.manager.start("pull-1", BOOT).unwrap();
    let vm = env.reconnect("pull-1");
    let r = vm
        .run("printf '%s|' \"$GREETING\" \"$(pwd)\"; cat /data/sym")
        .unwrap();
    assert_eq!(r.stdout, "hello from the image|/srv/app|second\n", "{r:?}");
    vm.close();
    env.manager.delete("pull-1").unwrap();
    env.assert_no_leaks("pull-1");
    drop(scene);
    b.remove(&name, &[]).unwrap();
}
