//! Unit tests of the manager's network and SSH steps; the disk test runs the real ssh-keygen,
//! dropbearconvert and debugfs on a small ext4 image (skipped, with a note, where they are missing).

use std::process::Command;

use super::*;
use crate::config::VmConfig;

#[test]
fn key_lines_compare_by_type_and_key() {
    let k = "ssh-ed25519 AAAAC3Nz smolvm";
    assert!(same_key("ssh-ed25519 AAAAC3Nz other-comment", k));
    assert!(same_key("no-pty,command=\"x\" ssh-ed25519 AAAAC3Nz", k));
    assert!(!same_key("ssh-ed25519 BBBB smolvm", k));
    assert!(!same_key("# comment", k));
    assert!(!same_key("", k));
}

#[test]
fn attachment_follows_the_mode() {
    let tap = NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some("smv-2".into()),
        guest_mac: "02:00:ac:10:00:02".into(),
        ssh_host_port: Some(42000),
        mode: NetworkMode::Tap,
    };
    assert_eq!(
        net_attachment(&tap),
        NetAttachment::Tap {
            tap: "smv-2".into(),
            mac: "02:00:ac:10:00:02".into()
        }
    );
    let user = NetworkConfig {
        guest_ip: crate::state::USER_GUEST_IP,
        tap_device: None,
        mode: NetworkMode::User,
        ..tap
    };
    assert_eq!(
        net_attachment(&user),
        NetAttachment::User {
            mac: "02:00:ac:10:00:02".into(),
            guest_ip: crate::state::USER_GUEST_IP,
            ssh_host_port: Some(42000),
        }
    );
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    m: SmolVmManager,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let m = SmolVmManager::new(
            Some(&root.join("data")),
            Some(&root.join("sock")),
            Some(BackendKind::Qemu),
        )
        .unwrap();
        Env { _tmp: tmp, root, m }
    }

    /// A row for `id` with a lease of `mode`, for `disk_mode`.
    fn row(&self, id: &str, mode: Option<NetworkMode>, disk_mode: DiskMode) -> VmRecord {
        let kernel = self.root.join("vmlinux");
        let rootfs = self.root.join("rootfs.ext4");
        fs::write(&kernel, b"k").unwrap();
        if !rootfs.exists() {
            fs::write(&rootfs, b"r").unwrap();
        }
        let config = VmConfig::builder(&kernel, &rootfs)
            .vm_id(id)
            .disk_mode(disk_mode)
            .build()
            .unwrap();
        self.m
            .state()
            .unwrap()
            .create_vm(&config, BackendKind::Qemu, mode)
            .unwrap()
    }
}

/// The tools these tests run; a missing one skips the test, or fails it under `SMOLVM_E2E=1`.
fn tools_present(test: &str) -> bool {
    ["ssh-keygen", "dropbearconvert", "debugfs", "mkfs.ext4"]
        .into_iter()
        .all(|t| crate::test_tools::tool_or_skip(test, t).is_some())
}

fn debugfs_cat(disk: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn isolated_disk_gets_host_key_and_authorized_key_once() {
    if !tools_present("isolated_disk_gets_host_key_and_authorized_key_once") {
        return;
    }
    let env = Env::new();
    // An image with Dropbear (as smolvm's default image) and a key of its own for root.
    let tree = env.root.join("tree");
    fs::create_dir_all(tree.join("usr/sbin")).unwrap();
    fs::create_dir_all(tree.join("root/.ssh")).unwrap();
    fs::write(tree.join("usr/sbin/dropbear"), b"binary").unwrap();
    fs::write(
        tree.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAimage user@image",
    )
    .unwrap();
    let disk = env.root.join("vm.ext4");
    fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());

    let rec = env.row("ssh-a", Some(NetworkMode::Tap), DiskMode::Isolated);
    env.m.prepare_ssh(&rec, Some(&disk)).unwrap();
    env.m.prepare_ssh(&rec, Some(&disk)).unwrap(); // idempotent

    let vm_dir = env.m.vm_dir("ssh-a");
    let dropbear_key = fs::read(vm_dir.join("dropbear_ed25519_host_key")).unwrap();
    let in_disk = ssh::read_file_from_disk(&disk, HostKeyFormat::Dropbear.guest_path())
        .unwrap()
        .unwrap();
    assert_eq!(in_disk, dropbear_key);
    // No OpenSSH server in the image: no /etc/ssh written.
    assert_eq!(ssh::paths_in_disk(&disk, &["/etc/ssh"]).unwrap(), [false]);

    let client = env.m.client_key().unwrap().public_key_line().unwrap();
    let auth = debugfs_cat(&disk, GUEST_AUTHORIZED_KEYS);
    let lines: Vec<&str> = auth.lines().collect();
    assert_eq!(
        lines,
        ["ssh-ed25519 AAAAimage user@image", client.trim_end()],
        "{auth}"
    );

    let host_pub = fs::read_to_string(vm_dir.join("ssh_host_ed25519_key.pub")).unwrap();
    let mut fields = host_pub.split_whitespace();
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    let net = rec.info.network.as_ref().unwrap();
    let known = fs::read_to_string(env.m.known_hosts_path("ssh-a")).unwrap();
    assert_eq!(
        known,
        format!(
            "[127.0.0.1]:{},{} {kind} {key}\n",
            net.ssh_host_port.unwrap(),
            net.guest_ip
        )
    );
    // Isolated disks need no kernel parameter.
    assert_eq!(env.m.boot_authorized_key(&rec).unwrap(), None);
}

