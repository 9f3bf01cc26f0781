//! The kernel command line as the host writes it and the agent reads it: the standard parameters the
//! agent's init stages honour (`init=`, `root=`, ...) and smolvm's own `smolvm.*` parameters.
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `smolvm.hostname=<name>` | host name |
//! | `smolvm.ip=<ipv4>/<prefix>` | address of the first non-loopback interface |
//! | `smolvm.gw=<ipv4>` | default gateway |
//! | `smolvm.dns=<ipv4>[,<ipv4>...]` | name servers, written to `/etc/resolv.conf` at every boot with `smolvm.ip` (none given: a file saying so) |
//! | `smolvm.authorized_key=<base64>` | one `authorized_keys` line, appended to root's file |
//! | `smolvm.poweroff=poweroff\|reboot` | how to end the VM (default: `reboot` on Firecracker, else `poweroff`) |
//! | `smolvm.debug` | log per-step timings (module loads) on the console |
//!
//! The host renders the `smolvm.*` part with [`BootParams::render`], which refuses values the agent
//! would not accept (so a value can never spill into another parameter); the agent parses the whole
//! line with [`BootParams::parse`], which reports a malformed `smolvm.*` value as a warning and never
//! stops the boot. `parse(render(p))` gives `p` back (tested).

use std::net::Ipv4Addr;

use crate::ProtocolError;

/// The `init=` of images whose PID 1 is the smolvm agent: `init=/init` on the command line says "this
/// guest runs the agent".
pub const AGENT_INIT: &str = "/init";

/// The longest kernel command line x86 Linux takes (`COMMAND_LINE_SIZE` 2048, with its NUL).
pub const KERNEL_CMDLINE_MAX: usize = 2047;

/// The longest host name the agent sets.
pub const MAX_HOSTNAME_LEN: usize = 64;

/// The longest `authorized_keys` line passed on the command line (an RSA-4096 key line is about 750
/// bytes; base64 makes it a third longer, and the whole line must stay under [`KERNEL_CMDLINE_MAX`]).
pub const MAX_AUTHORIZED_KEY_LEN: usize = 1024;

