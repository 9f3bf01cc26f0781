//! End-to-end pause/resume, snapshots, start-from-snapshot and fork against real QEMU (TCG here). Each
//! test runs inside a network namespace it creates and removes, with private directories, and checks
//! that nothing leaks. Run with `SMOLVM_E2E=1` as root; they skip otherwise.

mod netns_util;
mod vm_util;

use std::time::Duration;

use netns_util::{e2e, Entered, Netns};
use smolvm::backend::qemu::{Accel, QemuBackend};
use smolvm::manager::{CreateOptions, NetworkChoice, SmolVmManager};
use smolvm::{BackendKind, Error, VmState};
use vm_util::{processes_mentioning, spec, TestEnv};

const BOOT: Duration = Duration::from_secs(60);
const TOOLS: &[&str] = &["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ip"];

/// One test's world (see lifecycle_e2e.rs): fields drop in order, VMs first, the namespace last.
struct Scene {
    env: TestEnv,
    _inside: Entered,
    _ns: Netns,
}

impl Scene {
    fn enter(test: &str) -> Option<Scene> {
        if !e2e(test, TOOLS) {
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

    /// A second manager on the same directories: what another process sees.
    fn other_process(&self) -> SmolVmManager {
        SmolVmManager::new(
            Some(&self.env.data_dir()),
            Some(&self.env.socket_dir()),
            Some(BackendKind::Qemu),
        )
        .unwrap()
    }
}

fn no_net() -> CreateOptions {
    CreateOptions {
        network: NetworkChoice::None,
    }
}

fn qmp_status(m: &SmolVmManager, id: &str) -> String {
    let sock = m.get(id).unwrap().socket_path.unwrap();
    QemuBackend::new("qemu-system-x86_64", Accel::Tcg { tsc_khz: None })
        .query_status(&sock)
        .unwrap()
        .status
}

#[test]
fn pause_resume_then_stop_and_delete_a_paused_vm() {
    let Some(scene) = Scene::enter("pause/resume") else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    m.create_with(&spec("pz-1").build().unwrap(), &no_net())
        .unwrap();
    let pid = m.start("pz-1", BOOT).unwrap().pid;

    // Pausing a VM that is not running is refused and names the state.
    let info = m.pause("pz-1").unwrap();
    assert_eq!(info.status, VmState::Paused);
    assert_eq!(info.pid, pid, "the VMM process stays");
    assert_eq!(qmp_status(m, "pz-1"), "paused");
    // Persisted: another process sees it paused, and pausing again is a no-op.
    let other = scene.other_process();
    assert_eq!(other.get("pz-1").unwrap().status, VmState::Paused);
    assert_eq!(other.pause("pz-1").unwrap().status, VmState::Paused);
    // Commands need a running VM.
    let vm = env.reconnect("pz-1");
    assert!(matches!(
        vm.run("true"),
        Err(Error::InvalidState {
            status: VmState::Paused,
            ..
        })
    ));
    vm.close();
    // start is not resume.
    assert!(matches!(
        m.start("pz-1", BOOT),
        Err(Error::InvalidState { .. })
    ));

    let info = other.resume("pz-1").unwrap();
    assert_eq!(info.status, VmState::Running);
    assert_eq!(qmp_status(m, "pz-1"), "running");
    let vm = env.reconnect("pz-1");
    assert_eq!(vm.run("echo alive").unwrap().output(), "alive");
    vm.close();
    assert_eq!(m.resume("pz-1").unwrap().status, VmState::Running);

    // stop of a paused VM: it is resumed, powered off, and stopped.
    m.pause("pz-1").unwrap();
    let info = m.stop("pz-1", Duration::from_secs(20)).unwrap();
    assert_eq!(info.status, VmState::Stopped);
    assert_eq!(info.pid, None);
    assert!(processes_mentioning(&env.socket_dir().join("pz-1")).is_empty());
    assert!(matches!(
        m.pause("pz-1"),
        Err(Error::InvalidState {
            status: VmState::Stopped,
            ..
        })
    ));
    assert!(matches!(m.resume("pz-1"), Err(Error::InvalidState { .. })));

    // delete of a paused VM leaves nothing behind.
    m.start("pz-1", BOOT).unwrap();
    m.pause("pz-1").unwrap();
    m.delete("pz-1").unwrap();
    env.assert_no_leaks("pz-1");
}
