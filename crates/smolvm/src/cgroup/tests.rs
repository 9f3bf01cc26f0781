use std::sync::Mutex;

use super::*;

/// Records every operation; `fail_on` makes writes to that file fail.
#[derive(Debug, Default)]
struct FakeFs {
    ops: Mutex<Vec<String>>,
    fail_on: Option<&'static str>,
    dirs: Vec<String>,
}

impl FakeFs {
    fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().clone()
    }
}

impl CgroupFs for std::sync::Arc<FakeFs> {
    fn create_dir(&self, p: &Path) -> io::Result<()> {
        self.ops
            .lock()
            .unwrap()
            .push(format!("mkdir {}", p.display()));
        Ok(())
    }
    fn write(&self, p: &Path, v: &str) -> io::Result<()> {
        if self.fail_on.is_some_and(|f| p.ends_with(f)) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.ops
            .lock()
            .unwrap()
            .push(format!("write {} {v}", p.display()));
        Ok(())
    }
    fn remove_dir(&self, p: &Path) -> io::Result<()> {
        self.ops
            .lock()
            .unwrap()
            .push(format!("rmdir {}", p.display()));
        Ok(())
    }
    fn list_dirs(&self, _: &Path) -> io::Result<Vec<String>> {
        Ok(self.dirs.clone())
    }
}

fn v1() -> Layout {
    Layout::V1 {
        cpu: "/cg/cpu/smolvm".into(),
        memory: "/cg/memory/own/smolvm".into(),
        pids: "/cg/pids/smolvm".into(),
    }
}

fn groups(layout: Layout, fs: &std::sync::Arc<FakeFs>) -> VmGroups {
    VmGroups::new(layout, Box::new(fs.clone()), "abcd1234")
}

#[test]
fn limits_default_to_guest_ram_plus_overhead() {
    let l = CgroupLimits::for_guest(128, None, None, None, None);
    assert_eq!(l.memory_max_bytes, (128 + VMM_OVERHEAD_MIB) << 20);
    assert_eq!(l.pids_max, DEFAULT_PIDS_MAX);
    assert_eq!(l.cpu_weight, 100);
    assert_eq!(l.cpu_quota_percent, None);
    let l = CgroupLimits::for_guest(128, Some(300), Some(50), Some(200), Some(64));
    assert_eq!(l.memory_max_bytes, 300 << 20);
    assert_eq!(
        (l.cpu_quota_percent, l.cpu_weight, l.pids_max),
        (Some(50), 200, 64)
    );
}

#[test]
fn v1_writes_exact_files() {
    let fs = std::sync::Arc::new(FakeFs::default());
    let g = groups(v1(), &fs);
    let l = CgroupLimits::for_guest(128, Some(384), Some(150), None, Some(100));
    let procs = g.create("vm-1", &l).unwrap();
    assert_eq!(
        procs,
        vec![
            PathBuf::from("/cg/cpu/smolvm/abcd1234-vm-1/cgroup.procs"),
            PathBuf::from("/cg/memory/own/smolvm/abcd1234-vm-1/cgroup.procs"),
            PathBuf::from("/cg/pids/smolvm/abcd1234-vm-1/cgroup.procs"),
        ]
    );
    assert_eq!(
        fs.ops(),
        vec![
            "mkdir /cg/cpu/smolvm",
            "mkdir /cg/cpu/smolvm/abcd1234-vm-1",
            "mkdir /cg/memory/own/smolvm",
            "mkdir /cg/memory/own/smolvm/abcd1234-vm-1",
            "mkdir /cg/pids/smolvm",
            "mkdir /cg/pids/smolvm/abcd1234-vm-1",
            "write /cg/cpu/smolvm/abcd1234-vm-1/cpu.shares 1024",
            "write /cg/cpu/smolvm/abcd1234-vm-1/cpu.cfs_period_us 100000",
            "write /cg/cpu/smolvm/abcd1234-vm-1/cpu.cfs_quota_us 150000",
            "write /cg/memory/own/smolvm/abcd1234-vm-1/memory.limit_in_bytes 402653184",
            "write /cg/pids/smolvm/abcd1234-vm-1/pids.max 100",
        ]
    );
}

