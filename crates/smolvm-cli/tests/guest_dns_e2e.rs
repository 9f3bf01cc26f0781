//! The default guest's network applets against a small "internet" that exists only inside namespaces
//! this test creates: a DNS server answering one name and an HTTP server behind it. TAP- and user-mode
//! guests fetch the page by name with `wget` (also with `-T`, which crashes Debian's busybox without
//! the image's front end), resolve it with `nslookup`, reach it with `ping` and `nc`; a guest without a
//! network fails each of them cleanly (exit 1, no crash).
//!
//! The VMs are made by the real CLI under `ip netns exec`, so they see the namespace's
//! `/etc/netns/<ns>/resolv.conf` as the host's resolver configuration, exactly like a user's `smolvm`
//! run there: TAP guests get its servers, QEMU's user-mode DNS relay forwards to them.
//!
//! Run with `SMOLVM_E2E=1` as root.

mod cli_netns;
#[path = "../../smolvm/tests/netns_util/mod.rs"]
mod netns_util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cli_netns::{DeleteOnDrop, Dirs, NsResolvConf};
use netns_util::{e2e, enter_ns, Netns};

/// The "internet": the DNS and HTTP server's address, in the world namespace.
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The host namespace's address on the link to the world.
const UPLINK_IP: &str = "10.99.0.1";
/// The only name the DNS server knows.
const NAME: &str = "page.smolvm.test";
/// What the HTTP server answers.
const PAGE: &str = "hello from inside the test namespace";

/// Background servers in a namespace, stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The answer of the test's DNS server to one query: `NAME` A -> `WORLD_IP`; no data for other types
/// of `NAME`; NXDOMAIN for every other name. `None` for what is not a query.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let n = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + n)?).to_lowercase());
        i += 1 + n;
    }
    let qend = i + 5; // zero byte, type, class
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let known = labels.join(".") == NAME;
    let answers = u16::from(known && qtype == 1);
    let mut r = q[..2].to_vec();
    r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }, 0, 1]);
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    if answers == 1 {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&WORLD_IP.octets());
    }
    Some(r)
}

/// A DNS server on `addr`:53 in `ns`, answering with [`dns_answer`]; stops when `stop` is set.
fn dns_server(
    ns: &Netns,
    addr: Ipv4Addr,
    stop: &Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    let (name, flag) = (ns.name.clone(), stop.clone());
    std::thread::spawn(move || {
        let _in = enter_ns(&name);
        let s = UdpSocket::bind((addr, 53)).expect("bind DNS");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                if let Some(r) = dns_answer(&buf[..n]) {
                    let _ = s.send_to(&r, peer);
                }
            }
        }
    })
}

/// Starts the DNS (UDP 53) and HTTP (TCP 80) servers on `WORLD_IP` inside `world`, and a local
/// resolver stub on 127.0.0.53 inside `host` (like systemd-resolved's): QEMU's user-mode DNS relay
/// asks it, TAP guests cannot reach it.
fn start_servers(host: &Netns, world: &Netns) -> Servers {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = vec![
        dns_server(world, WORLD_IP, &stop, tx.clone()),
        dns_server(host, Ipv4Addr::new(127, 0, 0, 53), &stop, tx.clone()),
    ];
    let ns = world;
    let (name, flag) = (ns.name.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        let _in = enter_ns(&name);
        let l = TcpListener::bind((WORLD_IP, 80)).expect("bind HTTP");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !flag.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let body = format!("{PAGE}\n");
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }));
    for _ in 0..3 {
        rx.recv().unwrap();
    }
    Servers { stop, threads }
}

/// The host namespace (where smolvm and QEMU run) with an uplink to the world namespace.
fn namespaces() -> (Netns, Netns) {
    let (host, world) = cli_netns::host_and_world(UPLINK_IP, &[&WORLD_IP.to_string()]);
    // A user-mode guest's ping becomes an unprivileged ICMP socket of its VMM, which runs as the VM's
    // own uid/gid: allowed only for gids in `ping_group_range`. A new namespace starts at "1 0" (none);
    // systemd hosts set "0 2147483647", as here (README: Networking).
    host.run(&[
        "sh",
        "-c",
        "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range",
    ]);
    (host, world)
}

