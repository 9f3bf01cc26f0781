//! The kernel command line: the standard parameters the init stages honour (`init=`, `root=`, ...) and
//! smolvm's own `smolvm.*` parameters, which the host's VM manager emits:
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `smolvm.ip=<ipv4>/<prefix>` | address of the first non-loopback interface |
//! | `smolvm.gw=<ipv4>` | default gateway |
//! | `smolvm.hostname=<name>` | host name |
//! | `smolvm.dns=<ipv4>[,<ipv4>...]` | name servers, written to `/etc/resolv.conf` at every boot with `smolvm.ip` (none given: a file saying so) |
//! | `smolvm.authorized_key=<base64>` | one `authorized_keys` line, appended to root's file |
//! | `smolvm.poweroff=poweroff\|reboot` | how to end the VM (default: `reboot` on Firecracker, else `poweroff`) |
//! | `smolvm.debug` | log per-step timings (module loads) on the console |
//!
//! A malformed `smolvm.*` value is reported on the console and ignored; it never stops the boot.

use std::net::Ipv4Addr;

/// How PID 1 ends the VM on a power-off request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    /// `reboot(RB_POWER_OFF)`: ACPI power off (QEMU).
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`: with `reboot=k` the VMM exits (Firecracker, which has no ACPI power off).
    Reboot,
}

/// Parsed boot parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `init=`: the program stage 1 hands over to.
    pub init: Option<String>,
    /// `root=`: the root device (default `/dev/vda`).
    pub root: Option<String>,
    /// `rootfstype=` (default `ext4`).
    pub rootfstype: Option<String>,
    /// `rootflags=`: filesystem-specific mount options.
    pub rootflags: Option<String>,
    /// `ro` was given (and not overridden by a later `rw`).
    pub read_only: bool,
    /// `smolvm.ip`: address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `smolvm.gw`.
    pub gateway: Option<Ipv4Addr>,
    /// `smolvm.hostname`.
    pub hostname: Option<String>,
    /// `smolvm.dns`.
    pub dns: Vec<Ipv4Addr>,
    /// `smolvm.authorized_key`, decoded.
    pub authorized_key: Option<String>,
    /// `smolvm.poweroff`.
    pub power_mode: Option<PowerMode>,
    /// `smolvm.debug`: log per-step timings on the console.
    pub debug: bool,
    /// Problems with `smolvm.*` values, to print on the console.
    pub warnings: Vec<String>,
}

/// Splits a command line into `(key, value)` tokens the way the kernel does: whitespace separates,
/// double quotes group (and are removed), and everything after a lone `--` belongs to init's argv.
pub fn tokens(line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                have = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if have && cur == "--" {
                    return out;
                }
                flush(&mut cur, &mut have, &mut out);
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if !(have && cur == "--") {
        flush(&mut cur, &mut have, &mut out);
    }
    out
}

fn flush(cur: &mut String, have: &mut bool, out: &mut Vec<(String, Option<String>)>) {
    if *have {
        let tok = std::mem::take(cur);
        match tok.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((tok, None)),
        }
    }
    *have = false;
}

/// Parses `/proc/cmdline` contents.
pub fn parse(line: &str) -> BootParams {
    let mut p = BootParams::default();
    for (key, value) in tokens(line) {
        let v = value.unwrap_or_default();
        match key.as_str() {
            "init" => p.init = Some(v),
            "root" => p.root = Some(v),
            "rootfstype" => p.rootfstype = Some(v),
            "rootflags" => p.rootflags = Some(v),
            "ro" => p.read_only = true,
            "rw" => p.read_only = false,
            "smolvm.ip" => match parse_cidr(&v) {
                Some(ip) => p.ip = Some(ip),
                None => p.warnings.push(format!(
                    "ignoring smolvm.ip={v:?}: expected <ipv4>/<prefix 0-32>"
                )),
            },
            "smolvm.gw" => match v.parse() {
                Ok(gw) => p.gateway = Some(gw),
                Err(_) => p.warnings.push(format!(
                    "ignoring smolvm.gw={v:?}: expected an IPv4 address"
                )),
            },
            "smolvm.hostname" => {
                if valid_hostname(&v) {
                    p.hostname = Some(v);
                } else {
                    p.warnings.push(format!(
                        "ignoring smolvm.hostname={v:?}: expected 1-64 of [A-Za-z0-9.-]"
                    ));
                }
            }
            "smolvm.dns" => {
                for part in v.split(',').filter(|s| !s.is_empty()) {
                    match part.parse() {
                        Ok(a) => p.dns.push(a),
                        Err(_) => p.warnings.push(format!(
                            "ignoring smolvm.dns entry {part:?}: expected an IPv4 address"
                        )),
                    }
                }
            }
            "smolvm.authorized_key" => match decode_key(&v) {
                Some(k) => p.authorized_key = Some(k),
                None => p.warnings.push(
                    "ignoring smolvm.authorized_key: expected base64 of one authorized_keys line"
                        .to_string(),
                ),
            },
            "smolvm.poweroff" => match v.as_str() {
                "poweroff" => p.power_mode = Some(PowerMode::PowerOff),
                "reboot" => p.power_mode = Some(PowerMode::Reboot),
                _ => p.warnings.push(format!(
                    "ignoring smolvm.poweroff={v:?}: expected poweroff or reboot"
                )),
            },
            "smolvm.debug" => p.debug = true,
            k if k.starts_with("smolvm.") => {
                p.warnings.push(format!("ignoring unknown parameter {k}"));
            }
            _ => {}
        }
    }
    p
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    Some((addr.parse().ok()?, prefix))
}

/// Host names we accept: 1-64 characters of letters, digits, `-` and `.`, not starting with `-` or `.`.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Decodes a base64 `authorized_keys` line; refuses anything but one printable line.
fn decode_key(b64: &str) -> Option<String> {
    let bytes = base64_decode(b64)?;
    let s = String::from_utf8(bytes).ok()?;
    let line = s.trim_end_matches(['\n', '\r']);
    if line.is_empty() || line.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(line.to_string())
}

/// Standard base64 (RFC 4648, `+/`, optional `=` padding). `None` on any invalid character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot encode a byte.
    if bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_kernel_rules() {
        let t = tokens("console=ttyS0 ro  init=/init foo=\"a b\" \"x=y z\" -- ignored=1");
        assert_eq!(
            t,
            vec![
                ("console".into(), Some("ttyS0".into())),
                ("ro".into(), None),
                ("init".into(), Some("/init".into())),
                ("foo".into(), Some("a b".into())),
                ("x".into(), Some("y z".into())),
            ]
        );
        assert!(tokens("").is_empty());
        assert_eq!(tokens("a --"), vec![("a".into(), None)]);
    }

    #[test]
    fn smolvm_parameters_parse() {
        // "ssh-ed25519 AAAA test@host" in base64.
        let key = "c3NoLWVkMjU1MTkgQUFBQSB0ZXN0QGhvc3QK";
        let p = parse(&format!(
            "console=ttyS0 init=/init smolvm.ip=172.16.0.2/30 smolvm.gw=172.16.0.1 \
             smolvm.hostname=vm-1 smolvm.dns=1.1.1.1,9.9.9.9 smolvm.authorized_key={key} rw\n"
        ));
        assert_eq!(p.init.as_deref(), Some("/init"));
        assert_eq!(p.ip, Some(("172.16.0.2".parse().unwrap(), 30)));
        assert_eq!(p.gateway, Some("172.16.0.1".parse().unwrap()));
        assert_eq!(p.hostname.as_deref(), Some("vm-1"));
        assert_eq!(p.dns.len(), 2);
        assert_eq!(
            p.authorized_key.as_deref(),
            Some("ssh-ed25519 AAAA test@host")
        );
        assert!(!p.read_only);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn bad_values_warn_and_are_ignored() {
        let p = parse(
            "smolvm.ip=1.2.3.4/33 smolvm.gw=nope smolvm.hostname=-x smolvm.dns=1.2.3 \
             smolvm.authorized_key=!!! smolvm.poweroff=later smolvm.bogus=1 ro",
        );
        assert_eq!(p.ip, None);
        assert_eq!(p.gateway, None);
        assert_eq!(p.hostname, None);
        assert!(p.dns.is_empty());
        assert_eq!(p.authorized_key, None);
        assert_eq!(p.power_mode, None);
        assert_eq!(p.warnings.len(), 7, "{:?}", p.warnings);
        assert!(p.read_only);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes(), "{enc}");
        }
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
        // A key line with an embedded newline is refused.
        assert_eq!(decode_key("YQpi"), None); // "a\nb"
    }
}
