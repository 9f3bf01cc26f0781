//! Where smolvm keeps things (spec: vm-manager constructor).
//!
//! * data_dir: explicit, else `$SMOLVM_DATA_DIR`, else `~/.local/state/smolvm`, else `/var/lib/smolvm`:
//!   the first that is (or can be made) writable.
//! * socket_dir: explicit, else a per-store subdirectory `/tmp/smolvm-<uid>/<store tag>` of a private
//!   per-user directory (mode 0700, owned by us; refused otherwise, because sockets there control VMs).
//!   The tag is derived from the data directory, so two stores never share socket names: VM `x` of
//!   store A and VM `x` of store B get different sockets. An explicit socket dir is used as given; give
//!   each data dir its own.
//! * disk_dir: `data_dir/disks`.
//! * store: the data directory made absolute (canonical), the identity of the store. Every VMM smolvm
//!   starts carries it in its environment ([`STORE_ENV`]), which is how `cleanup` proves that a VMM
//!   belongs to its store before touching it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable that overrides the default data directory.
pub(crate) const DATA_DIR_ENV: &str = "SMOLVM_DATA_DIR";
/// System-wide fallback data directory.
pub(crate) const SYSTEM_DATA_DIR: &str = "/var/lib/smolvm";
/// Environment variable set on every VMM smolvm starts: the canonical data directory of its store.
pub const STORE_ENV: &str = "SMOLVM_STORE";
/// Hex digits of the store tag in the default socket directory (kept short: socket paths are limited).
const STORE_TAG_LEN: usize = 12;

/// The resolved directories of one manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// State database, images, logs, per-VM files.
    pub data_dir: PathBuf,
    /// VMM control and agent sockets (kept short: Unix socket paths are limited to 107 bytes).
    pub socket_dir: PathBuf,
    /// Isolated VM disks.
    pub disk_dir: PathBuf,
    /// The store's identity: `data_dir` made absolute and canonical (see [`STORE_ENV`]).
    pub store: PathBuf,
}

impl Dirs {
    /// Resolves (and creates) the directories.
    pub fn resolve(data_dir: Option<&Path>, socket_dir: Option<&Path>) -> Result<Dirs> {
        let data_dir = match data_dir {
            Some(d) => {
                ensure_dir(d)?;
                d.to_path_buf()
            }
            None => default_data_dir()?,
        };
        let store = fs::canonicalize(&data_dir).map_err(|e| Error::io("resolve", &data_dir, e))?;
        let socket_dir = match socket_dir {
            Some(d) => {
                ensure_dir(d)?;
                d.to_path_buf()
            }
            None => store_socket_dir(&default_socket_dir()?, &store)?,
        };
        let disk_dir = data_dir.join("disks");
        ensure_dir(&disk_dir)?;
        Ok(Dirs {
            data_dir,
            socket_dir,
            disk_dir,
            store,
        })
    }

    /// The state database path.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("smolvm.db")
    }

    /// Per-VM directory for logs and small files.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.data_dir.join("vms").join(vm_id)
    }

    /// Image cache directory.
    pub fn image_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
}

/// The candidate default data directories, in order of preference.
pub(crate) fn data_dir_candidates() -> Vec<PathBuf> {
    candidates_from(std::env::var_os(DATA_DIR_ENV), std::env::var_os("HOME"))
}

/// [`data_dir_candidates`] for the given values of `$SMOLVM_DATA_DIR` and `$HOME` (empty = unset).
fn candidates_from(
    env_dir: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = env_dir.filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(d));
    }
    if let Some(home) = home.filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(home).join(".local/state/smolvm"));
    }
    out.push(PathBuf::from(SYSTEM_DATA_DIR));
    out
}

fn default_data_dir() -> Result<PathBuf> {
    let candidates = data_dir_candidates();
    let mut last_err = None;
    for c in &candidates {
        match ensure_dir(c).and_then(|_| check_writable(c)) {
            Ok(()) => return Ok(c.clone()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("at least the system candidate exists"))
}

fn default_socket_dir() -> Result<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("smolvm-{uid}"));
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create socket directory", &dir, e)),
    }
    // symlink_metadata: a symlink planted by someone else must not redirect our sockets.
    let meta = fs::symlink_metadata(&dir).map_err(|e| Error::io("inspect", &dir, e))?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(Error::io(
            "refuse socket directory (not a directory owned by the current user)",
            &dir,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700", &dir, e))?;
    }
    Ok(dir)
}

