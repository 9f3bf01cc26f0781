//! The unprivileged identity each VMM runs as when smolvm runs as root.
//!
//! Every VM gets a user and group id of its own (uid = gid), leased in the state store in the same
//! transaction as its row and its network (see `state::vmm_users`). QEMU opens everything it needs as
//! root (disk, kernel, TAP device, sockets, the console pipe, `/dev/kvm`) and then switches to that
//! id before the guest runs (`-run-with user=uid:gid`). A per-VM id rather than one shared user: a
//! VMM taken over by its guest cannot signal, ptrace or read the memory of another VM's VMM, nor open
//! another VM's disk or snapshot, because nothing of theirs belongs to it. The costs are an id lease
//! per VM and chowning the VM's own files (its disk; a snapshot directory while the VMM writes it).
//!
//! The ids come from a reserved numeric range with no `/etc/passwd` entries: `0x70000000` to
//! `0x7FFDFFFF`, which systemd's allocation rules leave unused (above the container ranges, below
//! the "foreign" range and the signed 32-bit boundary). Each store (data directory) takes a slot of
//! [`SLOT_SIZE`] ids in it chosen by its store tag, so two data directories on one host very likely
//! use different ids (a collision needs two stores in the same of 4094 slots).

use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// First id of the reserved range.
pub(crate) const RANGE_START: u32 = 0x7000_0000;
/// Ids per store.
pub(crate) const SLOT_SIZE: u32 = 0x1_0000;
/// Number of store slots in the reserved range (it ends below `0x7FFE0000`).
pub(crate) const SLOTS: u32 = (0x7FFE_0000 - RANGE_START) / SLOT_SIZE;
/// The ids of slot 0, used by stores opened without a tag (tests, [`crate::state::StoreOptions`]'s
/// default).
pub(crate) const DEFAULT_RANGE: RangeInclusive<u32> = RANGE_START..=RANGE_START + SLOT_SIZE - 1;

/// Environment variable that switches the drop off (`off`, `0`, `false`, `no`): the VMM then runs as
/// the caller (root), e.g. to debug it.
pub const VMM_USER_ENV: &str = "SMOLVM_VMM_USER";

/// The user and group a VMM runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmmUser {
    /// User id.
    pub uid: u32,
    /// Group id (the VMM's only group).
    pub gid: u32,
}

impl VmmUser {
    /// The identity of a VM whose leased id is `id` (uid = gid).
    pub fn from_id(id: u32) -> VmmUser {
        VmmUser { uid: id, gid: id }
    }
}

/// The id range of the store tagged `store_tag` (hex, see [`crate::dirs`]): one slot of the reserved
/// range, picked by the tag's first 32 bits.
pub(crate) fn range_for_store(store_tag: &str) -> RangeInclusive<u32> {
    let bits = store_tag
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    let start = RANGE_START + (bits % SLOTS) * SLOT_SIZE;
    start..=start + SLOT_SIZE - 1
}

/// Whether the environment leaves the drop on (the default).
pub(crate) fn enabled_by_env() -> bool {
    std::env::var(VMM_USER_ENV).map_or(true, |v| !switched_off(&v))
}

/// Whether a value of [`VMM_USER_ENV`] switches the drop off.
fn switched_off(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "off" | "0" | "false" | "no"
    )
}

/// Whether this process runs as root (only root can start a process as another user).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user a running process `pid` runs as (its real uid and gid, from `/proc/<pid>/status`), or
/// `None` if it is gone or unreadable.
pub(crate) fn of_process(pid: u32) -> Option<VmmUser> {
    of_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The real uid and gid of a `/proc/<pid>/status` text.
pub(crate) fn of_status(status: &str) -> Option<VmmUser> {
    let first = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(VmmUser {
        uid: first("Uid:")?,
        gid: first("Gid:")?,
    })
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Makes `file` (a VM's own disk) belong to `user` alone (mode 0600), so its VMM can reopen it after
/// dropping root (QEMU does when it reactivates a disk after a migration) and no other VMM can.
pub(crate) fn give_file(file: &Path, user: VmmUser) -> io::Result<()> {
    chown(file, user.uid, user.gid)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

/// Gives `file` back to root alone (0600): a VM's retained disk once its VM (and user lease) is gone.
pub(crate) fn take_back_file(file: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    chown(file, 0, 0)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

/// Lends the directory `dir` to `user` (mode 0700) so that its VMM can write a snapshot into it.
pub(crate) fn lend_dir(dir: &Path, user: VmmUser) -> io::Result<()> {
    chown(dir, user.uid, user.gid)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Takes `dir` and the files in it back from the VMM that wrote them: owned by root, the directory
/// 0700 and its files 0600, so the snapshot belongs to no VMM (each restore gets it as a descriptor).
pub(crate) fn take_back_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_file() {
            chown(&path, 0, 0)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    chown(dir, 0, 0)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_ranges_are_slots_of_the_reserved_range() {
        assert_eq!(DEFAULT_RANGE, 0x7000_0000..=0x7000_FFFF);
        assert_eq!(range_for_store("00000000ffff"), DEFAULT_RANGE);
        let r = range_for_store("00000001abcd");
        assert_eq!(r, 0x7001_0000..=0x7001_FFFF);
        let last = range_for_store("ffffffff0000");
        assert!(*last.end() < 0x7FFE_0000, "{last:?}");
        assert_eq!(*last.start() % SLOT_SIZE, 0);
        // Not hex: slot 0 rather than a failure.
        assert_eq!(range_for_store("zz"), DEFAULT_RANGE);
    }

    #[test]
    fn files_and_directories_change_hands() {
        if !is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let user = VmmUser::from_id(0x7000_0042);
        let disk = d.path().join("disk");
        std::fs::write(&disk, b"x").unwrap();
        give_file(&disk, user).unwrap();
        let m = std::fs::metadata(&disk).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (user.uid, user.gid, 0o600)
        );

        take_back_file(&disk).unwrap();
        let m = std::fs::metadata(&disk).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 0, 0o600));
        take_back_file(&d.path().join("gone")).unwrap();

        let snap = d.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        lend_dir(&snap, user).unwrap();
        let m = std::fs::metadata(&snap).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (user.uid, 0o700));
        std::fs::write(snap.join("vm.migration"), b"state").unwrap();
        chown(&snap.join("vm.migration"), user.uid, user.gid).unwrap();
        take_back_dir(&snap).unwrap();
        let m = std::fs::metadata(snap.join("vm.migration")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 0, 0o600));
        assert_eq!(std::fs::metadata(&snap).unwrap().uid(), 0);
    }

    #[test]
    fn a_process_user_is_read_from_proc() {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(of_process(std::process::id()), Some(VmmUser { uid, gid }));
        assert_eq!(of_process(u32::MAX), None);
    }

    #[test]
    fn the_env_switch_reads_common_spellings() {
        // Only the parser: the variable itself is process-wide and read by other tests.
        for off in ["off", "0", "false", "no", " OFF "] {
            assert!(switched_off(off), "{off}");
        }
        for on in ["on", "1", "", "yes"] {
            assert!(!switched_off(on), "{on}");
        }
    }
}
