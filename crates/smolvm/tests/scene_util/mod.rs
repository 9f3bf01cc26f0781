//! One VM test's world, shared by the E2E files that boot VMs in their own network namespace: skipped
//! unless the E2E prerequisites are there, the image built (outside the namespace: it may fetch the
//! kernel package), a fresh network namespace entered, a private manager. A file using it also declares
//! `mod netns_util; mod vm_util;`.

#![allow(dead_code)]

use smolvm::{CreateOptions, NetworkMode};

use super::netns_util::{e2e, Entered, Netns};
use super::vm_util::{self, TestEnv};

/// Fields drop in order: the VMs are deleted inside the namespace, then the thread leaves it, then it
/// is removed.
pub struct Scene {
    pub env: TestEnv,
    _inside: Entered,
    _ns: Netns,
}

impl Scene {
    /// The world of test `test`, or `None` (skip) when `tools` are missing without `SMOLVM_E2E=1`.
    pub fn enter(test: &str, tools: &[&str]) -> Option<Scene> {
        if !e2e(test, tools) {
            return None;
        }
        vm_util::image();
        let ns = Netns::new();
        let inside = ns.enter();
        Some(Scene {
            env: TestEnv::new(),
            _inside: inside,
            _ns: ns,
        })
    }
}

/// Create options for a VM without networking.
pub fn no_net() -> CreateOptions {
    CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    }
}
