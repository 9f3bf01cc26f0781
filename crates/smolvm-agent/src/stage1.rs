//! Stage 1: the agent as `/init` of the initramfs. Loads the kernel modules the machine needs, mounts
//! the root disk, moves `/dev`, `/proc` and `/sys` into it, switches root and executes the `init=` of the
//! command line (the agent again, in stage 2, in the default image).
//!
//! Doing this in the agent itself instead of a shell script saves a busybox exec and one process per
//! module (each `insmod` is a fork + exec, costly under emulation).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::BootParams;
use crate::stages::Stages;
use crate::sys;

/// Where the image builder puts the modules and `load.list` inside the initramfs.
pub const MODULE_DIR: &str = "/lib/modules/smolvm";
/// Mount point of the real root inside the initramfs.
const NEW_ROOT: &str = "/newroot";
/// How long to wait for the root device to appear.
const ROOT_WAIT: Duration = Duration::from_secs(10);
/// Inits tried when the command line names none (ours first).
const DEFAULT_INITS: &[&str] = &["/init", "/sbin/init", "/bin/init", "/bin/sh"];

/// True when `/` is the initramfs (ramfs or tmpfs), i.e. this is stage 1.
pub fn on_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    matches!(sys::fs_type(Path::new("/")), Ok(t) if t == RAMFS_MAGIC || t == libc::TMPFS_MAGIC)
}

/// Runs stage 1. Returns `Ok` when the root disk's init is this very binary (same build id): the caller
/// then goes on as stage 2 in this process, in the new root, saving an exec that would read the whole
/// binary back from disk. Otherwise it execs the disk's init and only returns on failure.
pub fn run(stages: &mut Stages) -> io::Result<()> {
    mount_early()?;
    let params = crate::cmdline::parse(&std::fs::read_to_string("/proc/cmdline")?);
    match crate::modules::load_all(Path::new(MODULE_DIR), Path::new("/sys"), params.debug) {
        Ok(failures) => {
            for (m, e) in failures {
                crate::log(&format!("module {m}: {e}"));
            }
        }
        Err(e) => crate::log(&format!("no module list in {MODULE_DIR}: {e}")),
    }
    stages.mark("modules_loaded");
    mount_root(&params)?;
    stages.mark("root_mounted");
    let init = pick_init(&params)?;
    let me = crate::elfid::build_id(Path::new("/proc/self/exe"));
    let same = me.is_some()
        && me
            == crate::elfid::build_id(
                &Path::new(NEW_ROOT).join(init.strip_prefix("/").unwrap_or(&init)),
            );
    switch_root()?;
    stages.mark("root_switched");
    if same {
        return Ok(());
    }
    exec_init(&init, stages).map(|never| match never {})
}

fn mount_early() -> io::Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    sys::mount(
        "devtmpfs",
        Path::new("/dev"),
        Some("devtmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|e| ctx(e, "mount devtmpfs on /dev"))?;
    sys::mount("proc", Path::new("/proc"), Some("proc"), nosuid, None)
        .map_err(|e| ctx(e, "mount /proc"))?;
    sys::mount("sysfs", Path::new("/sys"), Some("sysfs"), nosuid, None)
        .map_err(|e| ctx(e, "mount /sys"))?;
    Ok(())
}

fn mount_root(p: &BootParams) -> io::Result<()> {
    let dev = p.root.as_deref().unwrap_or("/dev/vda");
    let dev = resolve_root(dev);
    let fstype = p.rootfstype.as_deref().unwrap_or("ext4");
    let mut flags = if p.read_only { libc::MS_RDONLY } else { 0 };
    let start = Instant::now();
    loop {
        match sys::mount(
            &dev,
            Path::new(NEW_ROOT),
            Some(fstype),
            flags,
            p.rootflags.as_deref(),
        ) {
            Ok(()) => return Ok(()),
            // The device node may not exist yet (a driver probing late): retry briefly.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENXIO | libc::ENODEV)
                ) && start.elapsed() < ROOT_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            // A read-only disk (shared mode attaches the image with readonly=on) without `ro` on the
            // command line: mount it read-only, as the kernel's own root mount does.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS))
                    && flags & libc::MS_RDONLY == 0 =>
            {
                crate::log(&format!("{dev} is read-only: mounting the root read-only"));
                flags |= libc::MS_RDONLY;
            }
            Err(e) => {
                return Err(ctx(
                    e,
                    &format!("mount root {dev} ({fstype}) on {NEW_ROOT} (is the disk attached?)"),
                ))
            }
        }
    }
}

/// `root=/dev/vda` is used as is; `root=PARTUUID=`/`UUID=` are not supported by this small init.
fn resolve_root(dev: &str) -> String {
    dev.to_string()
}

fn pick_init(p: &BootParams) -> io::Result<PathBuf> {
    let candidates: Vec<&str> = match p.init.as_deref() {
        Some(i) => vec![i],
        None => DEFAULT_INITS.to_vec(),
    };
    for c in &candidates {
        let inside = Path::new(NEW_ROOT).join(c.trim_start_matches('/'));
        if inside.exists() {
            return Ok(PathBuf::from(c));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no init on the root disk (tried {candidates:?})"),
    ))
}

fn switch_root() -> io::Result<()> {
    let root = Path::new(NEW_ROOT);
    for m in ["dev", "proc", "sys"] {
        let target = root.join(m);
        let from = Path::new("/").join(m);
        if target.is_dir() {
            sys::move_mount(&from, &target).map_err(|e| ctx(e, &format!("move /{m}")))?;
        } else {
            let _ = sys::umount(&from, libc::MNT_DETACH);
        }
    }
    // Free the initramfs memory: nothing in it is needed after the switch.
    remove_tree(Path::new(MODULE_DIR));
    let _ = std::fs::remove_file("/init");
    std::env::set_current_dir(root).map_err(|e| ctx(e, "chdir new root"))?;
    sys::mount(".", Path::new("/"), None, libc::MS_MOVE, None)
        .map_err(|e| ctx(e, "move new root to /"))?;
    sys::chroot(Path::new(".")).map_err(|e| ctx(e, "chroot"))?;
    std::env::set_current_dir("/")
}

fn remove_tree(p: &Path) {
    if let Ok(dir) = std::fs::read_dir(p) {
        for e in dir.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(p);
}

fn exec_init(init: &Path, stages: &Stages) -> io::Result<std::convert::Infallible> {
    let prog = CString::new(init.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != crate::stages::ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(sys::cstr(&format!(
        "{}={}",
        crate::stages::ENV,
        stages.encode()
    ))?);
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(ctx(
        io::Error::last_os_error(),
        &format!("exec {}", init.display()),
    ))
}

/// Adds what was being done to an I/O error, keeping its kind.
pub fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
