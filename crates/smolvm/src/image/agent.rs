//! Finding the guest agent binary and checking it can run in the guest (statically linked, x86_64).
//!
//! Order: an explicit path (builder option or `SMOLVM_AGENT_BIN`), then `smolvm-agent` next to the
//! running executable, then the static build outputs of a workspace
//! (`target/x86_64-unknown-linux-gnu/{release,debug}/smolvm-agent`) found above the running executable
//! or this crate's source directory. Dynamically linked candidates (a plain `cargo build` makes one in
//! `target/release`) are skipped in favour of a static one; if only dynamic ones exist, the error says
//! how to build the static one.

use std::path::{Path, PathBuf};

use super::elf::{Elf, EM_X86_64};
use super::error::ImageError;

/// Environment variable naming the agent binary.
pub const AGENT_ENV: &str = "SMOLVM_AGENT_BIN";
/// File name of the agent binary.
pub const AGENT_NAME: &str = "smolvm-agent";
/// Target directory of the static build.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Candidate paths, in order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os(AGENT_ENV).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    let exe = std::env::current_exe().ok();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        out.push(dir.join(AGENT_NAME));
    }
    let manifest_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let roots = exe
        .as_deref()
        .into_iter()
        .flat_map(Path::ancestors)
        .map(Path::to_path_buf)
        .chain([manifest_target]);
    for root in roots {
        for profile in ["release", "debug"] {
            let p = root.join(STATIC_TARGET).join(profile).join(AGENT_NAME);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Finds a usable agent: the first static x86_64 candidate.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let cands = candidates(explicit);
    let mut first_dynamic = None;
    for c in &cands {
        if !c.is_file() {
            continue;
        }
        match check(c) {
            Ok(()) => return Ok(c.clone()),
            Err(ImageError::AgentNotStatic { .. }) if explicit.is_none() => {
                first_dynamic.get_or_insert_with(|| c.clone());
            }
            Err(e) => return Err(e),
        }
    }
    match first_dynamic {
        Some(path) => Err(ImageError::AgentNotStatic { path }),
        None => Err(ImageError::AgentMissing {
            searched: cands
                .into_iter()
                .filter(|c| c.parent().is_some_and(Path::exists))
                .collect(),
        }),
    }
}

/// Checks that `path` is a static x86_64 ELF executable.
pub fn check(path: &Path) -> Result<(), ImageError> {
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
    fn static_check_and_explicit_path() {
        let t = tempfile::tempdir().unwrap();
        let stat = t.path().join("static");
        std::fs::write(&stat, build_test_elf(false, &[])).unwrap();
        let dynamic = t.path().join("dynamic");
        std::fs::write(&dynamic, build_test_elf(true, &[])).unwrap();
        assert_eq!(locate(Some(&stat)).unwrap(), stat);
        assert!(matches!(
            locate(Some(&dynamic)),
            Err(ImageError::AgentNotStatic { .. })
        ));
        let missing = t.path().join("missing");
        let e = locate(Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("scripts/build-agent.sh"), "{e}");
    }

    #[test]
    fn default_candidates_include_the_static_target() {
        let c = candidates(None);
        if std::env::var_os(AGENT_ENV).is_none() {
            assert!(c
                .iter()
                .any(|p| p.ends_with("x86_64-unknown-linux-gnu/release/smolvm-agent")));
        }
    }
}
