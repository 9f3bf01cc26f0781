//! Real VMs on real networks (QEMU), each test inside a network namespace it creates and removes:
//! the exact strings `get_ssh_commands` returns, pasted into `sh` and run by the real `ssh` client,
//! print the guest's hostname; two TAP guests cannot reach each other; user-mode networking works
//! without a TAP; after `delete` no TAP, rule, forward, process, socket or disk remains.
//!
//! Run with `SMOLVM_E2E=1` as root.

mod netns_util;
mod vm_util;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_util::{e2e, sh, Netns};
use smolvm::NetworkMode;
use smolvm::{BackendKind, VmConfig, VmInfo};
use smolvm::{CreateOptions, SmolVmManager};

const BOOT: Duration = Duration::from_secs(120);

/// The shared default test image (built once per run, outside any namespace: it may fetch the kernel
/// package): its directory and boot arguments.
fn image() -> Option<(PathBuf, String)> {
    let img = vm_util::image();
    Some((img.dir.clone(), img.boot_args.clone()))
}

struct Env {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    sockets: PathBuf,
    image: PathBuf,
    boot_args: String,
    m: SmolVmManager,
}

impl Env {
    fn new(image: PathBuf, boot_args: String) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let sockets = tmp.path().join("sock");
        let m = SmolVmManager::new(Some(&data), Some(&sockets), Some(BackendKind::Qemu)).unwrap();
        Env {
            _tmp: tmp,
            data,
            sockets,
            image,
            boot_args,
            m,
        }
    }

    fn create(&self, id: &str, network: NetworkMode) -> VmInfo {
        self.create_with(id, network, |c| c)
    }

    /// [`create`](Self::create) with the config spec changed by `tweak` first.
    fn create_with(
        &self,
        id: &str,
        network: NetworkMode,
        tweak: impl FnOnce(smolvm::VmConfigSpec) -> smolvm::VmConfigSpec,
    ) -> VmInfo {
        let spec = VmConfig::builder(self.image.join("vmlinuz"), self.image.join("rootfs.ext4"))
            .vm_id(id)
            .initrd_path(self.image.join("initrd.img"))
            .boot_args(&self.boot_args)
            .mem_size_mib(256);
        let config = tweak(spec).build().unwrap();
        self.m
            .create_with(
                &config,
                &CreateOptions {
                    network,
                    ..CreateOptions::default()
                },
            )
            .unwrap()
    }

    /// Starts `id` and waits for SSH the way a careful user would (`wait_for_ssh`).
    fn boot(&self, id: &str) {
        self.start(id);
        let t = Instant::now();
        self.m.wait_for_ssh(id, BOOT).unwrap();
        eprintln!(
            "{id}: SSH ready {:.2}s after start returned",
            t.elapsed().as_secs_f64()
        );
    }

    /// Starts `id`; returns when `start` does (the agent's `Ready`).
    fn start(&self, id: &str) {
        if let Err(e) = self.m.start(id, BOOT) {
            let log = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
            panic!(
                "start {id}: {e:?}\nVMM log:\n{}\nconsole:\n{}",
                log(self.m.vmm_log(id)),
                log(self.m.console_log(id))
            );
        }
    }

    /// Nothing of any VM remains: no process naming our sockets, no socket, no disk, no row.
    fn assert_no_leftovers(&self) {
        let ps = sh(&["ps", "-eo", "args"]);
        let sock = self.sockets.display().to_string();
        assert!(!ps.contains(&sock), "a VMM survived: {ps}");
        let left: Vec<_> = std::fs::read_dir(&self.sockets)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "sockets left: {left:?}");
        let disks: Vec<_> = std::fs::read_dir(self.data.join("disks"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(disks.is_empty(), "disks left: {disks:?}");
        assert!(self.m.list_vms(None).unwrap().is_empty());
    }
}

