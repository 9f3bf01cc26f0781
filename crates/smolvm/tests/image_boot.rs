//! End to end: build the default image into a temporary data directory and boot it with plain QEMU
//! (TCG, microvm) until the agent's Ready frame arrives on the virtio-serial socket.
//!
//! Runs when `SMOLVM_E2E=1` (then a missing prerequisite is a failure); otherwise each test prints why
//! it skips. Needs: apt (the kernel package), busybox-static, dropbear-bin, e2fsprogs,
//! qemu-system-x86, openssh-client, and the static agent (`scripts/build-agent.sh`).
//!
//! Network rule: the only network is QEMU's user-mode stack with `restrict=on` (the guest cannot reach
//! anything outside QEMU) and a port forward on 127.0.0.1.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use smolvm::AgentClient;
use smolvm::{GuestImage, ImageBuilder, ImageOptions, ImageProgress as Progress};
use smolvm_protocol::{Ready, PROTOCOL_VERSION};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn e2e(test: &str) -> bool {
    if std::env::var("SMOLVM_E2E").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping {test}: set SMOLVM_E2E=1 to build the image and boot it with QEMU");
    false
}

/// The image shared by every test of this run, built once into a temporary data directory.
fn image() -> &'static (tempfile::TempDir, GuestImage) {
    static IMAGE: OnceLock<(tempfile::TempDir, GuestImage)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let data = tempfile::tempdir().expect("temp dir");
        let start = Instant::now();
        let img = ImageBuilder::new(data.path())
            .build(&ImageOptions {
                progress: Progress::Quiet,
                ..ImageOptions::default()
            })
            .unwrap_or_else(|e| panic!("building the default image failed: {}", chain(&e)));
        eprintln!("image built in {:.2}s", start.elapsed().as_secs_f64());
        report_sizes(&img);
        (data, img)
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn report_sizes(img: &GuestImage) {
    use std::os::unix::fs::MetadataExt;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for (what, p) in [
        ("kernel (bzImage)", &img.kernel),
        ("vmlinux", &img.kernel_elf),
        ("initrd", &img.initrd),
        ("rootfs", &img.rootfs),
    ] {
        let m = std::fs::metadata(p).expect("image file");
        eprintln!(
            "  {what:<17} {:>8.2} MiB apparent, {:>8.2} MiB on disk",
            mib(m.len()),
            mib(m.blocks() * 512)
        );
    }
}

