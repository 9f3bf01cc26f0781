//! Boundary tests for every rule of `VmConfig`.

use super::*;

struct Files {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
    dir: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&rootfs, b"r").unwrap();
    Files {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        kernel,
        rootfs,
    }
}

fn spec(f: &Files) -> VmConfigSpec {
    VmConfig::builder(&f.kernel, &f.rootfs)
}

fn field_of(r: Result<VmConfig, ValidationError>) -> String {
    r.expect_err("should be rejected").field
}

#[test]
fn defaults_match_the_spec() {
    let f = files();
    let c = spec(&f).build().unwrap();
    assert_eq!(c.vcpu_count(), 2);
    assert_eq!(c.mem_size_mib(), 512);
    assert_eq!(c.boot_args(), "console=ttyS0 reboot=k panic=1 pci=off");
    assert_eq!(c.backend(), None);
    assert_eq!(c.disk_mode(), DiskMode::Isolated);
    assert!(!c.retain_disk_on_delete());
    assert!(c.env_vars().is_empty());
    assert_eq!(c.initrd_path(), None);
}

#[test]
fn generated_id_is_vm_and_8_hex() {
    let f = files();
    let id = spec(&f).build().unwrap().vm_id().to_string();
    assert_eq!(id.len(), 11, "{id}");
    assert!(id.starts_with("vm-"));
    assert!(id[3..]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    validate_vm_id(&id).unwrap();
}

#[test]
fn vm_id_boundaries() {
    let f = files();
    for ok in ["a", "0", "ab", "a-b", "my-vm-1", &"a".repeat(64), "a--b"] {
        spec(&f)
            .vm_id(ok)
            .build()
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "My_VM",
        "-a",
        "a-",
        &"a".repeat(65),
        "",
        "A",
        "a_b",
        "a.b",
        "a b",
        "é",
    ] {
        assert_eq!(field_of(spec(&f).vm_id(bad).build()), "vm_id", "{bad:?}");
    }
}

#[test]
fn vcpu_and_memory_ranges() {
    let f = files();
    for ok in [1, 32] {
        spec(&f).vcpu_count(ok).build().unwrap();
    }
    for bad in [0, 33] {
        assert_eq!(field_of(spec(&f).vcpu_count(bad).build()), "vcpu_count");
    }
    for ok in [128, 16384] {
        spec(&f).mem_size_mib(ok).build().unwrap();
    }
    for bad in [127, 16385, 0] {
        assert_eq!(field_of(spec(&f).mem_size_mib(bad).build()), "mem_size_mib");
    }
}

#[test]
fn paths_must_be_existing_regular_files() {
    let f = files();
    let missing = f.dir.join("nope");
    assert_eq!(
        field_of(VmConfig::builder(&missing, &f.rootfs).build()),
        "kernel_path"
    );
    assert_eq!(
        field_of(VmConfig::builder(&f.dir, &f.rootfs).build()),
        "kernel_path"
    );
    assert_eq!(
        field_of(VmConfig::builder(&f.kernel, &missing).build()),
        "rootfs_path"
    );
    assert_eq!(
        field_of(VmConfig::builder(&f.kernel, &f.dir).build()),
        "rootfs_path"
    );
    assert_eq!(
        field_of(spec(&f).initrd_path(&missing).build()),
        "initrd_path"
    );
    spec(&f).initrd_path(&f.kernel).build().unwrap();
}

#[test]
fn env_keys_must_be_shell_identifiers() {
    let f = files();
    for ok in ["A", "_", "_a1", "PATH", "a_B_9"] {
        spec(&f).env_var(ok, "v").build().unwrap();
    }
    for bad in ["1X", "A-B", "A B", "", "É", "A=B"] {
        let e = spec(&f).env_var(bad, "v").build().unwrap_err();
        assert_eq!(e.field, "env_vars", "{bad:?}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    // Values are free-form.
    spec(&f)
        .env_var("X", "'\"$(rm -rf /)`\n\\")
        .build()
        .unwrap();
}

#[test]
fn backend_and_disk_mode_parse() {
    assert_eq!(BackendKind::parse_choice("auto").unwrap(), None);
    assert_eq!(
        BackendKind::parse_choice("qemu").unwrap(),
        Some(BackendKind::Qemu)
    );
    assert_eq!(
        BackendKind::parse_choice("firecracker").unwrap(),
        Some(BackendKind::Firecracker)
    );
    assert_eq!(
        BackendKind::parse_choice("xen").unwrap_err().field,
        "backend"
    );
    assert_eq!("shared".parse::<DiskMode>().unwrap(), DiskMode::Shared);
    assert_eq!("bogus".parse::<DiskMode>().unwrap_err().field, "disk_mode");
}

#[test]
fn copy_with_changes_revalidates() {
    let f = files();
    let c = spec(&f).vm_id("keep").build().unwrap();
    let c2 = c.with(|s| s.vcpu_count = 4).unwrap();
    assert_eq!(c2.vcpu_count(), 4);
    assert_eq!(c2.vm_id(), "keep");
    assert_eq!(c.vcpu_count(), 2);
    assert_eq!(
        c.with(|s| s.vcpu_count = 0).unwrap_err().field,
        "vcpu_count"
    );
}

#[test]
fn serde_round_trip_uses_spec_names_and_validates() {
    let f = files();
    let c = spec(&f)
        .vm_id("x1")
        .backend(Some(BackendKind::Qemu))
        .disk_mode(DiskMode::Shared)
        .env_var("K", "v")
        .build()
        .unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["vm_id"], "x1");
    assert_eq!(v["backend"], "qemu");
    assert_eq!(v["disk_mode"], "shared");
    assert_eq!(v["env_vars"]["K"], "v");
    assert_eq!(v["retain_disk_on_delete"], false);
    let back: VmConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(back, c);

    let mut bad = v.clone();
    bad["vcpu_count"] = 99.into();
    assert!(serde_json::from_value::<VmConfig>(bad).is_err());
    let mut unknown = v;
    unknown["vcpus"] = 1.into();
    assert!(serde_json::from_value::<VmConfig>(unknown).is_err());
}

#[test]
fn stored_config_loads_even_if_files_vanished() {
    let f = files();
    let c = spec(&f).vm_id("gone").build().unwrap();
    std::fs::remove_file(&f.kernel).unwrap();
    let s = c.to_spec();
    assert!(s.clone().build().is_err());
    assert_eq!(s.build_unchecked_paths().unwrap(), c);
}

#[test]
fn boots_agent_follows_init_in_boot_args() {
    let f = files();
    assert!(!spec(&f).build().unwrap().boots_agent());
    assert!(spec(&f)
        .boot_args("console=ttyS0 init=/init")
        .build()
        .unwrap()
        .boots_agent());
    assert!(!spec(&f)
        .boot_args("init=/init2")
        .build()
        .unwrap()
        .boots_agent());
}

#[test]
fn agent_is_explicit_stored_and_validated() {
    let f = files();
    // Derived once, then stored explicitly: the serialised config says it, and a reload keeps it.
    let c = spec(&f)
        .boot_args("console=ttyS0 init=/init")
        .build()
        .unwrap();
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["agent"], true);
    assert_eq!(c.to_spec().agent, Some(true));
    // An image with an /init of its own: explicit false wins over init=/init.
    let own = spec(&f)
        .boot_args("init=/init")
        .agent(false)
        .build()
        .unwrap();
    assert!(!own.boots_agent());
    assert_eq!(serde_json::to_value(&own).unwrap()["agent"], false);
    // Explicit true without the hand-over is refused, naming the field.
    let e = spec(&f).agent(true).build().unwrap_err();
    assert_eq!(e.field, "agent");
    assert!(e.to_string().contains("init=/init"), "{e}");
    // A stored config written before the field existed (no "agent" key) derives it as before.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("agent");
    let back: VmConfig = serde_json::from_value(old).unwrap();
    assert!(back.boots_agent());
}

#[test]
fn disk_size_is_bounded_needs_an_isolated_disk_and_is_not_stored_when_unset() {
    let f = files();
    assert_eq!(
        spec(&f)
            .disk_size_mib(2048)
            .build()
            .unwrap()
            .disk_size_mib(),
        Some(2048)
    );
    assert_eq!(
        field_of(spec(&f).disk_size_mib(63).build()),
        "disk_size_mib"
    );
    assert_eq!(
        field_of(spec(&f).disk_size_mib((1 << 20) + 1).build()),
        "disk_size_mib"
    );
    assert_eq!(
        field_of(
            spec(&f)
                .disk_mode(DiskMode::Shared)
                .disk_size_mib(1024)
                .build()
        ),
        "disk_size_mib"
    );
    let json = serde_json::to_string(&spec(&f).build().unwrap()).unwrap();
    assert!(!json.contains("disk_size_mib"), "{json}");
    let c = spec(&f).disk_size_mib(1024).build().unwrap();
    let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}
