//! Mounting the host's cgroup hierarchies where a mount namespace of our own has none: `ip netns exec`
//! gives its command a fresh `/sys` with an empty `/sys/fs/cgroup`, so a VM started that way would run
//! without host limits. As root, in a mount namespace other than init's, smolvm mounts them there
//! again (a tmpfs holding each v1 hierarchy that has `cpu`, `memory` or `pids`, and the v2 one), as a
//! hybrid host lays them out. Mounting a v1 hierarchy with the same controllers attaches the existing
//! one, so the groups are the host's; the mounts live and die with that namespace and are never made in
//! the host's.

use std::io;
use std::path::Path;

use super::layout::CONTROLLERS;

/// What to mount, from `/proc/self/cgroup`: `(directory under the root, filesystem type, options)`,
/// plus symbolic links `(name, target)` for controllers that share a hierarchy (`cpu` ->
/// `cpu,cpuacct`). A host with only the v2 hierarchy gets it at the root itself (`None` for the tmpfs).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Whether the root is a tmpfs holding the hierarchies (hybrid / v1) or the v2 hierarchy itself.
    pub tmpfs_root: bool,
    /// `(directory, fstype, options)`; the directory is relative to the root (`""`: the root).
    pub mounts: Vec<(String, &'static str, String)>,
    /// `(link name, target)` in the root.
    pub links: Vec<(String, String)>,
}

/// The plan for `proc_cgroup`, or `None` when it names no hierarchy smolvm uses.
pub(crate) fn plan(proc_cgroup: &str) -> Option<Plan> {
    let mut v1 = Vec::new();
    let mut links = Vec::new();
    let mut v2 = false;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctls), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctls.is_empty() {
            v2 = true;
            continue;
        }
        let names: Vec<&str> = ctls.split(',').collect();
        if !names.iter().any(|c| CONTROLLERS.contains(c)) {
            continue;
        }
        v1.push((ctls.to_string(), "cgroup", ctls.to_string()));
        if names.len() > 1 {
            links.extend(names.iter().map(|n| (n.to_string(), ctls.to_string())));
        }
    }
    match (v1.is_empty(), v2) {
        (true, false) => None,
        (true, true) => Some(Plan {
            tmpfs_root: false,
            mounts: vec![(String::new(), "cgroup2", String::new())],
            links,
        }),
        (false, _) => {
            if v2 {
                v1.push(("unified".into(), "cgroup2", String::new()));
            }
            Some(Plan {
                tmpfs_root: true,
                mounts: v1,
                links,
            })
        }
    }
}

/// Mounts the hierarchies at `root` (`/sys/fs/cgroup`) if this process is root, does not provably run
/// in PID 1's mount namespace, and `root` is an empty directory. True if it mounted them. On a
/// failure half-way, what it mounted is detached again.
pub(crate) fn mount_if_missing(root: &Path, proc_cgroup: &str) -> io::Result<bool> {
    // The directory first: on every ordinary host it is not empty, and this runs on each detect.
    let empty = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
    if !empty || !crate::vmm_user::is_root() || !own_mount_namespace() {
        return Ok(false);
    }
    let Some(plan) = plan(proc_cgroup) else {
        return Ok(false);
    };
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let result = (|| -> io::Result<()> {
        if plan.tmpfs_root {
            mount("cgroup_root", root, "tmpfs", flags, "mode=0755")?;
        }
        for (dir, fstype, opts) in &plan.mounts {
            let target = root.join(dir);
            std::fs::create_dir_all(&target)?;
            mount(fstype, &target, fstype, flags, opts)?;
        }
        for (name, target) in &plan.links {
            std::os::unix::fs::symlink(target, root.join(name))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = umount_tree(root, &plan);
        return Err(e);
    }
    Ok(true)
}

/// False if this process provably shares PID 1's mount namespace (there smolvm never mounts). In a
/// container PID 1's namespace link may be unreadable; the empty `/sys/fs/cgroup` then decides alone.
fn own_mount_namespace() -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    !matches!((ns("/proc/self/ns/mnt"), ns("/proc/1/ns/mnt")), (Some(a), Some(b)) if a == b)
}

fn umount_tree(root: &Path, plan: &Plan) -> io::Result<()> {
    for (dir, _, _) in plan.mounts.iter().rev() {
        let _ = umount_lazy(&root.join(dir));
    }
    if plan.tmpfs_root {
        umount_lazy(root)?;
    }
    Ok(())
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let text = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let path = crate::dirs::cpath(target)?;
    let (source, fs, data) = (text(source)?, text(fstype)?, text(data)?);
    // SAFETY: NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fs.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let msg = format!("mount {fstype} at {}: {e}", target.display());
        return Err(io::Error::new(e.kind(), msg));
    }
    Ok(())
}

fn umount_lazy(target: &Path) -> io::Result<()> {
    let t = crate::dirs::cpath(target)?;
    // SAFETY: a NUL-terminated path alive for the call.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_host_gets_a_tmpfs_with_its_v1_hierarchies_and_the_v2_one() {
        let p =
            plan("12:pids:/\n5:cpu,cpuacct:/a\n4:memory:/b\n3:devices:/\n1:name=systemd:/\n0::/\n")
                .unwrap();
        assert!(p.tmpfs_root);
        assert_eq!(
            p.mounts,
            [
                ("pids".into(), "cgroup", "pids".into()),
                ("cpu,cpuacct".into(), "cgroup", "cpu,cpuacct".into()),
                ("memory".into(), "cgroup", "memory".into()),
                ("unified".into(), "cgroup2", String::new()),
            ]
        );
        assert_eq!(
            p.links,
            [
                ("cpu".into(), "cpu,cpuacct".into()),
                ("cpuacct".into(), "cpu,cpuacct".into())
            ]
        );
    }

    #[test]
    fn a_v2_only_host_gets_the_v2_hierarchy_at_the_root_and_nothing_is_planned_without_one() {
        let p = plan("0::/user.slice/x.scope\n").unwrap();
        assert!(!p.tmpfs_root);
        assert_eq!(p.mounts, [(String::new(), "cgroup2", String::new())]);
        assert_eq!(plan("1:name=systemd:/\n3:devices:/\n"), None);
        assert_eq!(plan(""), None);
    }
}
