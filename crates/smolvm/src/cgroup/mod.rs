//! Per-VM host limits: one cgroup per VM (CPU weight and optional quota, memory, pids) that its VMM is
//! spawned into, so a guest can take neither the host's memory nor all of its CPU.
//!
//! cgroup v2 when the host's v2 hierarchy has the `cpu`, `memory` and `pids` controllers, else the v1
//! hierarchies (see [`layout`]). All file access goes through [`CgroupFs`], so unit tests check the
//! exact files and values written. Groups are named `<store tag>-<vm id>` (see
//! [`crate::dirs::store_tag`]) under a `smolvm` directory in the cgroup smolvm runs in; the VMM
//! enters its group between fork and exec (it writes `0` to each `cgroup.procs`), so it never runs
//! guest code outside it.

pub(crate) mod layout;
mod mount;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) use layout::Layout;

/// Host memory the VMM needs beyond guest RAM: QEMU's own heap, TCG's translation cache (smolvm
/// sizes it, see `TCG_TB_SIZE_MIB`), device buffers and thread stacks. Measured RSS of QEMU 10.0.2
/// under TCG with every guest page touched: see the README's Security section.
pub(crate) const VMM_OVERHEAD_MIB: u64 = 256;
/// Default `pids.max`: QEMU's threads (vCPUs, I/O, a worker pool of up to 64) with room to spare.
/// Guest processes are not host processes; this bounds the VMM itself.
pub(crate) const DEFAULT_PIDS_MAX: u32 = 256;
/// Default CPU weight (cgroup v2 scale, 1-10000; 100 is every group's default).
pub(crate) const DEFAULT_CPU_WEIGHT: u32 = 100;
/// Retries of an `rmdir` refused with EBUSY, 20 ms apart (a VMM not yet reaped).
const REMOVE_RETRIES: u32 = 100;
/// CPU quota period, microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// Attempts of a create whose parent a concurrent remove took away.
const CREATE_RETRIES: u32 = 5;

/// Errors of the cgroup area.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be made, written or removed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// A directory on the way was missing (a parent removed meanwhile).
    fn is_not_found(&self) -> bool {
        match self {
            CgroupError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
        }
    }
}

/// The limits of one VM's group, resolved from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    /// Relative CPU weight, 1-10000 (v2 `cpu.weight`; v1 `cpu.shares` = weight * 1024 / 100).
    pub cpu_weight: u32,
    /// Hard CPU cap in percent of one CPU (200 = two CPUs); `None`: no cap.
    pub cpu_quota_percent: Option<u32>,
    /// Memory cap of the VMM in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_max_bytes: u64,
    /// Cap on the VMM's processes and threads (`pids.max`).
    pub pids_max: u32,
}

impl CgroupLimits {
    /// Limits for a VM with `mem_size_mib` of guest RAM: memory = guest RAM + [`VMM_OVERHEAD_MIB`]
    /// unless `memory_limit_mib` says otherwise.
    pub(crate) fn for_guest(
        mem_size_mib: u32,
        memory_limit_mib: Option<u32>,
        cpu_quota_percent: Option<u32>,
        cpu_weight: Option<u32>,
        pids_max: Option<u32>,
    ) -> CgroupLimits {
        let mib = memory_limit_mib
            .map(u64::from)
            .unwrap_or(u64::from(mem_size_mib) + VMM_OVERHEAD_MIB);
        CgroupLimits {
            cpu_weight: cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT),
            cpu_quota_percent,
            memory_max_bytes: mib << 20,
            pids_max: pids_max.unwrap_or(DEFAULT_PIDS_MAX),
        }
    }
}

/// The file operations on cgroupfs, behind a trait so tests record them.
pub(crate) trait CgroupFs: Send + Sync + std::fmt::Debug {
    /// `mkdir`, succeeding if it exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Writes `value` to an existing control file.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// `rmdir` (cgroups are removed with rmdir, never recursively); absent is fine.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Names of the subdirectories of `path` (empty if it is absent).
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// The real cgroupfs.
#[derive(Debug, Default)]
pub(crate) struct RealCgroupFs;

impl CgroupFs for RealCgroupFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2): cgroup files take one value per write.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
}

/// VM groups of one store: create with limits, list, remove.
#[derive(Debug)]
pub(crate) struct VmGroups {
    layout: Layout,
    fs: Box<dyn CgroupFs>,
    store_tag: String,
}

