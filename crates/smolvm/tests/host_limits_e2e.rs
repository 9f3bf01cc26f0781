//! Per-VM host limits against real QEMU (issue 16 item 3): the VMM runs in its own cgroup with the
//! configured limits from its first instruction, a guest filling its RAM or forking without end stays
//! inside them, and the group is gone after delete; `cleanup` removes leaked groups. Guests are kept at
//! 128 MiB so nothing here can press the shared host. Runs in its own network namespace with private
//! directories; `SMOLVM_E2E=1` as root.

mod netns_util;
mod scene_util;
mod vm_util;

use std::path::PathBuf;
use std::time::Duration;

use scene_util::{no_net, Scene};
use smolvm::{CleanupOptions, HostLimits};
use vm_util::spec;

const BOOT: Duration = Duration::from_secs(120);
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4", "ip"];

/// The cgroup directory of `pid` for v1 controller `ctl` (this host is hybrid: v1 controllers).
fn group_of(pid: u32, ctl: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == ctl))
        })
        .unwrap_or_else(|| panic!("no {ctl} line in {text}"));
    let path = line.splitn(3, ':').nth(2).unwrap();
    PathBuf::from(format!("/sys/fs/cgroup/{ctl}{path}"))
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn the_vmm_is_bounded_by_its_own_cgroup_which_delete_and_cleanup_remove() {
    let Some(scene) = Scene::enter("host limits", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let limits = HostLimits {
        cpu_quota_percent: Some(100),
        pids_max: Some(64),
        ..HostLimits::default()
    };
    let config = spec("lim")
        .mem_size_mib(128)
        .host_limits(limits)
        .build()
        .unwrap();
    m.create_with(&config, &no_net()).unwrap();
    let pid = m.start("lim", BOOT).unwrap().pid.unwrap();

    // The VMM is in a group of its own, named for the VM, with the limits asked for.
    let mem = group_of(pid, "memory");
    let name = mem.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with("-lim"), "{}", mem.display());
    assert_eq!(mem.parent().unwrap().file_name().unwrap(), "smolvm");
    let limit: u64 = read(mem.join("memory.limit_in_bytes")).parse().unwrap();
    assert_eq!(limit, (128 + 256) << 20);
    let pids = group_of(pid, "pids");
    assert!(
        pids.ends_with(format!("smolvm/{name}")),
        "{}",
        pids.display()
    );
    assert_eq!(read(pids.join("pids.max")), "64");
    let cpu = group_of(pid, "cpu");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "100000");

    let vm = env.reconnect("lim");
    // A guest that fills all its RAM (tmpfs beyond its memory) is stopped by its own kernel; the
    // VMM's host memory never passes its cap, and the guest still answers.
    let _ = vm.run("dd if=/dev/zero of=/dev/shm/fill bs=1M count=512 2>&1; sync");
    let peak: u64 = read(mem.join("memory.max_usage_in_bytes")).parse().unwrap();
    assert!(peak <= limit, "peak {peak} > cap {limit}");
    let r = vm.run("rm -f /dev/shm/fill; echo alive").unwrap();
    assert_eq!(r.stdout.trim(), "alive");

    // A guest forking without end creates guest processes, not host ones: the VMM's host pids stay
    // within pids.max and the host still runs commands.
    let _ = vm.run(
        "i=0; while [ $i -lt 3000 ]; do sleep 60 & i=$((i+1)); done 2>/dev/null; echo spawned",
    );
    let current: u32 = read(pids.join("pids.current")).parse().unwrap();
    assert!(current <= 64, "VMM tasks {current} above pids.max");
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    vm.close();

    // Delete removes the group in every controller.
    m.delete("lim").unwrap();
    for g in [&mem, &pids, &cpu] {
        assert!(!g.exists(), "{} survived delete", g.display());
    }

    // Delete also removed the `smolvm` parents when this was the last VM (the common case on a
    // fresh machine), so the ghost makes them again, as a crashed create would have.
    // A group a crash left behind (no row) is found and removed by cleanup.
    let tag = name.strip_suffix("-lim").unwrap();
    let ghosts: Vec<PathBuf> = [&mem, &pids, &cpu]
        .iter()
        .map(|g| g.parent().unwrap().join(format!("{tag}-ghost")))
        .collect();
    for g in &ghosts {
        std::fs::create_dir_all(g).unwrap();
    }
    let report = m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.cgroups, vec!["ghost".to_string()]);
    for g in &ghosts {
        assert!(!g.exists(), "{} survived cleanup", g.display());
    }
}
