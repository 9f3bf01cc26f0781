//! What the CLI tests that run `smolvm` inside a test network namespace share: private data and socket
//! directories, the command line that runs the CLI there, the shared image cache, and the namespace's
//! resolv.conf.

// Each test crate uses its own part of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::netns_util::Netns;

/// Private data and socket directories for the CLI (under /tmp: socket paths must stay short).
pub struct Dirs(pub tempfile::TempDir);

impl Dirs {
    /// Fresh directories named `<prefix>...` under /tmp.
    pub fn new(prefix: &str) -> Dirs {
        Dirs(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .unwrap(),
        )
    }

    /// The data directory given to the CLI.
    pub fn data(&self) -> PathBuf {
        self.0.path().join("data")
    }

    /// Shares the image cache of the library's VM tests (same target directory), so the default image
    /// is built once per machine rather than once per test run.
    pub fn share_image_cache(&self) {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(self.data()).unwrap();
        std::os::unix::fs::symlink(&cache, self.data().join("images")).unwrap();
    }

    /// `smolvm --data-dir .. --socket-dir .. args...`, inside `ns` when given.
    pub fn cmd(&self, ns: Option<&Netns>, args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_smolvm");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--data-dir")
            .arg(self.data())
            .arg("--socket-dir")
            .arg(self.0.path().join("s"))
            .args(args)
            .env_remove("SMOLVM_BACKEND")
            .env_remove("SMOLVM_DATA_DIR")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs [`cmd`](Self::cmd) to completion.
    pub fn smolvm(&self, ns: Option<&Netns>, args: &[&str]) -> Output {
        self.cmd(ns, args).output().unwrap()
    }
}

/// Deletes VMs through the CLI (inside `ns`) when dropped, whether the test passed or panicked: a
/// failed assertion must not leave a VMM behind.
pub struct DeleteOnDrop<'a> {
    pub dirs: &'a Dirs,
    pub ns: &'a Netns,
    pub ids: Vec<&'a str>,
}

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        for vm in &self.ids {
            let _ = self.dirs.smolvm(Some(self.ns), &["delete", vm]);
        }
    }
}

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`; removed on drop.
pub struct NsResolvConf(PathBuf);

impl NsResolvConf {
    /// Writes `text` as the namespace's resolv.conf.
    pub fn new(ns: &Netns, text: &str) -> NsResolvConf {
        let dir = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        NsResolvConf(dir)
    }
}

impl Drop for NsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A "host" namespace (where smolvm and its guests run) with a veth uplink `up0` at `uplink_ip/24` and
/// a default route via `world_ips[0]`, and a "world" namespace holding `world_ips` (each /24) on the
/// peer `eth0`: a small internet the test builds.
pub fn host_and_world(uplink_ip: &str, world_ips: &[&str]) -> (Netns, Netns) {
    let (host, world) = (Netns::new(), Netns::new());
    host.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &world.name,
    ]);
    host.ip(&["addr", "add", &format!("{uplink_ip}/24"), "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    host.ip(&["route", "add", "default", "via", world_ips[0]]);
    for a in world_ips {
        world.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    world.ip(&["link", "set", "eth0", "up"]);
    (host, world)
}
