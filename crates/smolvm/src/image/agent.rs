//! Finding the guest agent binary and checking it can run in the guest (statically linked, x86_64).
//!
//! Order: an explicit path (builder option), then `SMOLVM_AGENT_BIN`, then the agent embedded in this
//! library by its build script (`build.rs` builds `smolvm-agent` statically and includes it), which is
//! written once into the image cache (`images/.agent/<digest>/smolvm-agent`) so the image builder can
//! copy and fingerprint it like any other input.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::elf::{Elf, EM_X86_64};
use super::error::ImageError;

/// Environment variable naming the agent binary.
pub(crate) const AGENT_ENV: &str = "SMOLVM_AGENT_BIN";
/// File name of the agent binary.
pub(super) const AGENT_NAME: &str = "smolvm-agent";

/// The static agent built by `build.rs`, if the build embedded one.
#[cfg(smolvm_embedded_agent)]
const EMBEDDED: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/smolvm-agent")));
#[cfg(not(smolvm_embedded_agent))]
const EMBEDDED: Option<&[u8]> = None;

/// Finds a usable agent: `explicit`, else `SMOLVM_AGENT_BIN`, else the embedded one written under
/// `cache_dir`. A path given by the caller or the environment must be a static x86_64 executable.
pub(super) fn locate(explicit: Option<&Path>, cache_dir: &Path) -> Result<PathBuf, ImageError> {
    let given = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(AGENT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = given {
        if !path.is_file() {
            return Err(ImageError::AgentMissing {
                searched: vec![path],
            });
        }
        check(&path)?;
        return Ok(path);
    }
    match EMBEDDED {
        Some(bytes) => materialize(bytes, cache_dir),
        None => Err(ImageError::AgentMissing { searched: vec![] }),
    }
}

/// Writes `bytes` to `cache_dir/<digest>/smolvm-agent` unless it is already there (atomically: a temp
/// file renamed into place, so concurrent builders never see half a binary).
fn materialize(bytes: &[u8], cache_dir: &Path) -> Result<PathBuf, ImageError> {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir.join(hex);
    let path = dir.join(AGENT_NAME);
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(|e| ImageError::io("create directory", &dir, e))?;
    let tmp = dir.join(format!(".{AGENT_NAME}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ImageError::io("write agent", &path, e)
    })?;
    Ok(path)
}

/// Checks that `path` is a static x86_64 ELF executable.
pub(super) fn check(path: &Path) -> Result<(), ImageError> {
    let data = std::fs::read(path).map_err(|e| ImageError::io("read agent", path, e))?;
    let elf = Elf::parse(&data).map_err(|reason| ImageError::Kernel {
        path: path.to_path_buf(),
        reason: format!("not a usable agent binary: {reason}"),
    })?;
    if elf.machine != EM_X86_64 {
        return Err(ImageError::Kernel {
            path: path.to_path_buf(),
            reason: "the agent binary is not for x86_64".into(),
        });
    }
    if elf.has_interp() {
        return Err(ImageError::AgentNotStatic {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::elf::build_test_elf;

    #[test]
    fn explicit_path_must_be_a_static_x86_64_file() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        let stat = t.path().join("static");
        std::fs::write(&stat, build_test_elf(false, &[])).unwrap();
        let dynamic = t.path().join("dynamic");
        std::fs::write(&dynamic, build_test_elf(true, &[])).unwrap();
        assert_eq!(locate(Some(&stat), &cache).unwrap(), stat);
        assert!(matches!(
            locate(Some(&dynamic), &cache),
            Err(ImageError::AgentNotStatic { .. })
        ));
        let missing = t.path().join("missing");
        let e = locate(Some(&missing), &cache).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn materialized_agent_is_written_once_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let bytes = build_test_elf(false, &[]);
        let a = materialize(&bytes, t.path()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), bytes);
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = materialize(&bytes, t.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), mtime);
        // Another binary gets another path: images fingerprint the agent by its bytes.
        let other = materialize(&build_test_elf(true, &[]), t.path()).unwrap();
        assert_ne!(other, a);
    }

    /// The library this test runs in was built by `build.rs` with the agent embedded, and that agent is
    /// what the guest needs: static and x86_64.
    #[test]
    fn the_build_embeds_a_static_agent() {
        let bytes = EMBEDDED.expect("build.rs embeds the agent unless SMOLVM_EMBED_AGENT=0");
        let t = tempfile::tempdir().unwrap();
        let path = materialize(bytes, t.path()).unwrap();
        check(&path).unwrap();
    }
}
