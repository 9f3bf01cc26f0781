//! End-to-end templates against real QEMU (TCG here): the first VM of a configuration makes a template,
//! later ones start from it; one whose template cannot be restored boots cold from the template's disk
//! and still gets its own identity. Each test runs inside a network namespace it creates and removes,
//! with private directories, and checks that nothing leaks. Run with `SMOLVM_E2E=1` as root.

mod netns_util;
mod scene_util;
mod vm_util;

use std::time::Duration;

use scene_util::Scene;
use smolvm::{NetworkMode, VmState};
use vm_util::spec;

const TOOLS: &[&str] = &["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ip"];

/// A VM owned by the facade, from the test image, in `env`'s directories.
fn build(
    env: &vm_util::TestEnv,
    id: &str,
    templates: bool,
    network: NetworkMode,
) -> smolvm::SmolVm {
    smolvm::SmolVm::builder()
        .config(spec(id).build().unwrap())
        .data_dir(env.data_dir())
        .socket_dir(env.socket_dir())
        .network(network)
        .templates(templates)
        .build()
        .unwrap()
}

#[test]
fn vms_start_from_a_template_made_on_first_use() {
    let Some(scene) = Scene::enter("templates", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let build = |id: &str, templates: bool, env_var: Option<(&str, &str)>| {
        let mut spec = spec(id);
        if let Some((k, v)) = env_var {
            spec = spec.env_var(k, v);
        }
        smolvm::SmolVm::builder()
            .config(spec.build().unwrap())
            .data_dir(env.data_dir())
            .socket_dir(env.socket_dir())
            .network(NetworkMode::None)
            .templates(templates)
            .build()
            .unwrap()
    };

    // First use: a cold boot, then the template is made from the fresh guest.
    let mut first = build("t1", true, None);
    assert_eq!(first.status(), VmState::Created);
    first.start().unwrap();
    let templates = m.list_snapshots().unwrap();
    assert_eq!(templates.len(), 1, "{templates:?}");
    let tpl = templates[0].name.clone();
    assert!(tpl.starts_with("tpl-"), "{tpl}");
    assert_eq!(
        first.status(),
        VmState::Running,
        "resumed after the template was made"
    );
    assert_eq!(first.run("hostname").unwrap().output(), "t1");

    // Later VMs of the same configuration: `created`, then started from the template.
    let mut second = build("t2", true, Some(("GREETING", "hi there")));
    assert_eq!(second.status(), VmState::Created);
    let disk = m.disk_dir().join("t2.qcow2");
    assert!(disk.exists(), "disk is an overlay on the template's");
    second.start().unwrap();
    assert_eq!(second.status(), VmState::Running);
    assert_eq!(second.run("hostname").unwrap().output(), "t2");
    assert_eq!(
        second.run("printf %s \"$GREETING\"").unwrap().output(),
        "hi there",
        "environment variables are injected after a template start too"
    );
    let uuid = |vm: &smolvm::SmolVm| vm.run("cat /proc/sys/kernel/random/uuid").unwrap().stdout;
    assert_ne!(uuid(&first), uuid(&second));
    assert_eq!(m.get_snapshot(&tpl).unwrap().used_by, ["t2".to_string()]);
    assert!(m.delete_snapshot(&tpl).is_err(), "in use by t2");

    // After a stop it boots cold from its own disk.
    second.stop().unwrap();
    second.start().unwrap();
    assert_eq!(second.run("hostname").unwrap().output(), "t2");

    // Templates off: a cold boot from the image, no overlay, no new template.
    let mut third = build("t3", false, None);
    third.start().unwrap();
    assert!(m.disk_dir().join("t3.ext4").exists());
    assert_eq!(m.list_snapshots().unwrap().len(), 1);

    drop((first, second, third));
    for id in ["t1", "t2", "t3"] {
        env.assert_no_leaks(id);
    }
    assert!(!disk.exists());
    m.delete_snapshot(&tpl).unwrap();
}

#[test]
fn a_vm_whose_template_cannot_be_restored_boots_cold_with_its_own_identity() {
    let Some(scene) = Scene::enter("template fallback", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let mut first = build(env, "tf1", true, NetworkMode::Tap);
    first.start().unwrap();
    let tpl = m.list_snapshots().unwrap()[0].name.clone();
    let mut second = build(env, "tf2", true, NetworkMode::Tap);
    assert_eq!(second.status(), VmState::Created);
    // The template's disk changes after the capture (as an edit or a copy would): it can no longer be
    // restored, so the VM boots cold from its overlay, whose files are the template VM's.
    let disk = m.snapshots_dir().join(&tpl).join("disk.img");
    std::fs::File::options()
        .append(true)
        .open(&disk)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    second.start().unwrap();
    assert_eq!(second.run("hostname").unwrap().output(), "tf2");
    // Its SSH host key is its own (the pinned one), not the template VM's: SSH accepts it.
    let ssh = second
        .run_over_ssh("hostname", Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(ssh.output(), "tf2");
    let key = |vm: &smolvm::SmolVm| {
        vm.run("md5sum /etc/dropbear/dropbear_ed25519_host_key")
            .unwrap()
            .stdout
    };
    assert_ne!(key(&first), key(&second));
    drop((first, second));
    for id in ["tf1", "tf2"] {
        env.assert_no_leaks(id);
    }
    m.delete_snapshot(&tpl).unwrap();
}
