//! Where this host keeps its cgroups: a cgroup v2 hierarchy with the controllers smolvm needs, else the
//! v1 hierarchies of `cpu`, `memory` and `pids`. Pure parsers over `/proc/self/cgroup` and the
//! `cgroup.controllers` file, so tests feed them text.

use std::path::{Path, PathBuf};

/// The controllers a VM's group uses.
pub(crate) const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The name of smolvm's directory under the cgroup smolvm itself runs in.
pub(crate) const PARENT_NAME: &str = "smolvm";

/// Which hierarchy VM groups live in, and the parent directory (per controller for v1) under which
/// each VM gets its own group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// cgroup v2: one directory holds every controller.
    V2 {
        /// `<mount><own cgroup>/smolvm`.
        parent: PathBuf,
    },
    /// cgroup v1: one directory per controller.
    V1 {
        /// `<mount of cpu><own cgroup in cpu>/smolvm`.
        cpu: PathBuf,
        /// Same for `memory`.
        memory: PathBuf,
        /// Same for `pids`.
        pids: PathBuf,
    },
}

impl Layout {
    /// The parent directories of VM groups (one for v2, three for v1).
    pub(crate) fn parents(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { parent } => vec![parent],
            Layout::V1 { cpu, memory, pids } => vec![cpu, memory, pids],
        }
    }
}

/// Picks the layout from `/proc/self/cgroup` (`proc_cgroup`), the controllers enabled in the v2
/// hierarchy (`v2_controllers`, the text of `<v2 mount>/cgroup.controllers`, `None` if absent) and the
/// mount points. Groups are made under the cgroup smolvm runs in (not at the root), so whatever bounds
/// smolvm (a service's or a container's limits) also bounds its VMs. `None`: no usable hierarchy.
pub(crate) fn choose(
    proc_cgroup: &str,
    v2_mount: &Path,
    v2_controllers: Option<&str>,
    v1_mount: &Path,
) -> Option<Layout> {
    let mut v2_path = None;
    let mut v1_paths: [Option<String>; 3] = [None, None, None];
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctls.is_empty() {
            v2_path = Some(path.to_string());
            continue;
        }
        for c in ctls.split(',') {
            if let Some(i) = CONTROLLERS.iter().position(|x| *x == c) {
                v1_paths[i] = Some(path.to_string());
            }
        }
    }
    let enabled: Vec<&str> = v2_controllers.unwrap_or("").split_whitespace().collect();
    if let Some(p) = &v2_path {
        if CONTROLLERS.iter().all(|c| enabled.contains(c)) {
            return Some(Layout::V2 {
                parent: under(v2_mount, p),
            });
        }
    }
    let [Some(cpu), Some(memory), Some(pids)] = v1_paths else {
        return None;
    };
    Some(Layout::V1 {
        cpu: under(&v1_mount.join("cpu"), &cpu),
        memory: under(&v1_mount.join("memory"), &memory),
        pids: under(&v1_mount.join("pids"), &pids),
    })
}

/// `<mount><cgroup path>/smolvm`.
fn under(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/')).join(PARENT_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_with_empty_v2_uses_v1_under_own_groups() {
        let l = choose(
            HYBRID,
            Path::new("/sys/fs/cgroup/unified"),
            Some(""),
            Path::new("/sys/fs/cgroup"),
        );
        assert_eq!(
            l,
            Some(Layout::V1 {
                cpu: "/sys/fs/cgroup/cpu/smolvm".into(),
                memory: "/sys/fs/cgroup/memory/process_api/abc/smolvm".into(),
                pids: "/sys/fs/cgroup/pids/smolvm".into(),
            })
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let l = choose(
            "0::/user.slice/s-1.scope\n",
            Path::new("/sys/fs/cgroup"),
            Some("cpuset cpu io memory hugetlb pids rdma\n"),
            Path::new("/sys/fs/cgroup"),
        );
        assert_eq!(
            l,
            Some(Layout::V2 {
                parent: "/sys/fs/cgroup/user.slice/s-1.scope/smolvm".into()
            })
        );
    }

    #[test]
    fn v2_missing_a_controller_and_no_v1_is_unusable() {
        let l = choose(
            "0::/\n",
            Path::new("/sys/fs/cgroup"),
            Some("cpu memory\n"),
            Path::new("/sys/fs/cgroup"),
        );
        assert_eq!(l, None);
        assert_eq!(choose("", Path::new("/x"), None, Path::new("/y")), None);
    }
}
