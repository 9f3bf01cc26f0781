//! CPU and process facts read from `/proc` and `/sys`: virtualization flags, TSC frequency, privileges.

/// `CAP_NET_ADMIN` capability number (linux/capability.h).
pub(crate) const CAP_NET_ADMIN: u32 = 12;

/// The hardware virtualization flag (`vmx` or `svm`) in `/proc/cpuinfo` text, if any CPU lists it.
pub(crate) fn virt_flag(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(_, flags)| flags.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm")
        .map(str::to_string)
}

/// The first `cpu MHz` value of `/proc/cpuinfo` text, converted to kHz and rounded.
pub(crate) fn cpu_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split_once(':'))
        .find_map(|(_, v)| v.trim().parse().ok())?;
    (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// The host TSC frequency in kHz: the kernel's exact value from sysfs when it exports one, else the
/// `cpu MHz` of `/proc/cpuinfo`. Under TCG the guest's TSC ticks at the host's rate, so this is what the
/// guest kernel is told with `tsc_early_khz` (calibrating against an emulated PIT can hang under load).
pub(crate) fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse::<u64>() {
            if v > 0 {
                return Some(v);
            }
        }
    }
    cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// The effective capability mask (`CapEff`) from `/proc/<pid>/status` text.
pub(crate) fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// True if the capability mask holds capability number `cap`.
pub(crate) fn has_cap(mask: u64, cap: u32) -> bool {
    cap < 64 && mask & (1u64 << cap) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\ncpu MHz\t\t: 2445.426\nflags\t\t: fpu vme sse2 hypervisor\n\n\
                           processor\t: 1\ncpu MHz\t\t: 2445.426\nflags\t\t: fpu vme sse2 hypervisor\n";

    #[test]
    fn flags_and_frequency() {
        assert_eq!(virt_flag(CPUINFO), None);
        assert_eq!(virt_flag("flags\t: fpu vmx sse\n").as_deref(), Some("vmx"));
        assert_eq!(virt_flag("flags\t: fpu svm\n").as_deref(), Some("svm"));
        // A flag merely containing the letters does not count.
        assert_eq!(virt_flag("flags\t: vmxx svm_lock\n"), None);
        assert_eq!(cpu_khz(CPUINFO), Some(2_445_426));
        assert_eq!(cpu_khz("cpu MHz : 1999.9996\n"), Some(2_000_000));
        assert_eq!(cpu_khz("nothing"), None);
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let mask = cap_eff(status).unwrap();
        assert!(has_cap(mask, CAP_NET_ADMIN));
        let none = cap_eff("CapEff:\t0000000000000000\n").unwrap();
        assert!(!has_cap(none, CAP_NET_ADMIN));
        assert!(has_cap(1 << 12, CAP_NET_ADMIN));
        assert!(!has_cap(u64::MAX, 64));
        assert_eq!(cap_eff("garbage"), None);
    }
}