/// How PID 1 ends the VM on a power-off request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    /// `reboot(RB_POWER_OFF)`: ACPI power off (QEMU).
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`: with `reboot=k` the VMM exits (Firecracker, which has no ACPI power off).
    Reboot,
}

/// The boot parameters. The host fills the `smolvm.*` fields; the standard ones come from the user's
/// `boot_args` and are only parsed.
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
    /// `smolvm.hostname`.
    pub hostname: Option<String>,
    /// `smolvm.ip`: address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `smolvm.gw`.
    pub gateway: Option<Ipv4Addr>,
    /// `smolvm.dns`.
    pub dns: Vec<Ipv4Addr>,
    /// `smolvm.authorized_key`, decoded: one `authorized_keys` line.
    pub authorized_key: Option<String>,
    /// `smolvm.poweroff`.
    pub power_mode: Option<PowerMode>,
    /// `smolvm.debug`: log per-step timings on the console.
    pub debug: bool,
    /// Problems with `smolvm.*` values found by [`parse`](Self::parse), to print on the console.
    pub warnings: Vec<String>,
}

impl BootParams {
    /// True when the line boots the smolvm agent as PID 1 (`init=/init`, see [`AGENT_INIT`]).
    pub fn runs_agent(&self) -> bool {
        self.init.as_deref() == Some(AGENT_INIT)
    }

    /// Parses a whole command line (`/proc/cmdline`). Unknown standard parameters are skipped; a bad or
    /// unknown `smolvm.*` one becomes a warning.
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
                k if k.starts_with("smolvm.") => p.parse_smolvm(k, v),
                _ => {}
            }
        }
        p
    }

    fn parse_smolvm(&mut self, key: &str, v: String) {
        match key {
            "smolvm.ip" => match parse_cidr(&v) {
                Some(ip) => self.ip = Some(ip),
                None => self.warn(format!(
                    "ignoring smolvm.ip={v:?}: expected <ipv4>/<prefix 0-32>"
                )),
            },
            "smolvm.gw" => match v.parse() {
                Ok(gw) => self.gateway = Some(gw),
                Err(_) => self.warn(format!(
                    "ignoring smolvm.gw={v:?}: expected an IPv4 address"
                )),
            },
            "smolvm.hostname" => {
                if valid_hostname(&v) {
                    self.hostname = Some(v);
                } else {
                    self.warn(format!(
                        "ignoring smolvm.hostname={v:?}: expected 1-64 of [A-Za-z0-9.-]"
                    ));
                }
            }
            "smolvm.dns" => {
                for part in v.split(',').filter(|s| !s.is_empty()) {
                    match part.parse() {
                        Ok(a) => self.dns.push(a),
                        Err(_) => self.warn(format!(
                            "ignoring smolvm.dns entry {part:?}: expected an IPv4 address"
                        )),
                    }
                }
            }
            "smolvm.authorized_key" => {
                match crate::base64::decode(&v).and_then(|b| String::from_utf8(b).ok()) {
                    Some(k) if check_key_line(k.trim_end_matches(['\n', '\r'])).is_ok() => {
                        self.authorized_key = Some(k.trim_end_matches(['\n', '\r']).to_string())
                    }
                    _ => self.warn(
                        "ignoring smolvm.authorized_key: expected base64 of one authorized_keys line"
                            .to_string(),
                    ),
                }
            }
            "smolvm.poweroff" => match v.as_str() {
                "poweroff" => self.power_mode = Some(PowerMode::PowerOff),
                "reboot" => self.power_mode = Some(PowerMode::Reboot),
                _ => self.warn(format!(
                    "ignoring smolvm.poweroff={v:?}: expected poweroff or reboot"
                )),
            },
            "smolvm.debug" => self.debug = true,
            k => self.warn(format!("ignoring unknown parameter {k}")),
        }
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// The `smolvm.*` parameters, space-separated, in a fixed order (the standard fields are the user's
    /// `boot_args` and are not rendered). Refuses a value the agent would reject: a host name that is
    /// not 1-64 of `[A-Za-z0-9.-]`, a prefix over 32, a key line that is empty, longer than
    /// [`MAX_AUTHORIZED_KEY_LEN`] or holds a control character. Every rendered value is free of spaces
    /// and quotes, so none needs quoting and none can start another parameter.
    pub fn render(&self) -> Result<String, ProtocolError> {
        let mut parts = Vec::new();
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(ProtocolError::invalid(
                    "smolvm.hostname",
                    format!("{h:?} is not 1-{MAX_HOSTNAME_LEN} of [A-Za-z0-9.-]"),
                ));
            }
            parts.push(format!("smolvm.hostname={h}"));
        }
        if let Some((ip, prefix)) = self.ip {
            if prefix > 32 {
                return Err(ProtocolError::invalid(
                    "smolvm.ip",
                    format!("prefix {prefix} > 32"),
                ));
            }
            parts.push(format!("smolvm.ip={ip}/{prefix}"));
        }
        if let Some(gw) = self.gateway {
            parts.push(format!("smolvm.gw={gw}"));
        }
        if !self.dns.is_empty() {
            let list: Vec<String> = self.dns.iter().map(Ipv4Addr::to_string).collect();
            parts.push(format!("smolvm.dns={}", list.join(",")));
        }
        if let Some(k) = &self.authorized_key {
            check_key_line(k)?;
            parts.push(format!(
                "smolvm.authorized_key={}",
                crate::base64::encode(k.as_bytes())
            ));
        }
        if let Some(m) = self.power_mode {
            parts.push(
                match m {
                    PowerMode::PowerOff => "smolvm.poweroff=poweroff",
                    PowerMode::Reboot => "smolvm.poweroff=reboot",
                }
                .to_string(),
            );
        }
        if self.debug {
            parts.push("smolvm.debug".to_string());
        }
        Ok(parts.join(" "))
    }
}

fn check_key_line(k: &str) -> Result<(), ProtocolError> {
    if k.is_empty() || k.len() > MAX_AUTHORIZED_KEY_LEN || k.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(
            "smolvm.authorized_key",
            format!("expected one printable line of 1-{MAX_AUTHORIZED_KEY_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Appends rendered smolvm parameters to the user's `boot_args`, refusing a line longer than the
/// kernel takes ([`KERNEL_CMDLINE_MAX`]): the kernel would cut it silently, dropping parameters.
pub fn compose(boot_args: &str, smolvm: &str) -> Result<String, ProtocolError> {
    let line = [boot_args.trim(), smolvm.trim()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.len() > KERNEL_CMDLINE_MAX {
        return Err(ProtocolError::invalid(
            "kernel command line",
            format!(
                "{} bytes (boot_args plus smolvm's parameters) exceed the kernel's {KERNEL_CMDLINE_MAX}",
                line.len()
            ),
        ));
    }
    Ok(line)
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

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    Some((addr.parse().ok()?, prefix))
}

/// Host names the agent sets: 1-64 characters of letters, digits, `-` and `.`, not starting with `-` or
/// `.`.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HOSTNAME_LEN
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
