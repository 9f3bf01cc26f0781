//! One-time guest setup of stage 2: mounts, console, host name, authorised key, SSH server.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::sys;

/// The SSH server of the default image (dropbear; see the image builder for why).
pub const DROPBEAR: &str = "/usr/sbin/dropbear";

/// Mounts the API filesystems that are not mounted yet (stage 1 moved /dev, /proc and /sys already when
/// an initramfs ran). Failures are logged: a guest without /dev/shm still serves.
pub fn mount_all() {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let table: &[(&str, &str, &str, libc::c_ulong, Option<&str>)] = &[
        ("/proc", "proc", "proc", nodev | libc::MS_NOEXEC, None),
        ("/sys", "sysfs", "sysfs", nodev | libc::MS_NOEXEC, None),
        (
            "/dev",
            "devtmpfs",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        ("/dev/shm", "tmpfs", "tmpfs", nodev, Some("mode=1777")),
        ("/run", "tmpfs", "tmpfs", nodev, Some("mode=0755")),
        ("/tmp", "tmpfs", "tmpfs", nodev, Some("mode=1777")),
    ];
    for &(target, source, fstype, flags, data) in table {
        let t = Path::new(target);
        if sys::is_mount_point(t) {
            continue;
        }
        if let Err(e) =
            fs::create_dir_all(t).and_then(|_| sys::mount(source, t, Some(fstype), flags, data))
        {
            crate::log(&format!("mount {target}: {e}"));
        }
    }
}

/// Makes `/` writable unless `ro` was asked for: without an initramfs the kernel mounts the root
/// read-only unless `rw` is given.
pub fn make_root_writable(read_only: bool) {
    if !read_only && root_is_read_only() {
        if let Err(e) = sys::mount("none", Path::new("/"), None, libc::MS_REMOUNT, None) {
            crate::log(&format!("remount / read-write: {e}"));
        }
    }
}

/// True if `/` is mounted read-only.
pub fn root_is_read_only() -> bool {
    // SAFETY: statvfs is plain data, filled by the kernel.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// Makes sure fds 0-2 are open (the kernel opens /dev/console for init only if the root it starts from
/// has that node; an ext4 root made without privileges has not).
pub fn ensure_stdio() {
    // SAFETY: F_GETFD on any integer is harmless.
    if unsafe { libc::fcntl(0, libc::F_GETFD) } >= 0 {
        return;
    }
    // SAFETY: opening a constant path; dup2 onto the standard descriptors.
    unsafe {
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for std_fd in 0..3 {
                libc::dup2(fd, std_fd);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// Sets the host name from the parameter, else from `/etc/hostname`, else `smolvm`; a name given on
/// the command line is also written to `/etc/hostname` and `/etc/hosts` so tools agree.
pub fn hostname(param: Option<&str>) {
    let from_file = fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| crate::cmdline::valid_hostname(s));
    let name = param
        .map(str::to_string)
        .or(from_file.clone())
        .unwrap_or_else(|| "smolvm".to_string());
    if let Err(e) = sys::sethostname(&name) {
        crate::log(&format!("sethostname {name}: {e}"));
    }
    if param.is_some() && from_file.as_deref() != Some(name.as_str()) {
        let hosts =
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n");
        if let Err(e) = fs::write("/etc/hostname", format!("{name}\n"))
            .and_then(|_| fs::write("/etc/hosts", hosts))
        {
            crate::log(&format!("write /etc/hostname: {e}"));
        }
    }
}

/// Appends `line` to root's `authorized_keys` unless already present (0700 dir, 0600 file).
pub fn install_authorized_key(line: &str) -> io::Result<()> {
    install_key_at(Path::new("/root/.ssh"), line)
}

fn install_key_at(dir: &Path, line: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let file = dir.join("authorized_keys");
    let existing = fs::read_to_string(&file).unwrap_or_default();
    if existing.lines().any(|l| l.trim() == line.trim()) {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&file)?;
    let sep = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    f.write_all(format!("{sep}{line}\n").as_bytes())
}

/// Starts dropbear in the foreground (`-F`, so PID 1 reaps and restarts it), logging to the console
/// (`-E`). `-R` creates a host key on the first connection if the image has none: the host normally
/// writes per-VM keys into the disk before boot, so no key is generated at each boot.
pub fn start_sshd() -> io::Result<Option<u32>> {
    if !Path::new(DROPBEAR).exists() {
        return Ok(None);
    }
    let mut cmd = Command::new(DROPBEAR);
    cmd.args(["-F", "-E", "-R", "-p", "22"])
        .stdin(Stdio::null());
    reset_signals(&mut cmd);
    let child = cmd.spawn()?;
    Ok(Some(child.id()))
}

/// Waits until something listens on TCP `port` (IPv4 or IPv6), polling `/proc/net/tcp{,6}`, for at
/// most `limit`. True if it does. Used so that `Ready` means the SSH server accepts: a connection made
/// right after `start` returns must not be reset because dropbear has not bound its socket yet.
pub fn wait_listening(port: u16, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let found = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .any(|f| fs::read_to_string(f).is_ok_and(|t| listening_on(&t, port)));
        if found {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Whether a `/proc/net/tcp`-format table has a socket in state LISTEN (`0A`) on local `port`.
fn listening_on(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        local.ends_with(&want) && state == "0A"
    })
}

/// Makes a child start with no blocked signals and SIGPIPE at its default. `std::process::Command` no
/// longer resets either, and a child would otherwise inherit PID 1's blocked set (measured: dropbear
/// then ignored SIGTERM at power off) and the Rust runtime's ignored SIGPIPE (`yes | head` in an SSH
/// session would never end).
pub fn reset_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls async-signal-safe functions (sigemptyset, pthread_sigmask,
    // signal) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n\
           0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n\
           1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0\n";
        assert!(listening_on(table, 22));
        // 8080 only has an established connection, not a listener.
        assert!(!listening_on(table, 8080));
        assert!(!listening_on(table, 2));
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A\n";
        assert!(listening_on(v6, 22));
        assert!(!listening_on("header only\n", 22));
    }

    #[test]
    fn key_is_appended_once_with_strict_modes() {
        let t = std::env::temp_dir().join(format!("smolvm-agent-key-{}", std::process::id()));
        let dir = t.join(".ssh");
        install_key_at(&dir, "ssh-ed25519 AAAA a@b").unwrap();
        install_key_at(&dir, "ssh-ed25519 AAAA a@b").unwrap();
        install_key_at(&dir, "ssh-ed25519 BBBB c@d").unwrap();
        let text = fs::read_to_string(dir.join("authorized_keys")).unwrap();
        assert_eq!(text, "ssh-ed25519 AAAA a@b\nssh-ed25519 BBBB c@d\n");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("authorized_keys")), 0o600);
        fs::remove_dir_all(&t).unwrap();
    }
}