impl Drop for Env {
    /// A failed test still deletes its VMs, so no VMM outlives it.
    fn drop(&mut self) {
        for vm in self.m.list_vms(None).unwrap_or_default() {
            let _ = self.m.delete(&vm.vm_id);
        }
    }
}

/// Runs a pasted command line with `sh -c`, appending a remote command; returns (status, stdout).
fn paste(command: &str, remote: &str) -> (i32, String, Duration) {
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &format!("{command} {remote}")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.code().is_some(),
        "{command}: killed by a signal: {out:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| l.contains("Host key verification failed"))
                .collect::<String>(),
        took,
    )
}

#[test]
fn tap_guests_answer_pasted_ssh_commands_and_cannot_reach_each_other() {
    if !e2e(
        "tap guests",
        &[
            "ip",
            "nft",
            "ssh",
            "ssh-keygen",
            "dropbearconvert",
            "debugfs",
        ],
    ) {
        return;
    }
    let Some((image, boot_args)) = image() else {
        return;
    };
    let ns = Netns::new();
    let _in = ns.enter();
    let env = Env::new(image, boot_args);
    let a = env.create("net-a", NetworkMode::Tap);
    let b = env.create("net-b", NetworkMode::Tap);
    let (na, nb) = (a.network.clone().unwrap(), b.network.clone().unwrap());
    assert_eq!(na.mode, NetworkMode::Tap);
    // net-a is reached with no wait at all: `start` returns at the agent's Ready, which the agent sends
    // only once the SSH server listens, so the first connection right after it must not be reset.
    env.start("net-a");
    env.boot("net-b");

    for (vm, net) in [("net-a", &na), ("net-b", &nb)] {
        let cmds = env.m.get_ssh_commands(vm, "root", None, None).unwrap();
        assert_eq!(
            cmds.keys().collect::<Vec<_>>(),
            ["localhost_port", "private_ip"]
        );
        assert!(cmds["private_ip"].ends_with(&format!("root@{}", net.guest_ip)));
        for key in ["localhost_port", "private_ip"] {
            let (code, out, took) = paste(&cmds[key], "hostname");
            assert_eq!((code, out.as_str()), (0, vm), "{key}: {}", cmds[key]);
            eprintln!(
                "{vm} {key}: connect to first output {:.0} ms",
                took.as_secs_f64() * 1000.0
            );
        }
    }

    // The guests do not reach each other (the host reached both at their IPs above). The tools work
    // (controls on the guest's own loopback), so a failure is the network's, not a missing tool's.
    let cmds = env.m.get_ssh_commands("net-a", "root", None, None).unwrap();
    let a_runs = |remote: &str| paste(&cmds["private_ip"], remote).0;
    assert_eq!(a_runs("ping -c 1 -W 2 127.0.0.1"), 0);
    assert_eq!(a_runs("nc -w 2 127.0.0.1 22 </dev/null"), 0);
    assert_eq!(
        a_runs(&format!("ping -c 1 -W 2 {}", nb.guest_ip)),
        1,
        "A pinged B"
    );
    assert_eq!(
        a_runs(&format!("nc -w 2 {} 22 </dev/null", nb.guest_ip)),
        1,
        "A reached B's SSH port"
    );

    // A wrong host key is refused (the pin is real): point the pasted command at B's address.
    let wrong = cmds["private_ip"].replace(&na.guest_ip.to_string(), &nb.guest_ip.to_string());
    let (code, out, _) = paste(&wrong, "hostname");
    assert_eq!(code, 255, "{out}");
    assert!(out.contains("Host key verification failed"), "{out}");

    // Stop removes the host network; start makes the same one again.
    env.m.stop("net-a", Duration::from_secs(10)).unwrap();
    let links = sh(&["ip", "link", "show"]);
    assert!(
        !links.contains(na.tap_device.as_deref().unwrap())
            && links.contains(nb.tap_device.as_deref().unwrap()),
        "{links}"
    );
    assert!(!sh(&["nft", "list", "ruleset"]).contains("smolvm:net-a"));
    env.boot("net-a");
    let again = env.m.get_ssh_commands("net-a", "root", None, None).unwrap();
    assert_eq!(again, cmds, "leases changed across stop/start");
    assert_eq!(paste(&again["private_ip"], "hostname").1, "net-a");

    env.m.delete("net-a").unwrap();
    env.m.delete("net-b").unwrap();
    let links = sh(&["ip", "link", "show"]);
    assert!(!links.contains("smv-"), "{links}");
    let rules = sh(&["nft", "list", "ruleset"]);
    assert!(!rules.contains("smolvm:net-"), "{rules}");
    for port in [na.ssh_host_port.unwrap(), nb.ssh_host_port.unwrap()] {
        assert!(!rules.contains(&format!("dport {port}")), "{rules}");
    }
    env.assert_no_leftovers();
}

