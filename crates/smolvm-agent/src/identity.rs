//! Applying a new identity after a restore from a snapshot (see `smolvm_protocol::Identity`): fresh
//! kernel randomness first (nothing else may draw from the cloned state once the host has spoken), then
//! the wall clock, the host name and the network.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use smolvm_protocol::{ErrorKind, ErrorReply, Identity, DROPBEAR_HOST_KEY_PATH};

/// How long the SSH server may take to come back with a new host key.
const SSH_RESTART_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old SSH server gets to exit on SIGTERM before SIGKILL.
const SSH_TERM_GRACE: Duration = Duration::from_millis(500);
/// Where the guest's SSH server listens.
const SSH_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 22);

/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool and credit it (needs CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's CRNG from the input pool now (Linux >= 4.17).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Applies `id`; the error names every step that failed (later steps still run).
pub fn apply(id: &Identity) -> Result<(), ErrorReply> {
    let mut failures = Vec::new();
    if let Err(e) = reseed(&id.entropy) {
        failures.push(format!("reseed the random generator: {e}"));
    }
    if let Err(e) = set_clock(id.unix_time_ns) {
        failures.push(format!("set the clock: {e}"));
    }
    if let Err(e) = crate::sys::sethostname(&id.hostname) {
        failures.push(format!("set the host name: {e}"));
    } else {
        let hosts = format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost\n",
            id.hostname
        );
        let _ = std::fs::write("/etc/hostname", format!("{}\n", id.hostname))
            .and_then(|_| std::fs::write("/etc/hosts", hosts));
    }
    if let Some(net) = &id.net {
        if let Err(e) = crate::net::reconfigure(net) {
            failures.push(format!("reconfigure the network: {e}"));
        }
    }
    if let Some(key) = &id.ssh_host_key {
        if let Err(e) = replace_host_key(key) {
            failures.push(format!("install the new SSH host key: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ErrorReply::new(ErrorKind::Io, failures.join("; ")))
    }
}

/// Mixes `bytes` into the kernel's input pool (credited as full entropy: they come from the host's
/// own CSPRNG) and forces the CRNG to reseed, so the next `getrandom`, `/dev/urandom` read or UUID
/// differs from every other clone of the snapshot.
fn reseed(bytes: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = bytes.len().div_ceil(4);
    let mut info: Vec<u32> = vec![0; 2 + words];
    let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    info[0] = bits as u32;
    info[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: info is a valid rand_pool_info with buf_size bytes of payload after the header.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the new Dropbear host key atomically and restarts the SSH server (PID 1 restarts it when it
/// exits), then waits until the new server listens, so the first SSH connection after `Done` sees the
/// new key.
fn replace_host_key(key: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::path::Path::new(DROPBEAR_HOST_KEY_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let old = dropbear_listeners();
    if old.is_empty() {
        return Ok(());
    }
    for pid in &old {
        crate::sys::kill(*pid, libc::SIGTERM)?;
    }
    let start = Instant::now();
    let deadline = start + SSH_RESTART_TIMEOUT;
    let mut killed = false;
    loop {
        let gone = old
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        // A server restored from a snapshot taken right after boot may not have reached its main loop
        // (measured: SIGTERM caught, process asleep): make sure it goes.
        if !gone && !killed && start.elapsed() >= SSH_TERM_GRACE {
            for pid in &old {
                let _ = crate::sys::kill(*pid, libc::SIGKILL);
            }
            killed = true;
        }
        if gone && TcpStream::connect_timeout(&SSH_ADDR.into(), Duration::from_millis(100)).is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = if gone {
                format!(
                    "nothing listens on {SSH_ADDR} (listeners now: {:?})",
                    dropbear_listeners()
                )
            } else {
                let states: Vec<String> = old
                    .iter()
                    .map(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/status"))
                            .unwrap_or_default()
                            .lines()
                            .filter(|l| {
                                l.starts_with("State")
                                    || l.starts_with("Sig")
                                    || l.starts_with("Shd")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .collect();
                format!("the old server did not exit: {states:?}")
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the SSH server did not come back with the new key within {}s: {why}",
                    SSH_RESTART_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Dropbear's listening process(es): `dropbear` children of PID 1 (its per-connection children have
/// another parent).
fn dropbear_listeners() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if comm == "dropbear" && ppid == Some(1) {
            out.push(pid);
        }
    }
    out
}

fn set_clock(unix_time_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
