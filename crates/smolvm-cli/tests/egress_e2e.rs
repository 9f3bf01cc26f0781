//! Egress policies on a real VM, against a small "internet" that exists only inside namespaces this test
//! creates: a world namespace with a few addresses, TCP banner servers on them and a DNS server whose
//! answer for one name comes from a fixture the test changes. The VM is made by the real CLI under
//! `ip netns exec` (so smolvm reads the namespace's resolv.conf, which names the world's DNS server).
//!
//! Checked: an allow-list passes listed CIDRs on listed ports and the current address of a listed
//! domain, drops the rest and counts the drops; DNS to the guest's resolver passes; a domain whose
//! address changes is followed by `smolvm policy refresh --watch`; `none` blocks everything while
//! commands still run through the agent; `open` restores NAT; every change is made on the running VM.
//!
//! Run with `SMOLVM_E2E=1` as root.

mod cli_netns;
#[path = "../../smolvm/tests/netns_util/mod.rs"]
mod netns_util;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cli_netns::{DeleteOnDrop, Dirs, NsResolvConf};
use netns_util::{e2e, enter_ns, ChildGuard, Netns, Server};

/// The world's DNS server (also the uplink's next hop).
const DNS_IP: &str = "10.98.0.2";
/// The host namespace's address on the link to the world.
const UPLINK_IP: &str = "10.98.0.1";
/// An allow-listed address.
const LISTED: &str = "10.98.0.3";
/// The domain's first and second address.
const FIRST: &str = "10.98.0.4";
const SECOND: &str = "10.98.0.5";
/// The allow-listed domain (answered by the fixture).
const NAME: &str = "svc.egress.test";
/// TTL of the fixture's answers (smolvm refreshes no more often than every 5 s).
const TTL: u32 = 5;
const VM: &str = "egress-e2e";

/// A CLI command inside `ns` that must succeed; its stdout.
trait CliOk {
    fn ok(&self, ns: &Netns, args: &[&str]) -> String;
}

impl CliOk for Dirs {
    fn ok(&self, ns: &Netns, args: &[&str]) -> String {
        let out = self.smolvm(Some(ns), args);
        assert!(out.status.success(), "smolvm {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A DNS server answering `NAME` A with the fixture's address (TTL [`TTL`]), NXDOMAIN otherwise.
struct Dns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dns_answer(q: &[u8], addr: Ipv4Addr) -> Option<Vec<u8>> {
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
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let known = labels.join(".") == NAME;
    let answers = u16::from(known && qtype == 1);
    let mut r = q[..2].to_vec();
    r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }, 0, 1]);
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..i + 5)?);
    if answers == 1 {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&TTL.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&addr.octets());
    }
    Some(r)
}

fn dns_server(world: &Netns, fixture: Arc<Mutex<Ipv4Addr>>) -> Dns {
    let stop = Arc::new(AtomicBool::new(false));
    let (name, flag) = (world.name.clone(), stop.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _in = enter_ns(&name);
        let s = UdpSocket::bind((DNS_IP.parse::<Ipv4Addr>().unwrap(), 53)).expect("bind DNS");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let addr = *fixture.lock().unwrap();
                if let Some(r) = dns_answer(&buf[..n], addr) {
                    let _ = s.send_to(&r, peer);
                }
            }
        }
    });
    rx.recv().unwrap();
    Dns {
        stop,
        thread: Some(thread),
    }
}

/// The host namespace with an uplink to the world namespace, which holds every address of the test.
fn namespaces() -> (Netns, Netns) {
    cli_netns::host_and_world(UPLINK_IP, &[DNS_IP, LISTED, FIRST, SECOND])
}