#[test]
fn user_mode_guest_is_reached_through_its_loopback_forward() {
    if !e2e(
        "user-mode guest",
        &["ssh", "ssh-keygen", "dropbearconvert", "debugfs"],
    ) {
        return;
    }
    let Some((image, boot_args)) = image() else {
        return;
    };
    // QEMU's forward binds 127.0.0.1 in the namespace it runs in: a namespace of our own.
    let ns = Netns::new();
    let _in = ns.enter();
    let env = Env::new(image, boot_args);
    let info = env.create("net-u", NetworkMode::User);
    let net = info.network.clone().unwrap();
    assert_eq!(net.mode, NetworkMode::User);
    assert_eq!(net.tap_device, None);
    env.boot("net-u");
    let cmds = env
        .m
        .get_ssh_commands("net-u", "root", None, Some("gw.example"))
        .unwrap();
    assert_eq!(
        cmds.keys().collect::<Vec<_>>(),
        ["localhost_port", "public"]
    );
    let (code, out, took) = paste(&cmds["localhost_port"], "hostname");
    assert_eq!((code, out.as_str()), (0, "net-u"));
    eprintln!(
        "net-u localhost_port: connect to first output {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    // No TAP was made for it.
    assert!(!sh(&["ip", "link", "show"]).contains("smv-"));
    env.m.delete("net-u").unwrap();
    env.assert_no_leftovers();
}

/// A `shared`-disk guest boots the image read-only, yet takes SSH logins (its host key pinned, the
/// client key authorised) and keeps its environment variables: both go to the agent's tmpfs copies of
/// `/etc` and `/root`, and the image itself is not written.
#[test]
fn a_shared_disk_guest_takes_ssh_logins_and_environment_variables() {
    if !e2e(
        "shared-disk guest over SSH",
        &["ssh", "ssh-keygen", "dropbearconvert", "debugfs"],
    ) {
        return;
    }
    let Some((image, boot_args)) = image() else {
        return;
    };
    let ns = Netns::new();
    let _in = ns.enter();
    let env = Env::new(image.clone(), boot_args);
    let mtime = || {
        std::fs::metadata(image.join("rootfs.ext4"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = mtime();
    env.create_with("net-s", NetworkMode::User, |c| {
        c.disk_mode(smolvm::DiskMode::Shared)
            .env_var("SMOLVM_SHARED", "yes")
    });
    env.boot("net-s");
    let cmds = env.m.get_ssh_commands("net-s", "root", None, None).unwrap();
    let (code, out, _) = paste(
        &cmds["localhost_port"],
        "'hostname; . /etc/profile; echo $SMOLVM_SHARED; touch /cannot 2>/dev/null || echo read-only'",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "net-s\nyes\nread-only"),
        "console:\n{}",
        std::fs::read_to_string(env.m.console_log("net-s")).unwrap_or_default()
    );
    env.m.delete("net-s").unwrap();
    env.assert_no_leftovers();
    assert_eq!(mtime(), before, "the shared image was written");
}
