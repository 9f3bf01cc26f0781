//! Network-namespace helpers for the networking end-to-end tests. Everything these tests create
//! (namespaces, veths, TAPs, rules, listeners) lives inside namespaces they create and remove; nothing
//! touches the host's own network.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// True if the end-to-end tests must run. Without `SMOLVM_E2E=1` they skip (printing why); with it,
/// a missing prerequisite fails the test.
pub fn e2e(test: &str, tools: &[&str]) -> bool {
    if std::env::var("SMOLVM_E2E").as_deref() != Ok("1") {
        eprintln!("skipping {test}: set SMOLVM_E2E=1 to run (needs root, network namespaces)");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "{test}: needs root");
    for t in tools {
        assert!(
            smolvm::internals::network::find_program(t).is_some(),
            "{test}: prerequisite `{t}` is not installed"
        );
    }
    true
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`smolvm-t-<pid>-<n>`), removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates it and brings its loopback up.
    pub fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("smolvm-t-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        sh(&argv)
    }

    /// `ip netns exec <ns> argv...`, whatever its outcome.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec")
    }

    /// `ip netns exec <ns> argv...`, which must succeed; returns stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?} in {}: {out:?}", self.name);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `argv` in the namespace in the background; killed (by pid) on drop of the guard.
    pub fn spawn(&self, argv: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .spawn()
            .expect("spawn in netns");
        ChildGuard(child)
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Entered {
        enter_ns(&self.name)
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let _e = enter_ns(&name);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

/// Moves the calling thread (only it: network namespaces are per thread) into the named namespace
/// until the guard drops. Processes it spawns meanwhile start there too.
pub fn enter_ns(name: &str) -> Entered {
    let orig = File::open("/proc/thread-self/ns/net").expect("open own netns");
    let target = File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on valid namespace fds; it affects only the calling thread.
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    Entered { orig }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Restores the thread's original namespace on drop.
pub struct Entered {
    orig: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: the fd refers to the namespace the thread was in.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Kills (by pid) and reaps a background process on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a host command that must succeed (argv only); returns stdout.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(out.status.success(), "{argv:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair: `host_name` in `host`, `eth0` in `peer`, the host end tagged like smolvm's TAP of
/// `vm_id` (so `setup_vm` adopts it) and the peer configured as a guest with `ip/16` and a default
/// route via `gw`. Unlike a TAP without a VMM, a veth has a carrier, so traffic flows.
pub fn fake_guest(host: &Netns, host_name: &str, vm_id: &str, guest: &Netns, ip: &str, gw: &str) {
    host.ip(&[
        "link",
        "add",
        host_name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &guest.name,
    ]);
    host.ip(&[
        "link",
        "set",
        "dev",
        host_name,
        "alias",
        &format!("smolvm:{vm_id}"),
    ]);
    guest.ip(&["addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
    guest.ip(&["link", "set", "eth0", "up"]);
    guest.ip(&["route", "add", "default", "via", gw]);
}

/// A TCP server in a namespace answering every connection with `<banner> <peer address>\n`.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr, banner: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let name = ns.name.clone();
        let banner = banner.to_string();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let _e = enter_ns(&name);
            let l = TcpListener::bind(addr).expect("bind test server");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{banner} {peer}");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().expect("server bound");
        Server {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects (from the calling thread's namespace) and reads the server's line.
pub fn fetch(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// [`fetch`] from inside `ns`.
pub fn fetch_from(ns: &Netns, addr: &str) -> std::io::Result<String> {
    let addr = addr.to_string();
    ns.within(move || fetch(&addr))
}
