//! `smolvm list`, `info`, `create` (without boot) and `delete` against a private state store: output,
//! field names and exit codes. No VM is booted, so these run everywhere.

use std::path::Path;
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.path().join("rootfs.ext4"), vec![0u8; 4096]).unwrap();
        Env { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn smolvm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_smolvm"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--socket-dir")
            .arg(self.dir.path().join("s"))
            .arg("--backend")
            .arg("qemu")
            .args(args)
            .env_remove("SMOLVM_BACKEND")
            .output()
            .unwrap()
    }

    fn create(&self, id: &str) -> Output {
        let (k, r) = (self.path("vmlinux"), self.path("rootfs.ext4"));
        self.smolvm(&[
            "create",
            "--id",
            id,
            "--kernel",
            &k,
            "--rootfs",
            &r,
            "--network",
            "none",
            "--json",
        ])
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn qemu_installed() -> bool {
    smolvm::HostCapabilities::detect()
        .tools
        .qemu_system
        .is_some()
}

#[test]
fn empty_store_lists_nothing() {
    let env = Env::new();
    let o = env.smolvm(&["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap(),
        serde_json::json!([])
    );
    let o = env.smolvm(&["list"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "no VMs");
}

#[test]
fn unknown_id_is_not_found_and_bad_input_is_refused() {
    let env = Env::new();
    let o = env.smolvm(&["info", "nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = env.smolvm(&["list", "--status", "sleeping"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("status"), "{}", stderr(&o));
    let o = env.smolvm(&["delete", "nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

/// `create` resolves the QEMU backend: without it these tests skip, except under `SMOLVM_E2E=1`, where
/// a missing prerequisite fails.
fn qemu_or_skip() -> bool {
    if qemu_installed() {
        return true;
    }
    assert_ne!(
        std::env::var("SMOLVM_E2E").as_deref(),
        Ok("1"),
        "qemu-system-x86_64 is required under SMOLVM_E2E=1"
    );
    eprintln!(
        "skipping: create resolves the qemu backend, and qemu-system-x86_64 is not installed"
    );
    false
}

#[test]
fn created_vm_is_listed_with_the_spec_field_names() {
    if !qemu_or_skip() {
        return;
    }
    let env = Env::new();
    let o = env.create("cli-1");
    assert!(o.status.success(), "{}", stderr(&o));

    let o = env.smolvm(&["info", "cli-1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for key in ["vm_id", "status", "config", "network", "pid", "socket_path"] {
        assert!(v.get(key).is_some(), "VmInfo lacks {key}: {v}");
    }
    assert_eq!(v["vm_id"], "cli-1");
    assert_eq!(v["status"], "created");
    assert_eq!(v["network"], serde_json::Value::Null);
    assert_eq!(v["pid"], serde_json::Value::Null);
    for key in [
        "vm_id",
        "vcpu_count",
        "mem_size_mib",
        "kernel_path",
        "rootfs_path",
        "boot_args",
        "backend",
        "disk_mode",
        "retain_disk_on_delete",
        "env_vars",
    ] {
        assert!(v["config"].get(key).is_some(), "VmConfig lacks {key}");
    }
    assert_eq!(v["config"]["vcpu_count"], 2);
    assert_eq!(v["config"]["mem_size_mib"], 512);

    let o = env.smolvm(&["list", "--status", "created", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let o = env.smolvm(&["list", "--status", "running", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(list.as_array().unwrap().is_empty());
    let o = env.smolvm(&["list"]);
    assert!(
        stdout(&o).contains("cli-1") && stdout(&o).contains("created"),
        "{}",
        stdout(&o)
    );

    // The same id twice is refused, and changes nothing.
    let o = env.create("cli-1");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let o = env.smolvm(&["delete", "cli-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!Path::new(&env.path("data/disks/cli-1.ext4")).exists());
    let o = env.smolvm(&["info", "cli-1"]);
    assert!(!o.status.success());
}

#[test]
fn invalid_config_names_the_field_and_creates_nothing() {
    if !qemu_or_skip() {
        return;
    }
    let env = Env::new();
    let (k, r) = (env.path("vmlinux"), env.path("rootfs.ext4"));
    for (args, field) in [
        (vec!["--id", "My_VM"], "vm_id"),
        (vec!["--vcpus", "33"], "vcpu_count"),
        (vec!["--mem", "127"], "mem_size_mib"),
        (vec!["--env", "1X=v"], "env_vars"),
    ] {
        let mut all = vec![
            "create",
            "--kernel",
            &k,
            "--rootfs",
            &r,
            "--network",
            "none",
        ];
        all.extend(args.iter().copied());
        let o = env.smolvm(&all);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(stderr(&o).contains(field), "{args:?}: {}", stderr(&o));
    }
    let missing = env.path("missing");
    let o = env.smolvm(&[
        "create",
        "--kernel",
        &missing,
        "--rootfs",
        &r,
        "--network",
        "none",
    ]);
    assert!(stderr(&o).contains("kernel_path"), "{}", stderr(&o));
    let o = env.smolvm(&["list", "--json"]);
    assert_eq!(stdout(&o).trim(), "[]");
}

#[test]
fn the_agent_choice_is_recorded_and_needs_the_hand_over() {
    if !qemu_or_skip() {
        return;
    }
    let env = Env::new();
    let (k, r) = (env.path("vmlinux"), env.path("rootfs.ext4"));
    let base = [
        "create",
        "--kernel",
        &k,
        "--rootfs",
        &r,
        "--network",
        "none",
        "--json",
    ];
    let agent_of = |id: &str, extra: &[&str]| {
        let mut all = base.to_vec();
        all.extend(["--id", id]);
        all.extend(extra);
        let o = env.smolvm(&all);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["config"]["agent"].clone()
    };
    // Derived from the boot args when not given, and recorded explicitly with the VM.
    assert_eq!(agent_of("plain", &[]), false);
    assert_eq!(
        agent_of("agent", &["--boot-args", "console=ttyS0 init=/init"]),
        true
    );
    // An image with an /init of its own.
    assert_eq!(
        agent_of("own-init", &["--boot-args", "init=/init", "--no-agent"]),
        false
    );
    let o = env.smolvm(&["info", "own-init", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["config"]["agent"], false);
    // --no-agent is for your own kernel and rootfs only.
    let o = env.smolvm(&["create", "--no-agent", "--network", "none"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--kernel"), "{}", stderr(&o));
}

#[test]
fn corrupt_database_is_reported_and_left_alone() {
    let env = Env::new();
    std::fs::create_dir_all(env.dir.path().join("data")).unwrap();
    let db = env.dir.path().join("data/smolvm.db");
    std::fs::write(&db, b"this is not a database, not even close").unwrap();
    let o = env.smolvm(&["list"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("smolvm.db"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not a database, not even close"
    );
}

/// Bad input is reported before any slow or side-effecting step: with no kernel/rootfs given, `create`
/// would build the default image, but an invalid id (or range, or env key) is refused first, so the
/// answer names the field even where the image cannot be built (here: a kernel override that does not
/// exist) and the backend cannot run (Firecracker without KVM), and the empty data directory is not
/// even created.
#[test]
fn invalid_fields_are_refused_before_the_image_build() {
    let env = Env::new();
    for (args, field) in [
        (vec!["--id", "My_VM"], "invalid vm_id"),
        (vec!["--vcpus", "0"], "vcpu_count"),
        (vec!["--mem", "20000"], "mem_size_mib"),
        (vec!["--env", "A-B=1"], "env_vars"),
    ] {
        for backend in ["qemu", "firecracker"] {
            let mut all = vec!["create", "--network", "none"];
            all.extend(args.iter().copied());
            let o = Command::new(env!("CARGO_BIN_EXE_smolvm"))
                .arg("--data-dir")
                .arg(env.dir.path().join("data"))
                .arg("--socket-dir")
                .arg(env.dir.path().join("s"))
                .args(&all)
                .env("SMOLVM_KERNEL", env.dir.path().join("no-such-kernel"))
                .env("SMOLVM_BACKEND", backend)
                .output()
                .unwrap();
            assert!(!o.status.success(), "{args:?} accepted");
            let err = stderr(&o);
            assert!(err.contains(field), "{args:?}: {err}");
            assert!(
                !err.contains("image"),
                "{args:?} reached the image build: {err}"
            );
            assert!(
                !env.dir.path().join("data").exists() && !env.dir.path().join("s").exists(),
                "{args:?} opened the state before validating"
            );
        }
    }
}

/// Choices are parsed by the command line itself (exit status 2, the valid values listed), before
/// any command runs.
#[test]
fn unknown_choices_are_refused_by_the_parser() {
    let env = Env::new();
    for (args, valid) in [
        (vec!["create", "--disk-mode", "copy"], "isolated, shared"),
        (
            vec!["create", "--network", "bridge"],
            "auto, tap, user, none",
        ),
        (
            vec!["--backend", "kvm", "list"],
            "\"firecracker\", \"qemu\", \"auto\"",
        ),
        (vec!["stop", "vm", "--timeout=-1"], "seconds >= 0"),
        (vec!["start", "vm", "--timeout", "soon"], "seconds >= 0"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_smolvm"))
            .arg("--data-dir")
            .arg(env.dir.path().join("data"))
            .args(&args)
            .env_remove("SMOLVM_BACKEND")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(valid), "{args:?}: {err}");
        assert!(!env.dir.path().join("data").exists());
    }
}