/// One QEMU process; killed by pid when dropped.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    fn boot(img: &GuestImage, netdev: Option<&str>, cmdline_extra: &str) -> Vm {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.ext4");
        // A private copy, as smolvm's isolated disk mode makes (sparse).
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&img.rootfs)
            .arg(&disk)
            .status()
            .expect("cp");
        assert!(st.success());
        let append = format!(
            "{} tsc_early_khz={} {cmdline_extra}",
            img.boot_args,
            host_khz()
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,pit=on,acpi=on",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "2",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("console.log").display()))
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .arg("-append")
        .arg(&append)
        .args(["-device", "virtio-rng-device"])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args(["-device", "virtio-serial-device"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            dir.path().join("agent.sock").display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=agent,name=org.smolvm.agent",
        ])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.path().join("qmp.sock").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(n) = netdev {
            cmd.args(["-netdev", n, "-device", "virtio-net-device,netdev=n0"]);
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .expect("start qemu-system-x86_64 (install qemu-system-x86)");
        Vm {
            child,
            dir,
            started,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.path("console.log")).unwrap_or_default()
    }

    /// Connects to a QEMU-created socket, retrying until QEMU has made it.
    fn connect(&mut self, name: &str) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = UnixStream::connect(self.path(name)) {
                return s;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("QEMU exited ({st}) before creating {name}");
            }
            assert!(Instant::now() < deadline, "QEMU never created {name}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Connects to the agent channel and greets the agent (Hello -> Ready).
    fn ready(&mut self) -> (AgentClient, Ready) {
        let s = self.connect("agent.sock");
        let client = AgentClient::from_stream(s, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("no Ready ({e}); console:\n{}", self.console()));
        let ready = client.ready().clone();
        (client, ready)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// Boots are serialised so their timings mean something on a small machine.
fn boot_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn boots_to_ready_reconnects_and_powers_off() {
    if !e2e("boots_to_ready_reconnects_and_powers_off") {
        return;
    }
    let img = &image().1;
    let _l = boot_lock();
    let mut vm = Vm::boot(img, None, "");
    let (s, ready) = vm.ready();
    let took = vm.started.elapsed();
    let stages: Vec<String> = ready
        .boot_stages
        .iter()
        .map(|s| format!("{}={:.3}s", s.name, s.micros as f64 / 1e6))
        .collect();
    eprintln!(
        "QEMU start -> Ready: {:.3}s (guest clock: {})",
        took.as_secs_f64(),
        stages.join(", ")
    );
    assert_eq!(ready.protocol_version, PROTOCOL_VERSION);
    for want in [
        "init_start",
        "modules_loaded",
        "mounts_done",
        "sshd_started",
        "sshd_listening",
        // The agent served one command to itself (server::warm) while PID 1 still worked.
        "exec_warm",
        "ready",
    ] {
        assert!(
            ready.boot_stages.iter().any(|s| s.name == want),
            "stage {want} missing: {stages:?}"
        );
    }
    // The agent started early, but `Ready` still came after the SSH server listened (the gate), and
    // the stages PID 1 and the agent recorded are reported in time order.
    let at = |name: &str| {
        ready
            .boot_stages
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .micros
    };
    assert!(at("ready") >= at("sshd_listening"), "{stages:?}");
    assert!(
        ready
            .boot_stages
            .windows(2)
            .all(|w| w[0].micros <= w[1].micros),
        "{stages:?}"
    );
    // The virtio-serial channel serves every new host connection, even an immediate reconnect (the
    // guest cannot see such a flap through read(); each host's Hello carries a new nonce instead).
    assert_eq!(s.run("echo hi", None).unwrap().stdout, "hi\n");
    drop(s);
    for i in 0..5 {
        let (s, again) = vm.ready();
        assert_eq!(again.protocol_version, PROTOCOL_VERSION, "reconnect {i}");
        assert_eq!(
            s.run(&format!("echo {i}"), None).unwrap().stdout,
            format!("{i}\n")
        );
        drop(s);
    }
    // ACPI power button -> the agent powers the guest off cleanly -> QEMU exits by itself.
    let mut q = vm.connect("qmp.sock");
    q.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 4096];
    let _ = q.read(&mut buf).expect("QMP greeting");
    q.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    let _ = q.read(&mut buf).expect("QMP capabilities reply");
    let asked = Instant::now();
    q.write_all(b"{\"execute\":\"system_powerdown\"}\n")
        .unwrap();
    let deadline = asked + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = vm.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "guest did not power off; console:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "power button -> QEMU exit: {:.3}s",
        asked.elapsed().as_secs_f64()
    );
    assert!(status.success(), "QEMU exit status {status}");
    let console = vm.console();
    assert!(console.contains("smolvm-agent: powering off"), "{console}");
    assert!(
        !console.contains("still running after SIGTERM"),
        "{console}"
    );
}

#[test]
fn root_logs_in_by_key_with_network_from_the_command_line() {
    if !e2e("root_logs_in_by_key_with_network_from_the_command_line") {
        return;
    }
    let img = &image().1;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .expect("ssh-keygen (install openssh-client)");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22");
    let cmdline = format!(
        "smolvm.ip=10.0.2.15/24 smolvm.gw=10.0.2.2 smolvm.hostname=e2e-vm smolvm.dns=10.0.2.3 \
         smolvm.authorized_key={}",
        base64(public.trim().as_bytes())
    );
    let _l = boot_lock();
    let mut vm = Vm::boot(img, Some(&netdev), &cmdline);
    let (_chan, _ready) = vm.ready();
    let ready_at = vm.started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-i")
            .arg(&key)
            .arg("-p")
            .arg(port.to_string())
            .arg("root@127.0.0.1")
            .arg("echo ok:$(hostname):$(id -u); ip -4 route show default; cat /etc/resolv.conf")
            .output()
            .expect("ssh (install openssh-client)");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}\nconsole:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.console()
    );
    eprintln!(
        "QEMU start -> Ready {:.3}s, -> first SSH command done {:.3}s",
        ready_at.as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );
    assert!(stdout.contains("ok:e2e-vm:0"), "{stdout}");
    assert!(stdout.contains("default via 10.0.2.2"), "{stdout}");
    assert!(stdout.contains("nameserver 10.0.2.3"), "{stdout}");
}

#[test]
fn rebuild_with_the_same_inputs_is_cached_and_password_goes_to_shadow() {
    if !e2e("rebuild_with_the_same_inputs_is_cached_and_password_goes_to_shadow") {
        return;
    }
    let (data, img) = image();
    let builder = ImageBuilder::new(data.path());
    let start = Instant::now();
    let again = builder
        .build(&ImageOptions {
            progress: Progress::Quiet,
            ..ImageOptions::default()
        })
        .expect("cached build");
    eprintln!("cached build: {:.3}s", start.elapsed().as_secs_f64());
    assert!(again.cached);
    assert_eq!(again.fingerprint, img.fingerprint);
    assert_eq!(builder.list().unwrap().len(), 1);

    let pw = builder
        .build(&ImageOptions {
            name: "with-password".into(),
            ssh_password: Some("s3cret".into()),
            progress: Progress::Quiet,
            ..ImageOptions::default()
        })
        .expect("password image");
    assert!(!pw.cached && pw.ssh_password);
    assert_ne!(pw.fingerprint, img.fingerprint);
    let shadow = debugfs_cat(&pw.rootfs, "/etc/shadow");
    assert!(shadow.starts_with("root:$6$"), "{shadow}");
    let keys = debugfs_cat(&img.rootfs, "/etc/passwd");
    assert!(keys.starts_with("root:x:0:0:"), "{keys}");
    assert_eq!(builder.list().unwrap().len(), 2);
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs (install e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
