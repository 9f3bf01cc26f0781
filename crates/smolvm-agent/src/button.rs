//! The ACPI power button (QEMU's `system_powerdown`): the kernel's `button` driver turns it into a
//! KEY_POWER input event on `/dev/input/eventN` (needs `evdev`); nothing else in a minimal guest acts on
//! it, so the agent watches for it and powers off.

use std::io::Read;
use std::path::{Path, PathBuf};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// Starts a watcher thread for every input device that can send KEY_POWER.
pub fn watch() {
    for dev in power_button_devices(Path::new("/sys/class/input")) {
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || watch_device(&dev));
        if let Err(e) = spawned {
            crate::log(&format!("cannot watch the power button: {e}"));
        }
    }
}

/// `/dev/input/eventN` nodes whose key capabilities include KEY_POWER.
fn power_button_devices(class: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(class) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .map(|k| has_key(&k, KEY_POWER))
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect()
}

/// Tests bit `key` of a sysfs capability bitmap: hex words, most significant first, each one `long`.
fn has_key(bitmap: &str, key: u16) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let idx = usize::from(key) / 64;
    let Some(word) = words.len().checked_sub(idx + 1).and_then(|i| words.get(i)) else {
        return false;
    };
    u64::from_str_radix(word, 16).is_ok_and(|w| w & (1 << (key % 64)) != 0)
}

fn watch_device(dev: &Path) {
    let mut f = match std::fs::File::open(dev) {
        Ok(f) => f,
        Err(e) => {
            crate::log(&format!("open {}: {e}", dev.display()));
            return;
        }
    };
    let mut ev = [0u8; EVENT_SIZE];
    while f.read_exact(&mut ev).is_ok() {
        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        if ty == EV_KEY && code == KEY_POWER && value == 1 {
            crate::log("power button pressed");
            crate::power::request_power_off();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bitmap() {
        // The ACPI power button's bitmap as the kernel prints it: bit 116 in word 1.
        assert!(has_key("10000000000000 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(has_key("1", 0));
    }
}
