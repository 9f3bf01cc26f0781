use std::path::PathBuf;

use super::*;

fn tool(p: &str) -> Option<ToolInfo> {
    Some(ToolInfo {
        path: PathBuf::from(p),
        version: None,
    })
}

fn full_host() -> HostCapabilities {
    let kvm = kvm::assess(&kvm::KvmFacts {
        device_exists: true,
        api: Ok(12),
        cpu_virt_flag: Some("vmx".into()),
        paravirtual_module: None,
        env_override: None,
    });
    HostCapabilities {
        kvm,
        tools: Tools {
            qemu_system: tool("/usr/bin/qemu-system-x86_64"),
            firecracker: tool("/usr/local/bin/firecracker"),
            nft: tool("/usr/sbin/nft"),
            ip: tool("/usr/sbin/ip"),
            ssh: tool("/usr/bin/ssh"),
            ssh_keygen: tool("/usr/bin/ssh-keygen"),
            mkfs_ext4: tool("/usr/sbin/mkfs.ext4"),
            debugfs: tool("/usr/sbin/debugfs"),
            apt_get: tool("/usr/bin/apt-get"),
            qemu_bin_env: None,
            firecracker_bin_env: None,
        },
        accelerator: Accelerator::Kvm,
        tsc_khz: Some(2_000_000),
        privileges: Privileges {
            root: true,
            cap_net_admin: true,
        },
    }
}

/// This machine's situation: paravirtual KVM, no Firecracker.
fn pvm_host() -> HostCapabilities {
    let mut h = full_host();
    h.kvm = kvm::assess(&kvm::KvmFacts {
        device_exists: true,
        api: Ok(12),
        cpu_virt_flag: None,
        paravirtual_module: Some("kvm_pvm".into()),
        env_override: None,
    });
    h.accelerator = Accelerator::Tcg;
    h.tools.firecracker = None;
    h
}

#[test]
fn a_complete_kvm_host_runs_both_and_prefers_firecracker() {
    let h = full_host();
    assert!(h.check_prerequisites(BackendKind::Firecracker).is_empty());
    assert!(h.check_prerequisites(BackendKind::Qemu).is_empty());
    assert_eq!(h.auto_backend(), Some(BackendKind::Firecracker));
    assert_eq!(h.resolve_backend(None), BackendKind::Firecracker);
    assert_eq!(
        h.resolve_backend(Some(BackendKind::Qemu)),
        BackendKind::Qemu
    );
}

#[test]
fn a_pvm_host_runs_qemu_only_and_says_why_not_firecracker() {
    let h = pvm_host();
    assert_eq!(
        h.check_prerequisites(BackendKind::Firecracker),
        vec![
            "KVM is not usable: /dev/kvm is provided by kvm_pvm (nested paravirtual KVM) and no \
             vmx/svm CPU flag: it cannot boot standard kernels"
                .to_string(),
            "firecracker not found: install a release binary from https://github.com/\
             firecracker-microvm/firecracker/releases on PATH or point SMOLVM_FIRECRACKER_BIN at it"
                .to_string(),
        ]
    );
    assert!(h.check_prerequisites(BackendKind::Qemu).is_empty());
    assert_eq!(h.auto_backend(), Some(BackendKind::Qemu));
}

#[test]
fn missing_tools_each_get_a_line_with_the_fix() {
    let mut h = full_host();
    h.tools.qemu_system = None;
    h.tools.ssh = None;
    h.tools.ip = None;
    h.tools.nft = None;
    h.privileges = Privileges {
        root: false,
        cap_net_admin: false,
    };
    assert_eq!(
        h.check_prerequisites(BackendKind::Qemu),
        vec![
            "qemu-system-x86_64 not found: apt-get install qemu-system-x86".to_string(),
            "ssh not found: apt-get install openssh-client".to_string(),
        ]
    );
    let fc = h.check_prerequisites(BackendKind::Firecracker);
    assert_eq!(fc.len(), 3, "{fc:?}");
    assert!(fc[0].contains("apt-get install iproute2"));
    assert!(fc[1].contains("apt-get install nftables"));
    assert!(fc[2].contains("CAP_NET_ADMIN"));
    assert_eq!(h.auto_backend(), None);
    // Auto with nothing ready resolves to QEMU, whose errors are then reported.
    assert_eq!(h.resolve_backend(None), BackendKind::Qemu);

    // CAP_NET_ADMIN without root is enough.
    h.privileges.cap_net_admin = true;
    assert_eq!(h.check_prerequisites(BackendKind::Firecracker).len(), 2);
}

#[test]
fn a_bad_binary_override_is_named() {
    let mut h = full_host();
    h.tools.qemu_system = None;
    h.tools.qemu_bin_env = Some("/opt/nope".into());
    assert_eq!(
        h.check_prerequisites(BackendKind::Qemu),
        vec![
            "SMOLVM_QEMU_BIN=/opt/nope is not an executable program: fix the variable or unset it"
                .to_string()
        ]
    );
}

#[test]
fn serialises_for_doctor_json() {
    let v = serde_json::to_value(pvm_host()).unwrap();
    assert_eq!(v["accelerator"], "tcg");
    assert_eq!(v["kvm"]["present"], true);
    assert_eq!(v["kvm"]["usable"], false);
    assert_eq!(v["kvm"]["paravirtual_module"], "kvm_pvm");
    assert_eq!(
        v["tools"]["qemu-system-x86_64"]["path"],
        "/usr/bin/qemu-system-x86_64"
    );
    assert!(v["tools"]["firecracker"].is_null());
    assert_eq!(v["tools"]["mkfs.ext4"]["path"], "/usr/sbin/mkfs.ext4");
    assert_eq!(v["privileges"]["root"], true);
}

#[test]
fn detect_on_this_host_is_consistent() {
    let h = HostCapabilities::detect();
    assert_eq!(h.kvm.usable, h.accelerator == Accelerator::Kvm);
    assert_eq!(h.kvm.usable, h.kvm.reason.is_none());
    // Honesty check on machines with a paravirtual KVM (like the ones smolvm is developed on), unless
    // someone forced KVM on.
    if h.kvm.paravirtual_module.is_some() && h.kvm.forced.is_none() {
        assert!(!h.kvm.usable);
    }
    // Root can always open an existing /dev/kvm, and every real KVM reports API version 12.
    if h.kvm.device_exists && h.privileges.root {
        assert!(h.kvm.present, "{:?}", h.kvm);
        assert_eq!(h.kvm.api_version, Some(12));
    }
    if let Some(q) = &h.tools.qemu_system {
        assert!(q.path.is_absolute());
        assert!(q.version.is_some(), "qemu version not probed");
    }
}

#[test]
fn qemu_older_than_tested_is_a_warning_not_a_problem() {
    let mut h = full_host();
    let with = |h: &mut HostCapabilities, v: &str| {
        h.tools.qemu_system.as_mut().unwrap().version = Some(v.to_string());
    };
    with(&mut h, "10.0.2");
    assert_eq!(h.warnings(), Vec::<String>::new());
    with(&mut h, "11.1");
    assert_eq!(h.warnings(), Vec::<String>::new());
    with(&mut h, "7.2.22");
    let w = h.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("QEMU 7.2.22 is older than the tested 10.0"),
        "{w:?}"
    );
    assert!(h.check_prerequisites(BackendKind::Qemu).is_empty());
    with(&mut h, "garbage");
    assert!(
        h.warnings()[0].contains("unrecognised version"),
        "{:?}",
        h.warnings()
    );
}