/// Reads the banner of `addr:port` from inside the guest: `Some(banner line)` or `None` when the
/// connection fails (dropped traffic: nc gives up after its timeout).
fn reach(d: &Dirs, ns: &Netns, addr: &str, port: u16) -> Option<String> {
    let out = d.smolvm(
        Some(ns),
        &[
            "exec",
            VM,
            "--timeout",
            "60",
            "--",
            "nc",
            "-w",
            "3",
            addr,
            &port.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn dropped(d: &Dirs, ns: &Netns) -> (serde_json::Value, u64) {
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(ns, &["policy", "show", VM, "--json"])).unwrap();
    let n = v["dropped_packets"].as_u64().unwrap_or(0);
    (v, n)
}

#[test]
fn allow_lists_none_and_open_are_enforced_on_a_running_vm() {
    if !e2e("egress", &["ip", "nft", "qemu-system-x86_64", "mkfs.ext4"]) {
        return;
    }
    let d = Dirs::new("smve");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(d.0.path().join("data")).unwrap();
    std::os::unix::fs::symlink(&cache, d.0.path().join("data/images")).unwrap();
    let out = d.smolvm(None, &["image", "build"]);
    assert!(out.status.success(), "smolvm image build: {out:?}");

    let (host, world) = namespaces();
    let _conf = NsResolvConf::new(&host, &format!("nameserver {DNS_IP}\n"));
    let fixture = Arc::new(Mutex::new(FIRST.parse::<Ipv4Addr>().unwrap()));
    let _dns = dns_server(&world, fixture.clone());
    let sock = |a: &str, p: u16| SocketAddr::new(a.parse().unwrap(), p);
    let _servers = [
        Server::start(&world, sock(DNS_IP, 80), "dns-host"),
        Server::start(&world, sock(LISTED, 80), "listed"),
        Server::start(&world, sock(LISTED, 8080), "listed-8080"),
        Server::start(&world, sock(FIRST, 80), "first"),
        Server::start(&world, sock(SECOND, 80), "second"),
    ];
    let _guard = DeleteOnDrop {
        dirs: &d,
        ns: &host,
        ids: vec![VM],
    };

    // Bad input is refused before anything is made, naming the field and the value.
    let out = d.smolvm(
        Some(&host),
        &["create", "--id", VM, "--allow", "10.98.0.3/24"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("network_policy") && err.contains("10.98.0.3/24"),
        "{err}"
    );

    // Only TAP networking can enforce a policy: user mode is refused at create, naming the field.
    let out = d.smolvm(
        Some(&host),
        &[
            "create",
            "--id",
            VM,
            "--network",
            "user",
            "--egress",
            "none",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("network_policy"),
        "{err}"
    );
    assert_eq!(d.ok(&host, &["list", "--json"]).trim(), "[]");

    d.ok(
        &host,
        &[
            "create",
            "--id",
            VM,
            "--network",
            "tap",
            "--mem",
            "256",
            "--vcpus",
            "1",
            "--start",
            "--boot-timeout",
            "300",
            "--allow",
            LISTED,
            "--allow",
            NAME,
            "--allow-port",
            "80",
        ],
    );
    // Allowed: the listed address on the listed port, the domain's current address.
    assert!(reach(&d, &host, LISTED, 80).is_some_and(|s| s.starts_with("listed ")));
    assert!(reach(&d, &host, FIRST, 80).is_some_and(|s| s.starts_with("first ")));
    // Denied: a listed address on another port, an unlisted address (the DNS server's TCP 80).
    let (_, before) = dropped(&d, &host);
    assert_eq!(reach(&d, &host, LISTED, 8080), None);
    assert_eq!(reach(&d, &host, DNS_IP, 80), None);
    assert_eq!(reach(&d, &host, SECOND, 80), None);
    let (status, after) = dropped(&d, &host);
    assert!(after > before, "drops are counted: {status}");
    assert_eq!(status["active"], true);
    assert_eq!(status["policy"]["domains"][0], NAME);
    // DNS to the guest's resolver passes, so the guest resolves the name itself.
    let out = d.ok(&host, &["exec", VM, "--", "nslookup", NAME]);
    assert!(out.contains(&format!("Address: {FIRST}")), "{out}");

    // The domain moves: the refresher (on the TTL) follows it.
    *fixture.lock().unwrap() = SECOND.parse().unwrap();
    let watcher = d
        .cmd(Some(&host), &["policy", "refresh", VM, "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _watcher = ChildGuard(watcher);
    let mut followed = false;
    for _ in 0..20 {
        if reach(&d, &host, SECOND, 80).is_some() {
            followed = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(followed, "the new address of {NAME} was never allowed");
    assert_eq!(
        reach(&d, &host, FIRST, 80),
        None,
        "the old address is no longer allowed"
    );
    drop(_watcher);

    // none: nothing passes, not even DNS; the agent still runs commands.
    d.ok(&host, &["policy", "set", VM, "--egress", "none"]);
    assert_eq!(reach(&d, &host, LISTED, 80), None);
    let out = d.smolvm(Some(&host), &["exec", VM, "--", "nslookup", NAME]);
    assert!(!out.status.success(), "DNS under none: {out:?}");
    assert_eq!(
        d.ok(&host, &["exec", VM, "--", "echo", "agent-ok"]).trim(),
        "agent-ok"
    );

    // open: NAT to everything again.
    d.ok(&host, &["policy", "set", VM, "--egress", "open"]);
    assert!(reach(&d, &host, DNS_IP, 80).is_some_and(|s| s.starts_with("dns-host ")));
    assert!(reach(&d, &host, LISTED, 8080).is_some_and(|s| s.starts_with("listed-8080 ")));
    let rules = host.run(&["nft", "list", "ruleset"]);
    assert!(
        !rules.contains(&format!("eg_{VM}")),
        "open leaves no policy objects: {rules}"
    );
    let (status, _) = dropped(&d, &host);
    assert_eq!(status["policy"], "open");
    assert!(status["dropped_packets"].is_null(), "{status}");

    d.ok(&host, &["delete", VM]);
    // Nothing of the VM's policy is left in the host's ruleset.
    let rules = host.run(&["nft", "list", "ruleset"]);
    assert!(!rules.contains(&format!("eg_{VM}")), "{rules}");
}