/// A path as a C string for a system call (fails on interior NUL bytes).
pub(crate) fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })
}

/// A short tag naming the store `store` (a canonical data directory): the first hex digits of its
/// SHA-256, stable across runs.
pub(crate) fn store_tag(store: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(store.as_os_str().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..STORE_TAG_LEN].to_string()
}

/// The store's own private subdirectory of the per-user socket directory `base`.
fn store_socket_dir(base: &Path, store: &Path) -> Result<PathBuf> {
    let dir = base.join(store_tag(store));
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create socket directory", &dir, e)),
    }
    // `base` is ours and private, so nobody else can have planted this entry; still refuse a non-dir.
    let meta = fs::symlink_metadata(&dir).map_err(|e| Error::io("inspect", &dir, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "refuse socket directory (not a directory)",
            &dir,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700", &dir, e))?;
    }
    Ok(dir)
}

/// Creates `dir` and its parents if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))
}

fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".smolvm-write-probe-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::io("write to", dir, e))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dirs_are_used_and_disk_dir_is_under_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        let d = Dirs::resolve(Some(&data), Some(&sock)).unwrap();
        assert_eq!(d.data_dir, data);
        assert_eq!(d.socket_dir, sock);
        assert_eq!(d.disk_dir, data.join("disks"));
        assert!(d.disk_dir.is_dir());
        assert_eq!(d.db_path(), data.join("smolvm.db"));
        assert_eq!(d.store, fs::canonicalize(&data).unwrap());
    }

    #[test]
    fn default_socket_dirs_are_per_store() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Dirs::resolve(Some(&tmp.path().join("a")), None).unwrap();
        let b = Dirs::resolve(Some(&tmp.path().join("b")), None).unwrap();
        // A relative spelling of the same data dir is the same store.
        let a2 = Dirs::resolve(Some(&tmp.path().join("a/../a")), None).unwrap();
        assert_ne!(a.socket_dir, b.socket_dir);
        assert_eq!(a.socket_dir, a2.socket_dir);
        assert_eq!(a.store, a2.store);
        let base = default_socket_dir().unwrap();
        for d in [&a, &b] {
            assert_eq!(d.socket_dir.parent(), Some(base.as_path()));
            let m = fs::metadata(&d.socket_dir).unwrap();
            assert_eq!(m.mode() & 0o777, 0o700);
            assert_eq!(d.socket_dir.file_name().unwrap().len(), STORE_TAG_LEN);
        }
        let _ = fs::remove_dir(&a.socket_dir);
        let _ = fs::remove_dir(&b.socket_dir);
    }

    #[test]
    fn default_socket_dir_is_private() {
        let d = default_socket_dir().unwrap();
        let m = fs::metadata(&d).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        assert!(d.starts_with(std::env::temp_dir()));
    }

    #[test]
    fn candidates_follow_the_spec_order() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let p = PathBuf::from;
        // $SMOLVM_DATA_DIR, then ~/.local/state/smolvm, then the system directory.
        assert_eq!(
            candidates_from(os("/d"), os("/home/u")),
            [
                p("/d"),
                p("/home/u/.local/state/smolvm"),
                p(SYSTEM_DATA_DIR)
            ]
        );
        assert_eq!(
            candidates_from(None, os("/home/u")),
            [p("/home/u/.local/state/smolvm"), p(SYSTEM_DATA_DIR)]
        );
        // Empty values count as unset.
        assert_eq!(candidates_from(os(""), os("")), [p(SYSTEM_DATA_DIR)]);
        assert_eq!(
            candidates_from(os("/d"), None),
            [p("/d"), p(SYSTEM_DATA_DIR)]
        );
        // The public function reads the real environment the same way.
        assert_eq!(
            data_dir_candidates(),
            candidates_from(std::env::var_os(DATA_DIR_ENV), std::env::var_os("HOME"))
        );
    }
}
