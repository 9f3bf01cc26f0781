//! Host limits when the CLI runs under `ip netns exec` (a fresh `/sys` without cgroupfs): smolvm mounts
//! the hierarchies in that mount namespace itself, so the VMM still runs in its own group with the
//! limits asked for, and `delete` removes the group. `SMOLVM_E2E=1`, as root; inside a network namespace
//! the test creates and removes.

mod cli_netns;
#[path = "../../smolvm/tests/netns_util/mod.rs"]
mod netns_util;

use cli_netns::{DeleteOnDrop, Dirs};
use netns_util::{e2e, Netns};

const VM: &str = "lim-cli";

/// The directory of `pid`'s group in the v1 controller `ctl`, or in the v2 hierarchy, as the host sees it.
fn group_of(pid: u32, ctl: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctls.split(',').any(|c| c == ctl) {
            return format!("/sys/fs/cgroup/{ctl}{path}").into();
        }
    }
    panic!("no {ctl} hierarchy for pid {pid}: {text}");
}

#[test]
fn a_vm_started_under_ip_netns_exec_runs_in_its_cgroup_with_its_limits() {
    if !e2e(
        "host limits under ip netns exec",
        &["ip", "qemu-system-x86_64", "mkfs.ext4"],
    ) {
        return;
    }
    if !std::path::Path::new("/sys/fs/cgroup/pids").is_dir() {
        // This check reads the host's v1 layout; a pure v2 host is covered by the unit tests.
        panic!("this test needs the host's v1 pids hierarchy at /sys/fs/cgroup/pids");
    }
    let ns = Netns::new();
    let dirs = Dirs::new("smvl");
    dirs.share_image_cache();
    let out = dirs.smolvm(None, &["image", "build"]);
    assert!(out.status.success(), "smolvm image build: {out:?}");
    let run = |args: &[&str]| {
        let out = dirs.smolvm(Some(&ns), args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    };
    let cleanup = DeleteOnDrop {
        dirs: &dirs,
        ns: &ns,
        ids: vec![VM],
    };
    run(&[
        "create",
        "--id",
        VM,
        "--network",
        "none",
        "--mem",
        "256",
        "--cpu-quota",
        "150",
        "--pids-max",
        "100",
        "--start",
        "--boot-timeout",
        "120",
    ]);
    let info: serde_json::Value = serde_json::from_slice(&run(&["info", VM, "--json"])).unwrap();
    let pid = info["pid"].as_u64().expect("a running VMM") as u32;
    let pids = group_of(pid, "pids");
    assert!(
        pids.parent().unwrap().ends_with("smolvm") && pids.to_string_lossy().ends_with(VM),
        "the VMM is not in its own group: {}",
        pids.display()
    );
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    assert_eq!(read(pids.join("pids.max")), "100");
    assert_eq!(
        read(group_of(pid, "cpu").join("cpu.cfs_quota_us")),
        "150000"
    );
    run(&["delete", VM]);
    assert!(!pids.exists(), "delete left {}", pids.display());
    drop(cleanup);
}
