//! A private temporary directory (mode 0700, random name) removed with everything in it when dropped.

use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// See the module docs.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Creates `<tmp>/<prefix>XXXXXX` (short, so Unix socket paths inside stay far below 107 bytes).
    pub fn new(prefix: &str) -> std::io::Result<WorkDir> {
        let base = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let template = CString::new(base.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut bytes = template.into_bytes_with_nul();
        // SAFETY: mkdtemp rewrites the trailing XXXXXX of the NUL-terminated buffer we own.
        let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        bytes.pop(); // the NUL
        Ok(WorkDir {
            path: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
            keep: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if missing.
    pub fn sub(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Leaves the directory in place when dropped (for debugging a failed run).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove benchmark directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_and_removed() {
        let w = WorkDir::new("smolvm-t-").unwrap();
        let p = w.path().to_path_buf();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::write(w.sub("a").unwrap().join("f"), b"x").unwrap();
        drop(w);
        assert!(!p.exists());
    }
}
