//! Running part of the benchmark inside a private network namespace.
//!
//! Namespaces belong to threads: a thread that calls `unshare(CLONE_NEWNET)` moves alone into a fresh,
//! empty namespace, and every process it spawns afterwards (QEMU, `ip`, `nft`, `ssh`) is born there. So a
//! dedicated thread can create TAP devices and NAT rules and talk to a guest without touching the host's
//! network, and the namespace disappears by itself when the thread and its processes are gone: nothing
//! named is left to remove, even after a crash.

use std::process::Command;

/// Runs `f` on a new thread inside a new, empty network namespace whose loopback is up. The namespace
/// ends with the thread, once the processes started in it are gone (`f` must stop them).
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare affects only the calling thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let out = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "ip link set lo up: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> (String, std::path::PathBuf) {
        let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), ns)
    }

    #[test]
    fn thread_gets_an_empty_namespace() {
        let e2e = std::env::var("SMOLVM_E2E").as_deref() == Ok("1");
        let (inside, ns_inside) = match in_private_netns(links) {
            Ok(l) => l,
            Err(e) if !e2e => {
                eprintln!("skipping: cannot create a network namespace ({e}); SMOLVM_E2E=1 makes this fail");
                return;
            }
            Err(e) => panic!("SMOLVM_E2E=1 but no network namespace: {e}"),
        };
        let names: Vec<&str> = inside
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .collect();
        assert_eq!(names, vec!["lo"], "{inside}");
        assert!(inside.contains("UP"), "{inside}");
        // This thread stayed in its own namespace.
        assert_ne!(links().1, ns_inside);
    }
}