#[test]
fn openssh_images_get_the_openssh_key_too() {
    if !tools_present("openssh_images_get_the_openssh_key_too") {
        return;
    }
    let env = Env::new();
    let tree = env.root.join("tree");
    fs::create_dir_all(tree.join("usr/sbin")).unwrap();
    fs::write(tree.join("usr/sbin/sshd"), b"binary").unwrap();
    let disk = env.root.join("vm.ext4");
    fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let rec = env.row("ssh-o", Some(NetworkMode::User), DiskMode::Isolated);
    env.m.prepare_ssh(&rec, Some(&disk)).unwrap();
    let vm_dir = env.m.vm_dir("ssh-o");
    assert_eq!(
        ssh::read_file_from_disk(&disk, HostKeyFormat::OpenSsh.guest_path())
            .unwrap()
            .unwrap(),
        fs::read(vm_dir.join("ssh_host_ed25519_key")).unwrap()
    );
    assert_eq!(
        ssh::paths_in_disk(&disk, &[HostKeyFormat::Dropbear.guest_path()]).unwrap(),
        [false]
    );
    // User mode: only the loopback forward is pinned, and there is no private_ip command.
    let known = fs::read_to_string(env.m.known_hosts_path("ssh-o")).unwrap();
    assert!(
        known.starts_with("[127.0.0.1]:") && !known.contains("10.0.2.15"),
        "{known}"
    );
    let cmds = env.m.get_ssh_commands("ssh-o", "root", None, None).unwrap();
    assert_eq!(cmds.keys().collect::<Vec<_>>(), ["localhost_port"]);
    let target = env.m.ssh_target("ssh-o", "root").unwrap();
    assert_eq!(target.host, "127.0.0.1");
}

#[test]
fn shared_disks_carry_the_client_key_on_the_command_line() {
    if !tools_present("shared_disks_carry_the_client_key_on_the_command_line") {
        return;
    }
    let env = Env::new();
    let rec = env.row("ssh-s", Some(NetworkMode::Tap), DiskMode::Shared);
    env.m.prepare_ssh(&rec, None).unwrap();
    let key = env.m.boot_authorized_key(&rec).unwrap().unwrap();
    let line = env.m.client_key().unwrap().public_key_line().unwrap();
    assert_eq!(key, line.trim_end());
    assert!(env.m.known_hosts_path("ssh-s").exists());
    let target = env.m.ssh_target("ssh-s", "root").unwrap();
    assert_eq!(
        target.host,
        rec.info.network.as_ref().unwrap().guest_ip.to_string()
    );
    assert_eq!(target.port, 22);
    let cmds = env
        .m
        .get_ssh_commands("ssh-s", "ubuntu", Some(Path::new("/k")), Some("gw"))
        .unwrap();
    assert_eq!(
        cmds.keys().collect::<Vec<_>>(),
        ["localhost_port", "private_ip", "public"]
    );
    assert!(cmds["private_ip"].starts_with("ssh -i /k -o IdentitiesOnly=yes"));
}

#[test]
fn vms_without_network_have_no_ssh() {
    let env = Env::new();
    let rec = env.row("quiet", None, DiskMode::Isolated);
    env.m.prepare_ssh(&rec, None).unwrap();
    assert!(!env.m.vm_dir("quiet").exists());
    assert_eq!(env.m.boot_authorized_key(&rec).unwrap(), None);
    let e = env
        .m
        .get_ssh_commands("quiet", "root", None, None)
        .unwrap_err();
    assert!(e.to_string().contains("without networking"), "{e}");
    assert!(env.m.ssh_target("quiet", "root").is_err());
    assert!(matches!(
        env.m.get_ssh_commands("nope", "root", None, None),
        Err(Error::VmNotFound(_))
    ));
    assert_eq!(
        env.m
            .network_mode_for(NetworkMode::None, BackendKind::Qemu)
            .unwrap(),
        None
    );
}