/// Runs a guest command (argv, or a login-shell string with `--shell`): (exit code, stdout, stderr).
fn guest(d: &Dirs, ns: &Netns, vm: &str, shell: bool, argv: &[&str]) -> (i32, String, String) {
    let mut args = vec!["exec", vm, "--timeout", "60"];
    if shell {
        args.push("--shell");
    }
    args.push("--");
    args.extend_from_slice(argv);
    let out = d.smolvm(Some(ns), &args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every network applet works by name in a guest with a network.
fn check_online(d: &Dirs, ns: &Netns, vm: &str, resolver: Ipv4Addr) {
    let url = format!("http://{NAME}/");
    let (code, conf, err) = guest(d, ns, vm, false, &["cat", "/etc/resolv.conf"]);
    assert_eq!(code, 0, "{vm}: {err}");
    let servers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(servers, [resolver.to_string()], "{vm}: {conf}");
    // wget as argv (found on PATH: the image's front end) and in a login shell (where busybox's shell
    // would run its own applet first), with and without a timeout.
    for (shell, cmd) in [
        (false, vec!["wget", "-q", "-O-", url.as_str()]),
        (false, vec!["wget", "-T", "20", "-q", "-O-", url.as_str()]),
        (true, vec![&*format!("wget -qT 20 -O- {url}")]),
    ] {
        let (code, out, err) = guest(d, ns, vm, shell, &cmd);
        assert_eq!((code, out.trim()), (0, PAGE), "{vm} {cmd:?}: {err}");
    }
    let (code, out, err) = guest(d, ns, vm, false, &["nslookup", NAME]);
    assert_eq!(code, 0, "{vm} nslookup: {out} {err}");
    assert!(out.contains(&format!("Address: {WORLD_IP}")), "{vm}: {out}");
    let (code, out, err) = guest(d, ns, vm, false, &["ping", "-c", "1", "-W", "5", NAME]);
    assert_eq!(code, 0, "{vm} ping: {out} {err}");
    assert!(out.contains(&format!("PING {NAME} ({WORLD_IP})")), "{out}");
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {NAME} 80");
    let (code, out, err) = guest(d, ns, vm, true, &[&script]);
    assert_eq!(code, 0, "{vm} nc: {err}");
    assert!(
        out.ends_with(&format!("\r\n\r\n{PAGE}\n")),
        "{vm} nc: {out:?}"
    );
    // A timeout that fires ends wget with its own message, not a crash.
    let (code, _, err) = guest(
        d,
        ns,
        vm,
        false,
        &["wget", "-T", "1", "-q", "-O-", "http://10.99.0.3/"],
    );
    assert_eq!(code, 1, "{vm}: {err}");
    assert!(err.contains("wget: download timed out"), "{vm}: {err}");
}

/// Every network applet fails cleanly (exit 1, a message, no signal) in a guest without a network.
fn check_offline(d: &Dirs, ns: &Netns, vm: &str) {
    let url = format!("http://{NAME}/");
    for (cmd, says) in [
        (vec!["wget", "-q", "-O-", url.as_str()], "bad address"),
        (
            vec!["wget", "-T", "5", "-q", "-O-", url.as_str()],
            "bad address",
        ),
        (
            vec!["wget", "-q", "-O-", "http://10.99.0.2/"],
            "unreachable",
        ),
        (vec!["ping", "-c", "1", "-W", "2", NAME], "bad address"),
        (vec!["nc", "-w", "2", NAME, "80"], "bad address"),
        (vec!["nslookup", NAME], "no servers could be reached"),
    ] {
        let (code, out, err) = guest(d, ns, vm, false, &cmd);
        assert_eq!(code, 1, "{vm} {cmd:?}: {out} {err}");
        assert!(
            err.contains(says) || out.contains(says),
            "{vm} {cmd:?}: {out} {err}"
        );
    }
}

#[test]
fn guests_fetch_a_page_by_name_in_tap_and_user_mode_and_fail_cleanly_offline() {
    if !e2e(
        "guest DNS",
        &["ip", "nft", "qemu-system-x86_64", "mkfs.ext4"],
    ) {
        return;
    }
    let d = Dirs::new("smvd");
    // Share the library tests' image cache; build (or find) the image outside the namespaces, where
    // the distribution mirror is reachable.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(d.0.path().join("data")).unwrap();
    std::os::unix::fs::symlink(&cache, d.0.path().join("data/images")).unwrap();
    let out = d.smolvm(None, &["image", "build"]);
    assert!(out.status.success(), "smolvm image build: {out:?}");

    let (host, world) = namespaces();
    // The host's resolver list starts with a loopback stub a TAP guest cannot reach: smolvm skips it.
    let _resolv = NsResolvConf::new(
        &host,
        &format!("nameserver 127.0.0.53\nnameserver {WORLD_IP}\n"),
    );
    let _servers = start_servers(&host, &world);
    let vms = [
        ("dns-tap", "tap"),
        ("dns-user", "user"),
        ("dns-none", "none"),
    ];
    // A failing assertion must not leave the VMs running: deleted on the way out, inside the host
    // namespace, before the namespaces go.
    let _guard = DeleteOnDrop {
        dirs: &d,
        ns: &host,
        ids: vms.iter().map(|(vm, _)| *vm).collect(),
    };
    for (vm, mode) in vms {
        let out = d.smolvm(
            Some(&host),
            &[
                "create",
                "--id",
                vm,
                "--network",
                mode,
                "--mem",
                "256",
                "--vcpus",
                "1",
                "--start",
            ],
        );
        assert!(out.status.success(), "create {vm}: {out:?}");
    }
    check_online(&d, &host, "dns-tap", WORLD_IP);
    check_online(&d, &host, "dns-user", Ipv4Addr::new(10, 0, 2, 3));
    check_offline(&d, &host, "dns-none");
    for (vm, _) in vms {
        let out = d.smolvm(Some(&host), &["delete", vm]);
        assert!(out.status.success(), "delete {vm}: {out:?}");
    }
}

/// The test's DNS server itself: the exact bytes of its answers.
#[test]
fn dns_answers_are_well_formed() {
    let query = |name: &str, qtype: u8| {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, qtype, 0, 1]);
        q
    };
    let q = query(NAME, 1);
    let a = dns_answer(&q).unwrap();
    assert_eq!(&a[..12], &[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    assert_eq!(&a[12..q.len()], &q[12..]);
    assert_eq!(&a[a.len() - 4..], &[10, 99, 0, 2]);
    let aaaa = dns_answer(&query(NAME, 28)).unwrap();
    assert_eq!(&aaaa[6..8], &[0, 0], "no AAAA answer");
    let other = dns_answer(&query("other.test", 1)).unwrap();
    assert_eq!(other[3] & 0x0f, 3, "NXDOMAIN");
    assert!(dns_answer(&a).is_none(), "responses are not answered");
}
