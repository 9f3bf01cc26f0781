//! `smolvm doctor`: output and exit status.

use std::process::{Command, Output};

fn smolvm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smolvm"));
    cmd.args(args)
        .env("SMOLVM_DATA_DIR", data.path())
        .env_remove("SMOLVM_BACKEND")
        .env_remove("SMOLVM_KVM")
        .env_remove("SMOLVM_QEMU_BIN")
        .env_remove("SMOLVM_FIRECRACKER_BIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Whether this host has QEMU; with SMOLVM_E2E=1 it must.
fn qemu_installed(report: &serde_json::Value) -> bool {
    let has = !report["host"]["tools"]["qemu-system-x86_64"].is_null();
    if !has && std::env::var("SMOLVM_E2E").as_deref() == Ok("1") {
        panic!("SMOLVM_E2E=1 but qemu-system-x86_64 is not installed");
    }
    has
}

#[test]
fn json_report_has_every_part_and_exit_status_matches() {
    let out = smolvm(&["doctor", "--json"], &[]);
    let r = json(&out);
    for key in ["ok", "backend", "backends", "host"] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    let kvm = &r["host"]["kvm"];
    for key in [
        "present",
        "usable",
        "reason",
        "paravirtual_module",
        "cpu_virt_flag",
    ] {
        assert!(kvm.get(key).is_some(), "missing kvm.{key}");
    }
    // Usable KVM has no reason; unusable KVM always says why.
    assert_eq!(kvm["usable"].as_bool().unwrap(), kvm["reason"].is_null());
    assert_eq!(
        r["host"]["accelerator"],
        if kvm["usable"].as_bool().unwrap() {
            "kvm"
        } else {
            "tcg"
        }
    );
    for tool in ["nft", "ip", "ssh", "mkfs.ext4", "debugfs", "firecracker"] {
        assert!(
            r["host"]["tools"].get(tool).is_some(),
            "missing tool {tool}"
        );
    }
    let ok = r["ok"].as_bool().unwrap();
    assert_eq!(out.status.success(), ok);
    if qemu_installed(&r) && !r["host"]["tools"]["ssh"].is_null() {
        assert!(ok);
        assert_eq!(r["backends"]["qemu"]["ready"], true);
    }
    // A paravirtual KVM is reported as present but not usable, never as fine.
    if !kvm["paravirtual_module"].is_null() {
        assert_eq!(kvm["usable"], false);
        assert!(kvm["reason"]
            .as_str()
            .unwrap()
            .contains("nested paravirtual"));
    }
}

#[test]
fn text_report_lists_sections_and_tools() {
    let out = smolvm(&["doctor"], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Backends",
        "KVM",
        "/dev/kvm",
        "usable",
        "qemu-system-x86_64",
        "firecracker",
        "nft",
        "mkfs.ext4",
        "debugfs",
        "QEMU accelerator",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn no_runnable_backend_exits_1_with_readable_lines() {
    let out = smolvm(
        &["doctor"],
        &[
            ("SMOLVM_KVM", "off"),
            ("SMOLVM_QEMU_BIN", "/nonexistent/qemu"),
            ("SMOLVM_FIRECRACKER_BIN", "/nonexistent/firecracker"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(
        "- SMOLVM_QEMU_BIN=/nonexistent/qemu is not an executable program: fix the variable or unset it"
    ), "{text}");
    assert!(
        text.contains("- KVM is not usable: disabled by SMOLVM_KVM=off"),
        "{text}"
    );
    assert!(text.contains("none: no backend can run a VM"), "{text}");

    let r = json(&smolvm(
        &["doctor", "--json"],
        &[
            ("SMOLVM_KVM", "off"),
            ("SMOLVM_QEMU_BIN", "/nonexistent/qemu"),
            ("SMOLVM_FIRECRACKER_BIN", "/nonexistent/firecracker"),
        ],
    ));
    assert_eq!(r["ok"], false);
    assert!(r["backend"].is_null());
    assert_eq!(r["host"]["accelerator"], "tcg");
    assert_eq!(r["host"]["kvm"]["forced"], false);
}

#[test]
fn requested_backend_decides_the_exit_status() {
    // Firecracker cannot run without KVM, whatever QEMU can do.
    let out = smolvm(
        &["--backend", "firecracker", "doctor", "--json"],
        &[("SMOLVM_KVM", "off")],
    );
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["requested_backend"], "firecracker");
    assert_eq!(r["ok"], false);

    let out = smolvm(&["--backend", "qemu", "doctor", "--json"], &[]);
    let r = json(&out);
    assert_eq!(r["requested_backend"], "qemu");
    assert_eq!(out.status.success(), r["backends"]["qemu"]["ready"] == true);

    // A value that is no backend is a usage error, refused by the parser before doctor runs.
    let out = smolvm(&["--backend", "bogus", "doctor"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend"));
}
