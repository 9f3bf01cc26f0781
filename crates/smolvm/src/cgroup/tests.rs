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
        ops[ops.len() - 3..],
        [
            "rmdir /cg/cpu/smolvm/abcd1234-vm-1",
            "rmdir /cg/memory/own/smolvm/abcd1234-vm-1",
            "rmdir /cg/pids/smolvm/abcd1234-vm-1",
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
