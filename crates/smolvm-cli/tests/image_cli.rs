//! `smolvm image import/list/rm` and `create/run/exec --image` as a user runs them (with `SMOLVM_E2E=1`,
//! as root): an OCI layout made by the test with umoci (busybox, Env, WorkingDir) is imported, listed,
//! booted with a grown disk inside a network namespace the test creates, protected from removal while
//! a VM uses it, then removed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn e2e() -> bool {
    if std::env::var("SMOLVM_E2E").as_deref() != Ok("1") {
        eprintln!("skipping: set SMOLVM_E2E=1 to run (needs root, QEMU, umoci, skopeo)");
        return false;
    }
    for tool in ["umoci", "skopeo", "busybox", "qemu-system-x86_64", "ip"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into(), "/bin".into()])
            .any(|d| d.join(tool).is_file());
        assert!(found, "prerequisite `{tool}` is not installed");
    }
    true
}

fn must(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {out:?}");
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("smolvm-ic-{}", std::process::id());
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `smolvm --data-dir D --socket-dir S args...`, inside `ns` when given.
fn smolvm(dir: &Path, ns: Option<&Netns>, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_smolvm");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket-dir")
        .arg(dir.join("s"))
        .args(args)
        .env_remove("SMOLVM_DATA_DIR")
        .env_remove("SMOLVM_BACKEND")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn make_layout(dir: &Path) -> String {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let l = layout.to_str().unwrap().to_string();
    let image = format!("{l}:t");
    must(&["umoci", "init", "--layout", &l]);
    must(&["umoci", "new", "--image", &image]);
    must(&[
        "umoci",
        "unpack",
        "--image",
        &image,
        bundle.to_str().unwrap(),
    ]);
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "df", "tail", "awk"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    must(&[
        "umoci",
        "repack",
        "--image",
        &image,
        bundle.to_str().unwrap(),
    ]);
    must(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.env",
        "GREETING=hi there",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/srv/app",
    ]);
    l
}

#[test]
fn import_list_boot_grow_and_remove_through_the_cli() {
    if !e2e() {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("smvi")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = t.path();
    let layout = make_layout(dir);
    // Outside the namespace: the first import fetches the kernel package.
    ok(&smolvm(
        dir,
        None,
        &["image", "import", &layout, "--name", "app"],
    ));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&smolvm(dir, None, &["image", "list", "--json"]))).unwrap();
    let row = &list[0];
    assert_eq!(row["name"], "app");
    assert_eq!(row["source"]["kind"], "archive");
    assert!(row["size_on_disk_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(row["created"].as_u64().unwrap() > 1_700_000_000);

    let ns = Netns::new();
    let n = Some(&ns);
    ok(&smolvm(
        dir,
        n,
        &[
            "create",
            "--id",
            "img-1",
            "--image",
            "app",
            "--network",
            "none",
            "--disk-size",
            "1024",
            "--start",
        ],
    ));
    // WorkingDir and Env are the defaults of exec.
    assert_eq!(
        ok(&smolvm(
            dir,
            n,
            &["exec", "img-1", "--", "sh", "-c", "pwd; echo \"$GREETING\""]
        )),
        "/srv/app\nhi there\n"
    );
    let df = ok(&smolvm(
        dir,
        n,
        &[
            "exec",
            "img-1",
            "--",
            "sh",
            "-c",
            "df -m / | tail -1 | awk '{print $2}'",
        ],
    ));
    let mib: u64 = df.trim().parse().unwrap();
    assert!(
        mib > 900,
        "root filesystem grown to the disk size: {mib} MiB"
    );

    let refused = smolvm(dir, n, &["image", "rm", "app"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("img-1"),
        "{refused:?}"
    );
    ok(&smolvm(dir, n, &["delete", "img-1"]));
    assert_eq!(
        ok(&smolvm(
            dir,
            n,
            &[
                "run",
                "--image",
                "app",
                "--network",
                "none",
                "--",
                "sh",
                "-c",
                "pwd"
            ]
        )),
        "/srv/app\n"
    );
    ok(&smolvm(dir, n, &["image", "rm", "app"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&smolvm(dir, None, &["image", "list", "--json"]))).unwrap();
    assert_eq!(list, serde_json::json!([]));
    let missing = smolvm(
        dir,
        None,
        &["create", "--image", "app", "--network", "none"],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no image named \"app\""),
        "{missing:?}"
    );
}
