//! Kernel module loading for the initramfs stage, driven by the load list the image builder writes.
//!
//! List format (one module per line, dependencies first, `#` comments):
//! `<file.ko> <condition>[,<condition>...]`; a module is loaded if any condition holds:
//! * `always`
//! * `pci`: the machine has PCI devices (QEMU microvm with `pci=off` and Firecracker have none)
//! * `acpi`: the kernel found ACPI tables
//! * `virtio:<id>`: a virtio device with that device id exists (checked after the transports loaded):
//!   1 net, 2 block, 3 console, 4 entropy, 19 vsock
//!
//! Loading only what the machine has keeps the initramfs stage short: under emulation each module costs
//! milliseconds (relocation, signature check, init).

use std::io;
use std::path::Path;

/// One entry of the load list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name relative to the list's directory.
    pub file: String,
    /// Load if any of these holds.
    pub conditions: Vec<Condition>,
}

/// When a module is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// PCI devices exist.
    Pci,
    /// ACPI tables exist.
    Acpi,
    /// A virtio device with this id exists.
    Virtio(u32),
}

/// Parses the list; returns the entries and the malformed lines (reported, then skipped).
pub fn parse_list(text: &str) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(file), Some(conds), None) = (parts.next(), parts.next(), parts.next()) else {
            bad.push(line.to_string());
            continue;
        };
        let conditions: Option<Vec<Condition>> = conds.split(',').map(parse_condition).collect();
        match conditions {
            Some(conditions) if !file.contains('/') => entries.push(Entry {
                file: file.to_string(),
                conditions,
            }),
            _ => bad.push(line.to_string()),
        }
    }
    (entries, bad)
}

fn parse_condition(s: &str) -> Option<Condition> {
    match s {
        "always" => Some(Condition::Always),
        "pci" => Some(Condition::Pci),
        "acpi" => Some(Condition::Acpi),
        _ => s
            .strip_prefix("virtio:")
            .and_then(|id| id.parse().ok())
            .map(Condition::Virtio),
    }
}

/// Evaluates conditions against sysfs (`sys` is normally `/sys`).
pub fn condition_holds(c: Condition, sys: &Path) -> bool {
    match c {
        Condition::Always => true,
        Condition::Pci => dir_non_empty(&sys.join("bus/pci/devices")),
        Condition::Acpi => sys.join("firmware/acpi/tables").is_dir(),
        Condition::Virtio(id) => virtio_ids(sys).contains(&id),
    }
}

fn dir_non_empty(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
}

/// Device ids of the present virtio devices (`/sys/bus/virtio/devices/*/device`, e.g. `0x0002`).
pub fn virtio_ids(sys: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(sys.join("bus/virtio/devices")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let s = std::fs::read_to_string(e.ok()?.path().join("device")).ok()?;
        u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
    })
    .collect()
}

/// Loads every needed module of the list in `dir`. Failures are returned per module and do not stop the
/// others (a missing network driver must not prevent the disk from mounting).
pub fn load_all(dir: &Path, sys: &Path, verbose: bool) -> io::Result<Vec<(String, io::Error)>> {
    let text = std::fs::read_to_string(dir.join("load.list"))?;
    let (entries, bad) = parse_list(&text);
    let mut failures: Vec<(String, io::Error)> = bad
        .into_iter()
        .map(|l| {
            (
                l,
                io::Error::new(io::ErrorKind::InvalidData, "malformed load.list line"),
            )
        })
        .collect();
    for e in entries {
        if e.conditions.iter().any(|&c| condition_holds(c, sys)) {
            let start = crate::sys::boottime_micros();
            if let Err(err) = crate::sys::finit_module(&dir.join(&e.file)) {
                failures.push((e.file.clone(), err));
            }
            if verbose {
                let took = crate::sys::boottime_micros() - start;
                crate::log(&format!(
                    "loaded {} in {}.{:03} ms",
                    e.file,
                    took / 1000,
                    took % 1000
                ));
            }
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        let (e, bad) = parse_list(
            "# header\n\nvirtio.ko always\nvirtio_pci.ko pci\nvirtio_blk.ko virtio:2,acpi\n\
             x.ko\n../evil.ko always\ny.ko virtio:zz\n",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].conditions, vec![Condition::Virtio(2), Condition::Acpi]);
        assert_eq!(bad.len(), 3);
    }

    #[test]
    fn conditions_read_sysfs() {
        let t = std::env::temp_dir().join(format!("smolvm-agent-mod-{}", std::process::id()));
        let dev = t.join("bus/virtio/devices/virtio0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("device"), "0x0002\n").unwrap();
        std::fs::create_dir_all(t.join("bus/pci/devices")).unwrap();
        assert!(condition_holds(Condition::Virtio(2), &t));
        assert!(!condition_holds(Condition::Virtio(1), &t));
        assert!(!condition_holds(Condition::Pci, &t));
        assert!(!condition_holds(Condition::Acpi, &t));
        assert!(condition_holds(Condition::Always, &t));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
