//! Memory of processes and of the host, from procfs.
//!
//! * `VmRSS` (`/proc/<pid>/status`): pages of the process resident in RAM, shared ones counted fully.
//! * `Pss` (`/proc/<pid>/smaps_rollup`): resident pages with each shared page divided by the number of
//!   processes mapping it, so the PSS of several VMMs adds up to what they really cost together.
//! * `MemAvailable` (`/proc/meminfo`): the kernel's estimate of memory available for new work; its drop
//!   while VMs run is the host-wide cost, including page cache and kernel allocations no RSS shows.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `Pss` of all mappings.
    pub pss_kib: u64,
}

impl ProcessMemory {
    /// Reads the memory of process `pid`.
    pub fn of(pid: u32) -> std::io::Result<ProcessMemory> {
        Self::read(&Path::new("/proc").join(pid.to_string()))
    }

    /// Reads the memory of the process whose procfs directory is `proc_dir` (e.g. `/proc/self`).
    pub fn read(proc_dir: &Path) -> std::io::Result<ProcessMemory> {
        let status = std::fs::read_to_string(proc_dir.join("status"))?;
        let rollup = std::fs::read_to_string(proc_dir.join("smaps_rollup"))?;
        let missing = |what: &str, file: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no {what} line in {}", proc_dir.join(file).display()),
            )
        };
        Ok(ProcessMemory {
            rss_kib: kib_field(&status, "VmRSS").ok_or_else(|| missing("VmRSS", "status"))?,
            pss_kib: kib_field(&rollup, "Pss").ok_or_else(|| missing("Pss", "smaps_rollup"))?,
        })
    }
}

/// `MemAvailable` of the host in KiB.
pub fn mem_available_kib() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    kib_field(&text, "MemAvailable").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no MemAvailable line in /proc/meminfo",
        )
    })
}

/// The value of a `Name:   1234 kB` line (procfs style) in KiB. Only an exact name matches, so `Pss`
/// does not pick up `Pss_Anon`.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key.trim() != name {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_fields() {
        let rollup = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\n\
                      Rss:              123456 kB\n\
                      Pss:               65432 kB\n\
                      Pss_Anon:          60000 kB\n";
        assert_eq!(kib_field(rollup, "Pss"), Some(65432));
        assert_eq!(kib_field(rollup, "Rss"), Some(123456));
        assert_eq!(kib_field(rollup, "Pss_Anon"), Some(60000));
        assert_eq!(kib_field(rollup, "Swap"), None);
        assert_eq!(kib_field("Pss: lots kB\n", "Pss"), None);
        assert_eq!(kib_field("Pss: 3 MB\n", "Pss"), None);
    }

    #[test]
    fn reads_own_process_and_host() {
        let me = ProcessMemory::read(Path::new("/proc/self")).unwrap();
        assert!(me.rss_kib > 0, "{me:?}");
        assert!(me.pss_kib > 0 && me.pss_kib <= me.rss_kib + 4, "{me:?}");
        let by_pid = ProcessMemory::of(std::process::id()).unwrap();
        assert!(by_pid.rss_kib > 0);
        assert!(mem_available_kib().unwrap() > 0);
        assert!(ProcessMemory::of(u32::MAX).is_err());
        assert_eq!(mib(2048), 2.0);
    }
}
