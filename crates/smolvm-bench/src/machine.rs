//! The machine a benchmark ran on, recorded with its figures: numbers mean little without it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use smolvm::HostCapabilities;

/// Where and when the figures were taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`model name` of /proc/cpuinfo).
    pub cpu_model: Option<String>,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Host memory in MiB.
    pub mem_total_mib: Option<u64>,
    /// Host kernel release.
    pub kernel: Option<String>,
    /// Accelerator QEMU uses: `kvm` or `tcg`.
    pub accelerator: String,
    /// Why KVM is not used, when it is not.
    pub kvm_note: Option<String>,
    /// QEMU version, if installed.
    pub qemu_version: Option<String>,
    /// Firecracker version, if installed.
    pub firecracker_version: Option<String>,
    /// smolvm's version.
    pub smolvm_version: String,
    /// Filesystem type of the data directory (decides reflink vs. sparse copy of disks).
    pub data_dir_fs: Option<String>,
    /// Start of the run, UTC, ISO 8601.
    pub date: String,
    /// Host load averages (1, 5, 15 min) when the run started: other work on a shared machine.
    pub loadavg_start: Option<[f64; 3]>,
    /// Host load averages when the run ended.
    pub loadavg_end: Option<[f64; 3]>,
}

impl Machine {
    /// Describes this host; `data_dir` is where VM disks were made.
    pub fn detect(caps: &HostCapabilities, data_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: cpu_model(&cpuinfo),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_mib: super::mem::kib_field(&meminfo, "MemTotal").map(|k| k / 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            accelerator: caps.accelerator.as_str().to_string(),
            kvm_note: caps.kvm.reason.clone(),
            qemu_version: caps
                .tools
                .qemu_system
                .as_ref()
                .and_then(|t| t.version.clone()),
            firecracker_version: caps
                .tools
                .firecracker
                .as_ref()
                .and_then(|t| t.version.clone()),
            smolvm_version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir_fs: fs_type(data_dir),
            date: iso8601_utc(SystemTime::now()),
            loadavg_start: loadavg(),
            loadavg_end: None,
        }
    }
}

/// The host's load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// Parses the first three fields of /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The first `model name` in /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// The filesystem type of `path` (from its statfs magic), for the common ones.
fn fs_type(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as u64;
    Some(
        match magic {
            0xEF53 => "ext4",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x0102_1994 => "tmpfs",
            0x794C_7630 => "overlayfs",
            0x6573_5546 => "fuse",
            _ => return Some(format!("0x{magic:x}")),
        }
        .to_string(),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `t` (UTC).
pub fn iso8601_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYYMMDD-HHMMSS` for file names.
pub fn file_stamp(t: SystemTime) -> String {
    iso8601_utc(t)
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string()
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z (a leap day).
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(iso8601_utc(t), "2024-02-29T12:34:56Z");
        assert_eq!(file_stamp(t), "20240229-123456");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601_utc(t), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn loadavg_fields() {
        assert_eq!(
            parse_loadavg("0.50 1.25 2.00 3/456 789\n"),
            Some([0.5, 1.25, 2.0])
        );
        assert_eq!(parse_loadavg("x"), None);
        assert!(loadavg().is_some());
    }

    #[test]
    fn cpu_model_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn detects_this_host() {
        let caps = HostCapabilities::detect();
        let m = Machine::detect(&caps, Path::new("/"));
        assert!(m.cores >= 1);
        assert!(m.kernel.is_some());
        assert!(m.data_dir_fs.is_some());
        assert!(m.date.ends_with('Z'));
    }
}
