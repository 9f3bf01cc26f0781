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

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The header line's path or pseudo-name (`[heap]`), empty for anonymous memory.
    pub name: String,
    /// Permissions (`rw-p`, `rwxp`, ...).
    pub perms: String,
    /// Mapped size in KiB.
    pub size_kib: u64,
    /// Resident part in KiB.
    pub rss_kib: u64,
}

/// Parses `/proc/<pid>/smaps` text into its mappings.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        // A header is `start-end perms offset dev inode [name]`; field lines are `Key: value kB`.
        if !first.ends_with(':') && first.contains('-') {
            let perms = parts.next().unwrap_or("").to_string();
            out.push(Mapping {
                name: parts.skip(3).collect::<Vec<_>>().join(" "),
                perms,
                size_kib: 0,
                rss_kib: 0,
            });
        } else if let Some(m) = out.last_mut() {
            match first {
                "Size:" => m.size_kib = kib_field(line, "Size").unwrap_or(0),
                "Rss:" => m.rss_kib = kib_field(line, "Rss").unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// Where a VMM's resident memory is: in the guest's RAM block or elsewhere (QEMU itself, TCG's
/// translation cache, libraries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmMemorySplit {
    /// Resident part of the anonymous mapping that holds guest RAM, in KiB.
    pub guest_ram_rss_kib: u64,
    /// Everything else resident, in KiB.
    pub other_rss_kib: u64,
    /// Of `other_rss_kib`: anonymous memory (QEMU's heap, TCG's translation cache, stacks).
    pub other_anon_rss_kib: u64,
    /// The three most resident other mappings: (name or `anon`, size KiB, resident KiB).
    pub top_other: Vec<(String, u64, u64)>,
}

/// Splits the mappings of a VMM with `guest_mib` of guest RAM. The RAM block is the anonymous mapping
/// sized like guest memory (QEMU may pad it by up to its alignment, allowed up to 4 MiB), the most
/// resident one if several qualify.
pub fn split_vmm_memory(maps: &[Mapping], guest_mib: u64) -> VmmMemorySplit {
    let want = guest_mib * 1024;
    let ram = maps
        .iter()
        .enumerate()
        .filter(|(_, m)| m.name.is_empty() && m.size_kib >= want && m.size_kib <= want + 4096)
        .max_by_key(|(_, m)| m.rss_kib)
        .map(|(i, _)| i);
    let guest_ram_rss_kib = ram.map_or(0, |i| maps[i].rss_kib);
    let others = maps.iter().enumerate().filter(|(i, _)| Some(*i) != ram);
    let other_rss_kib = others.clone().map(|(_, m)| m.rss_kib).sum();
    let other_anon_rss_kib = others
        .clone()
        .filter(|(_, m)| m.name.is_empty() || m.name.starts_with('['))
        .map(|(_, m)| m.rss_kib)
        .sum();
    let mut sorted: Vec<&Mapping> = others.map(|(_, m)| m).collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.rss_kib));
    let top_other = sorted
        .into_iter()
        .take(3)
        .map(|m| {
            let name = if m.name.is_empty() {
                format!("anon {}", m.perms)
            } else {
                m.name.clone()
            };
            (name, m.size_kib, m.rss_kib)
        })
        .collect();
    VmmMemorySplit {
        guest_ram_rss_kib,
        other_rss_kib,
        other_anon_rss_kib,
        top_other,
    }
}

/// Reads and splits the memory of VMM `pid` (see [`split_vmm_memory`]).
pub fn vmm_memory_split(pid: u32, guest_mib: u64) -> std::io::Result<VmmMemorySplit> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(split_vmm_memory(&parse_smaps(&text), guest_mib))
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

/// CPU time (user + system) a process has used so far, in milliseconds.
pub fn cpu_time_ms(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_cpu_ticks(&text).map(|t| t as f64 * 1000.0 / hz.max(1) as f64)
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat` text, in clock ticks. Fields are counted from
/// the last `)`, since the command name may hold spaces and parentheses.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm, field 3 (state) is index 0, so field 14 is index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
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
    fn cpu_ticks() {
        let stat = "42 (qemu (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 987 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_time_ms(std::process::id()).is_some());
    }

    #[test]
    fn splits_guest_ram_from_the_rest() {
        let smaps = "\
55d0a000-55d0b000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               40000 kB
7f1000000000-7f1040000000 rwxp 00000000 00:00 0
Size:            1048576 kB
Rss:               30000 kB
7ffd0000-7ffd1000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
";
        let maps = parse_smaps(smaps);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].name, "/usr/bin/qemu-system-x86_64");
        assert_eq!(maps[3].name, "[stack]");
        let s = split_vmm_memory(&maps, 128);
        assert_eq!(s.guest_ram_rss_kib, 40000);
        assert_eq!(s.other_rss_kib, 30020);
        assert_eq!(s.other_anon_rss_kib, 30016);
        assert_eq!(s.top_other[0], ("anon rwxp".into(), 1048576, 30000));
        assert_eq!(maps[0].perms, "r-xp");
        assert_eq!(s.top_other.len(), 3);
        // No mapping of the guest's size: everything is "other".
        assert_eq!(split_vmm_memory(&maps, 512).guest_ram_rss_kib, 0);
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
        let own = vmm_memory_split(std::process::id(), 1).unwrap();
        assert!(own.other_rss_kib > 0);
        assert_eq!(mib(2048), 2.0);
    }
}