#[test]
fn v1_without_quota_writes_minus_one() {
    let fs = std::sync::Arc::new(FakeFs::default());
    groups(v1(), &fs)
        .create(
            "vm-1",
            &CgroupLimits::for_guest(512, None, None, Some(50), None),
        )
        .unwrap();
    let ops = fs.ops();
    assert!(ops.contains(&"write /cg/cpu/smolvm/abcd1234-vm-1/cpu.cfs_quota_us -1".to_string()));
    assert!(ops.contains(&"write /cg/cpu/smolvm/abcd1234-vm-1/cpu.shares 512".to_string()));
    assert!(ops.contains(&format!(
        "write /cg/memory/own/smolvm/abcd1234-vm-1/memory.limit_in_bytes {}",
        (512 + VMM_OVERHEAD_MIB) << 20
    )));
}

#[test]
fn v2_writes_exact_files() {
    let fs = std::sync::Arc::new(FakeFs::default());
    let g = groups(
        Layout::V2 {
            parent: "/cg/own/smolvm".into(),
        },
        &fs,
    );
    let procs = g
        .create(
            "vm-1",
            &CgroupLimits::for_guest(128, None, Some(50), None, None),
        )
        .unwrap();
    assert_eq!(
        procs,
        vec![PathBuf::from("/cg/own/smolvm/abcd1234-vm-1/cgroup.procs")]
    );
    assert_eq!(
        fs.ops(),
        vec![
            "mkdir /cg/own/smolvm".to_string(),
            "write /cg/own/cgroup.subtree_control +cpu +memory +pids".into(),
            "write /cg/own/smolvm/cgroup.subtree_control +cpu +memory +pids".into(),
            "mkdir /cg/own/smolvm/abcd1234-vm-1".into(),
            "write /cg/own/smolvm/abcd1234-vm-1/cpu.weight 100".into(),
            "write /cg/own/smolvm/abcd1234-vm-1/cpu.max 50000 100000".into(),
            format!(
                "write /cg/own/smolvm/abcd1234-vm-1/memory.max {}",
                (128 + VMM_OVERHEAD_MIB) << 20
            ),
            "write /cg/own/smolvm/abcd1234-vm-1/pids.max 256".into(),
        ]
    );
}

#[test]
fn failed_create_removes_the_group() {
    let fs = std::sync::Arc::new(FakeFs {
        fail_on: Some("memory.limit_in_bytes"),
        ..FakeFs::default()
    });
    let err = groups(v1(), &fs)
        .create(
            "vm-1",
            &CgroupLimits::for_guest(128, None, None, None, None),
        )
        .unwrap_err();
    assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
    let ops = fs.ops();
    assert_eq!(
        ops[ops.len() - 6..],
        [
            "rmdir /cg/cpu/smolvm/abcd1234-vm-1",
            "rmdir /cg/memory/own/smolvm/abcd1234-vm-1",
            "rmdir /cg/pids/smolvm/abcd1234-vm-1",
            // The parents too, when that was the last group (the kernel refuses otherwise).
            "rmdir /cg/cpu/smolvm",
            "rmdir /cg/memory/own/smolvm",
            "rmdir /cg/pids/smolvm",
        ]
    );
}

#[test]
fn list_returns_only_this_stores_vms() {
    let fs = std::sync::Arc::new(FakeFs {
        dirs: vec![
            "abcd1234-vm-1".into(),
            "ffff0000-vm-2".into(),
            "abcd1234-x".into(),
        ],
        ..FakeFs::default()
    });
    assert_eq!(groups(v1(), &fs).list().unwrap(), vec!["vm-1", "x"]);
}

/// A directory tree that behaves like cgroupfs where it matters: `mkdir` needs the parent, `rmdir`
/// refuses a directory with children (EBUSY, as cgroup v1 does).
#[derive(Debug, Default)]
struct TreeFs {
    dirs: Mutex<std::collections::BTreeSet<PathBuf>>,
    /// Right before the `mkdir` of the first path, the second is removed (a racing remover), once.
    before_mkdir: Mutex<Option<(PathBuf, PathBuf)>>,
}