impl VmGroups {
    /// Groups of the store tagged `store_tag` in `layout`, through `fs`.
    pub(crate) fn new(
        layout: Layout,
        fs: Box<dyn CgroupFs>,
        store_tag: impl Into<String>,
    ) -> VmGroups {
        VmGroups {
            layout,
            fs,
            store_tag: store_tag.into(),
        }
    }

    /// This host's layout with the real cgroupfs; `None` when no hierarchy has the controllers (or
    /// /proc/self/cgroup is unreadable).
    pub(crate) fn detect(store_tag: &str) -> Option<VmGroups> {
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let root = Path::new("/sys/fs/cgroup");
        match mount::mount_if_missing(root, &proc_cgroup) {
            Ok(true) => tracing::debug!("mounted the cgroup hierarchies in this mount namespace"),
            Ok(false) => {}
            // Not allowed (a container without CAP_SYS_ADMIN): no groups, as before, and no warning
            // on every call.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::debug!(error = %e, "not allowed to mount the cgroup hierarchies here")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not mount the cgroup hierarchies in this mount namespace")
            }
        }
        // Pure v2 mounts at the root; a hybrid host mounts it at `unified`.
        let (v2_mount, controllers) = [root.to_path_buf(), root.join("unified")]
            .into_iter()
            .find_map(|m| {
                let c = std::fs::read_to_string(m.join("cgroup.controllers")).ok()?;
                Some((m, c))
            })
            .unwrap_or_else(|| (root.to_path_buf(), String::new()));
        let layout = layout::choose(&proc_cgroup, &v2_mount, Some(&controllers), root)?;
        // `/proc/self/cgroup` names hierarchies that need not be mounted here (see [`mount`] for
        // when smolvm mounts them itself). The cgroup smolvm runs in must exist.
        let mounted = layout
            .parents()
            .iter()
            .all(|p| p.parent().is_some_and(Path::is_dir));
        if !mounted {
            tracing::debug!("cgroup hierarchies are not mounted in this mount namespace");
            return None;
        }
        Some(VmGroups::new(layout, Box::new(RealCgroupFs), store_tag))
    }

    fn name(&self, vm_id: &str) -> String {
        format!("{}-{vm_id}", self.store_tag)
    }

    /// The VM's group directories (one for v2, one per controller for v1).
    pub(crate) fn dirs(&self, vm_id: &str) -> Vec<PathBuf> {
        let name = self.name(vm_id);
        self.layout
            .parents()
            .iter()
            .map(|p| p.join(&name))
            .collect()
    }

    /// Creates (or updates) the VM's group with `limits`. Returns the `cgroup.procs` files its VMM
    /// must enter. On error the group is removed again.
    pub(crate) fn create(
        &self,
        vm_id: &str,
        limits: &CgroupLimits,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        let mut r = self.try_create(vm_id, limits);
        // The last VM's remove may take away the `smolvm` parent between our mkdir of it and of the
        // VM's group (ENOENT): start over, the parent is made again.
        for _ in 0..CREATE_RETRIES {
            match &r {
                Err(e) if e.is_not_found() => r = self.try_create(vm_id, limits),
                _ => break,
            }
        }
        if r.is_err() {
            let _ = self.remove(vm_id);
        }
        r
    }

    fn try_create(&self, vm_id: &str, l: &CgroupLimits) -> Result<Vec<PathBuf>, CgroupError> {
        let name = self.name(vm_id);
        let quota = l
            .cpu_quota_percent
            .map(|p| u64::from(p) * CPU_PERIOD_US / 100);
        let mut writes: Vec<(PathBuf, String)> = Vec::new();
        match &self.layout {
            Layout::V2 { parent } => {
                self.mkdir(parent)?;
                // Controllers must be enabled in every ancestor's subtree_control; the parent of
                // `smolvm` is smolvm's own cgroup (root, or a delegated one).
                if let Some(up) = parent.parent() {
                    self.write(&up.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                }
                self.write(&parent.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                let g = parent.join(&name);
                self.mkdir(&g)?;
                writes.push((g.join("cpu.weight"), l.cpu_weight.to_string()));
                writes.push((
                    g.join("cpu.max"),
                    match quota {
                        Some(q) => format!("{q} {CPU_PERIOD_US}"),
                        None => format!("max {CPU_PERIOD_US}"),
                    },
                ));
                writes.push((g.join("memory.max"), l.memory_max_bytes.to_string()));
                writes.push((g.join("pids.max"), l.pids_max.to_string()));
                for (f, v) in &writes {
                    self.write(f, v)?;
                }
                Ok(vec![g.join("cgroup.procs")])
            }
            Layout::V1 { cpu, memory, pids } => {
                let mut procs = Vec::new();
                for parent in [cpu, memory, pids] {
                    self.mkdir(parent)?;
                    self.mkdir(&parent.join(&name))?;
                    procs.push(parent.join(&name).join("cgroup.procs"));
                }
                let (c, m, p) = (cpu.join(&name), memory.join(&name), pids.join(&name));
                let shares = (u64::from(l.cpu_weight) * 1024 / 100).max(2);
                writes.push((c.join("cpu.shares"), shares.to_string()));
                writes.push((c.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
                writes.push((
                    c.join("cpu.cfs_quota_us"),
                    quota.map_or("-1".to_string(), |q| q.to_string()),
                ));
                writes.push((
                    m.join("memory.limit_in_bytes"),
                    l.memory_max_bytes.to_string(),
                ));
                writes.push((p.join("pids.max"), l.pids_max.to_string()));
                for (f, v) in &writes {
                    self.write(f, v)?;
                }
                Ok(procs)
            }
        }
    }

    /// Removes the VM's group (its VMM must be gone: a group with processes cannot be removed).
    pub(crate) fn remove(&self, vm_id: &str) -> Result<(), CgroupError> {
        let mut first = None;
        for d in self.dirs(vm_id) {
            // A VMM that just exited can hold its group until its parent reaps it (rmdir: EBUSY):
            // wait briefly for the reaper rather than leak the group.
            let mut result = self.fs.remove_dir(&d);
            for _ in 0..REMOVE_RETRIES {
                match &result {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        result = self.fs.remove_dir(&d);
                    }
                    _ => break,
                }
            }
            if let Err(source) = result {
                first.get_or_insert(CgroupError::Io {
                    op: "rmdir",
                    path: d,
                    source,
                });
            }
        }
        self.remove_empty_parents();
        first.map_or(Ok(()), Err)
    }

    /// Removes the `smolvm` parent directories that hold no group any more (the last VM is gone).
    /// The kernel refuses to remove a cgroup with children (EBUSY or ENOTEMPTY), so a parent that a
    /// concurrent create just filled stays; a create that finds its parent gone makes it again (see
    /// [`VmGroups::create`]). Failures are only logged: an empty parent bounds nothing.
    pub(crate) fn remove_empty_parents(&self) {
        for p in self.layout.parents() {
            match self.fs.remove_dir(p) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
                Err(e) => {
                    tracing::debug!(path = %p.display(), error = %e, "could not remove the cgroup parent")
                }
            }
        }
    }

    /// Ids of the VMs of this store that have a group (in any controller).
    pub(crate) fn list(&self) -> Result<Vec<String>, CgroupError> {
        let prefix = format!("{}-", self.store_tag);
        let mut ids = std::collections::BTreeSet::new();
        for p in self.layout.parents() {
            let names = self.fs.list_dirs(p).map_err(|source| CgroupError::Io {
                op: "list",
                path: p.to_path_buf(),
                source,
            })?;
            ids.extend(
                names
                    .into_iter()
                    .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string)),
            );
        }
        Ok(ids.into_iter().collect())
    }

    fn mkdir(&self, p: &Path) -> Result<(), CgroupError> {
        self.fs.create_dir(p).map_err(|source| CgroupError::Io {
            op: "mkdir",
            path: p.to_path_buf(),
            source,
        })
    }

    fn write(&self, p: &Path, v: &str) -> Result<(), CgroupError> {
        self.fs.write(p, v).map_err(|source| CgroupError::Io {
            op: "write",
            path: p.to_path_buf(),
            source,
        })
    }
}

/// Opens `procs` files now (in the parent, where errors can be reported) for [`enter_in_child`].
pub(crate) fn open_procs(procs: &[PathBuf]) -> io::Result<Vec<File>> {
    procs
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p))
        .collect()
}

/// Moves the calling process into the groups whose `cgroup.procs` files are `files` (writing `0`
/// means "the writer"). Only `write(2)`: safe between fork and exec.
pub(crate) fn enter_in_child(files: &[File]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for f in files {
        // SAFETY: a write of a static buffer to an open descriptor; async-signal-safe.
        let n = unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

impl From<CgroupError> for crate::error::Error {
    fn from(e: CgroupError) -> Self {
        crate::backend::BackendError::Cgroup(e).into()
    }
}
