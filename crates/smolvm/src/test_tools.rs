//! Unit-test helper for tests that need a host tool: without `SMOLVM_E2E=1` a missing tool skips the
//! test (with a message saying so); with it, the tool is a prerequisite and its absence fails the test,
//! like every other prerequisite of the suite.

use std::path::PathBuf;

/// True when the environment demands every prerequisite (`SMOLVM_E2E=1`).
pub(crate) fn e2e_required() -> bool {
    std::env::var("SMOLVM_E2E").as_deref() == Ok("1")
}

/// The path of `tool` (PATH, then the sbin directories). `None` means: skip this test (a message was
/// printed). Panics when `SMOLVM_E2E=1` and the tool is missing.
pub(crate) fn tool_or_skip(test: &str, tool: &str) -> Option<PathBuf> {
    decide(
        test,
        tool,
        crate::network::find_program(tool),
        e2e_required(),
    )
}

fn decide(test: &str, tool: &str, found: Option<PathBuf>, required: bool) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            !required,
            "{test}: SMOLVM_E2E=1 and the prerequisite `{tool}` is not installed"
        );
        eprintln!("skipping {test}: `{tool}` is not installed (SMOLVM_E2E=1 makes this a failure)");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_skips_only_without_e2e() {
        let p = PathBuf::from("/bin/x");
        assert_eq!(decide("t", "x", Some(p.clone()), true), Some(p.clone()));
        assert_eq!(decide("t", "x", Some(p.clone()), false), Some(p));
        assert_eq!(decide("t", "x", None, false), None);
        let r = std::panic::catch_unwind(|| decide("t", "x", None, true));
        assert!(r.is_err(), "a missing tool under SMOLVM_E2E=1 must fail");
    }
}
