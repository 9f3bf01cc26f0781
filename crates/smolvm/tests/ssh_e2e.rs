//! End-to-end SSH test: a real Dropbear server (the guest image's SSH server) in a "guest" network
//! namespace behind smolvm's network setup, reached with the real `ssh` client through the loopback
//! forward and at the guest IP, with the host key pinned. Run with `SMOLVM_E2E=1` as root.

mod netns_util;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_util::{e2e, fake_guest, Netns};
use smolvm::internals::network::HostNetwork;
use smolvm::internals::ssh::{
    ensure_client_key, ensure_host_key, get_ssh_commands, known_hosts_patterns, run_ssh,
    wait_for_ssh, write_known_hosts, HostKeyFormat, SshTarget,
};
use smolvm::NetworkConfig;

/// Runs in the guest namespace: a private mount and UTS namespace, root's home replaced by a
/// temporary one (authorized_keys) without touching the host's, a hostname of its own, then Dropbear
/// in the foreground with the smolvm-generated host key. Arguments arrive as positional parameters.
const GUEST_SCRIPT: &str =
    r#"mount --bind "$1" /root && hostname "$2" && exec dropbear -F -E -s -r "$3" -p 22 -P "$4""#;

fn shell(line: &str) -> std::process::Output {
    Command::new("timeout")
        .args(["30", "sh", "-c", line])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn ssh_through_forward_and_private_ip_with_pinned_host_key() {
    let tools = [
        "ip",
        "nft",
        "ssh",
        "ssh-keygen",
        "dropbear",
        "dropbearconvert",
        "unshare",
        "mount",
        "timeout",
    ];
    if !e2e("ssh end to end", &tools) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let vm_dir = data.join("vms/vm-a");
    let client = ensure_client_key(&data).unwrap();
    let host_key = ensure_host_key(&vm_dir, "vm-a", HostKeyFormat::Dropbear).unwrap();

    let home = tmp.path().join("guest-root");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    let auth = home.join(".ssh/authorized_keys");
    fs::write(&auth, format!("{}\n", client.public_key_line().unwrap())).unwrap();
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o600)).unwrap();

    let (h, g1) = (Netns::new(), Netns::new());
    fake_guest(&h, "smv-2", "vm-a", &g1, "172.16.0.2", "172.16.0.1");
    let _in = h.enter();
    let net = NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, 2),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some("smv-2".into()),
        guest_mac: "02:00:ac:10:00:02".into(),
        ssh_host_port: Some(2202),
        mode: smolvm::NetworkMode::Tap,
    };
    let hn = HostNetwork::system();
    hn.setup_vm("vm-a", &net).unwrap();

    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let pidfile = s(&tmp.path().join("dropbear.pid"));
    let (home_s, key_s) = (s(&home), s(&host_key.guest_key_file));
    let _dropbear = g1.spawn(&[
        "unshare",
        "--mount",
        "--uts",
        "sh",
        "-c",
        GUEST_SCRIPT,
        "sh",
        &home_s,
        "guest-a",
        &key_s,
        &pidfile,
    ]);

    let known_hosts = vm_dir.join("known_hosts");
    write_known_hosts(
        &known_hosts,
        &known_hosts_patterns(&net),
        &host_key.public_key_line,
    )
    .unwrap();
    let target = SshTarget::localhost(&net, "root", &client.private_key, &known_hosts).unwrap();

    let t0 = Instant::now();
    wait_for_ssh(&target, Duration::from_secs(30)).unwrap();
    eprintln!("wait_for_ssh ready after {:?}", t0.elapsed());

    let t1 = Instant::now();
    let out = run_ssh(&target, &["hostname".into()], Some(Duration::from_secs(30))).unwrap();
    eprintln!(
        "ssh connect-to-first-output (hostname via 127.0.0.1:2202): {:?}",
        t1.elapsed()
    );
    assert_eq!(
        (out.exit_code, out.stdout.trim()),
        (0, "guest-a"),
        "{out:?}"
    );

    let private = SshTarget::private_ip(&net, "root", &client.private_key, &known_hosts);
    let t2 = Instant::now();
    let out = run_ssh(
        &private,
        &["hostname".into()],
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    eprintln!(
        "ssh connect-to-first-output (hostname via 172.16.0.2:22): {:?}",
        t2.elapsed()
    );
    assert_eq!(out.stdout.trim(), "guest-a", "{out:?}");

    // The remote shell gets exactly these words.
    let words = ["printf", "%s|", "a b", "it's", "$HOME", "", "`id`"].map(String::from);
    let out = run_ssh(&target, &words, Some(Duration::from_secs(30))).unwrap();
    assert_eq!(out.stdout, "a b|it's|$HOME||`id`|", "{out:?}");
    let out = run_ssh(&target, &["sh".into(), "-c".into(), "exit 7".into()], None).unwrap();
    assert_eq!(out.exit_code, 7);

    // The copy-paste commands work exactly as returned, pasted into a shell.
    let cmds = get_ssh_commands(
        &net,
        "root",
        Some(&client.private_key),
        Some(&known_hosts),
        None,
    );
    for key in ["localhost_port", "private_ip"] {
        let out = shell(&format!("{} hostname", cmds[key]));
        assert!(out.status.success(), "{key}: {} -> {out:?}", cmds[key]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "guest-a",
            "{key}"
        );
    }
    assert!(!cmds.contains_key("public"));

    // Pinning: an unknown host is refused (no trust on first use) ...
    fs::write(&known_hosts, "").unwrap();
    let out = run_ssh(&target, &["true".into()], None).unwrap();
    assert_eq!(out.exit_code, 255, "{out:?}");
    assert!(
        out.stderr.contains("Host key verification failed"),
        "{out:?}"
    );
    let out = shell(&format!("{} true", cmds["localhost_port"]));
    assert!(
        !out.status.success(),
        "pasted command trusted an unknown key: {out:?}"
    );
    // ... and so is a different key for the same host.
    let other =
        ensure_host_key(&tmp.path().join("other"), "other", HostKeyFormat::OpenSsh).unwrap();
    write_known_hosts(
        &known_hosts,
        &known_hosts_patterns(&net),
        &other.public_key_line,
    )
    .unwrap();
    let out = run_ssh(&target, &["true".into()], None).unwrap();
    assert_eq!(out.exit_code, 255, "{out:?}");

    hn.teardown_vm("vm-a", &net).unwrap();
}