impl TreeFs {
    fn with_roots(roots: &[&str]) -> std::sync::Arc<TreeFs> {
        let fs = TreeFs::default();
        fs.dirs
            .lock()
            .unwrap()
            .extend(roots.iter().map(PathBuf::from));
        std::sync::Arc::new(fs)
    }
    fn has(&self, p: &str) -> bool {
        self.dirs.lock().unwrap().contains(Path::new(p))
    }
}

impl CgroupFs for std::sync::Arc<TreeFs> {
    fn create_dir(&self, p: &Path) -> io::Result<()> {
        let race = {
            let mut b = self.before_mkdir.lock().unwrap();
            match &*b {
                Some((at, _)) if at == p => b.take(),
                _ => None,
            }
        };
        let mut dirs = self.dirs.lock().unwrap();
        if let Some((_, victim)) = race {
            dirs.remove(&victim);
        }
        if !dirs.contains(p.parent().unwrap()) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        dirs.insert(p.to_path_buf());
        Ok(())
    }
    fn write(&self, p: &Path, _: &str) -> io::Result<()> {
        if self.dirs.lock().unwrap().contains(p.parent().unwrap()) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        }
    }
    fn remove_dir(&self, p: &Path) -> io::Result<()> {
        let mut dirs = self.dirs.lock().unwrap();
        if dirs.iter().any(|d| d.parent() == Some(p)) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        dirs.remove(p);
        Ok(())
    }
    fn list_dirs(&self, p: &Path) -> io::Result<Vec<String>> {
        let dirs = self.dirs.lock().unwrap();
        Ok(dirs
            .iter()
            .filter(|d| d.parent() == Some(p))
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    }
}

fn tree_groups(fs: &std::sync::Arc<TreeFs>) -> VmGroups {
    VmGroups::new(v1(), Box::new(fs.clone()), "abcd1234")
}

const ROOTS: [&str; 3] = ["/cg/cpu", "/cg/memory/own", "/cg/pids"];
const PARENTS: [&str; 3] = ["/cg/cpu/smolvm", "/cg/memory/own/smolvm", "/cg/pids/smolvm"];

#[test]
fn the_last_vm_takes_the_empty_parents_with_it() {
    let fs = TreeFs::with_roots(&ROOTS);
    let g = tree_groups(&fs);
    let l = CgroupLimits::for_guest(128, None, None, None, None);
    g.create("vm-1", &l).unwrap();
    g.create("vm-2", &l).unwrap();
    g.remove("vm-1").unwrap();
    // vm-2 still has its groups: the parents stay.
    assert!(PARENTS.iter().all(|p| fs.has(p)));
    assert_eq!(g.list().unwrap(), ["vm-2"]);
    g.remove("vm-2").unwrap();
    assert!(PARENTS.iter().all(|p| !fs.has(p)), "{:?}", fs.dirs);
    assert!(ROOTS.iter().all(|p| fs.has(p)), "smolvm's own cgroup stays");
    assert!(g.list().unwrap().is_empty());
}

#[test]
fn a_create_whose_parent_a_remove_took_away_makes_it_again() {
    let fs = TreeFs::with_roots(&ROOTS);
    let g = tree_groups(&fs);
    // The remover's rmdir of the (then empty) memory parent lands between the create's mkdir of
    // the parent and its mkdir of the group.
    *fs.before_mkdir.lock().unwrap() = Some((
        "/cg/memory/own/smolvm/abcd1234-vm-1".into(),
        "/cg/memory/own/smolvm".into(),
    ));
    let procs = g
        .create(
            "vm-1",
            &CgroupLimits::for_guest(128, None, None, None, None),
        )
        .unwrap();
    assert_eq!(procs.len(), 3);
    for p in PARENTS {
        assert!(fs.has(&format!("{p}/abcd1234-vm-1")), "{p}: {:?}", fs.dirs);
    }
}

#[test]
fn cleanup_of_leaked_groups_removes_parents_left_empty() {
    let fs = TreeFs::with_roots(&ROOTS);
    fs.dirs
        .lock()
        .unwrap()
        .extend(PARENTS.iter().map(PathBuf::from));
    tree_groups(&fs).remove_empty_parents();
    assert!(PARENTS.iter().all(|p| !fs.has(p)));
}
