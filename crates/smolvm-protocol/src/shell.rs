//! POSIX shell quoting. The one place where smolvm writes shell text (the guest's
//! `/etc/profile.d/smolvm_env.sh`, and the host's SSH fallback command lines): every value goes through
//! [`quote`], which makes any byte sequence a single literal word that the shell never expands.

/// A value that cannot be a shell word: C strings (argv, environ) end at NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("value contains a NUL byte at offset {offset}; shells cannot represent it")]
pub struct NulByteError {
    /// Where the first NUL is.
    pub offset: usize,
}

/// Quotes `value` as one POSIX shell word: `'...'`, with each `'` written as `'\''`. Inside single
/// quotes nothing is special (no `$`, backtick, backslash or newline processing), so the word stands for
/// exactly `value`, byte for byte, including non-UTF-8 bytes. Empty input gives `''`.
pub fn quote(value: &[u8]) -> Result<Vec<u8>, NulByteError> {
    if let Some(offset) = value.iter().position(|&b| b == 0) {
        return Err(NulByteError { offset });
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            // Close the quote, add an escaped quote, reopen.
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    Ok(out)
}

/// [`quote`] for text.
pub fn quote_str(value: &str) -> Result<String, NulByteError> {
    let quoted = quote(value.as_bytes())?;
    // Quoting only inserts ASCII around and between the input's bytes, so UTF-8 input stays UTF-8.
    Ok(String::from_utf8(quoted).unwrap_or_default())
}

/// Joins argv into one command line of quoted words (for `ssh host <command line>`).
pub fn join<S: AsRef<str>>(argv: &[S]) -> Result<String, NulByteError> {
    let words: Result<Vec<String>, NulByteError> =
        argv.iter().map(|a| quote_str(a.as_ref())).collect();
    Ok(words?.join(" "))
}

/// One `export KEY='value'` line (with the trailing newline) for a profile script. The caller has checked
/// that `key` is a shell identifier ([`crate::is_env_key`]).
pub fn export_line(key: &str, value: &[u8]) -> Result<Vec<u8>, NulByteError> {
    let mut line = b"export ".to_vec();
    line.extend_from_slice(key.as_bytes());
    line.push(b'=');
    line.extend(quote(value)?);
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    /// The awkward values every shell-quoting test must survive.
    pub(crate) fn awkward_values() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [
            "",
            "plain",
            "it's",
            "''",
            "'",
            "\"double\"",
            "$(touch /tmp/smolvm-pwned)",
            "`touch /tmp/smolvm-pwned`",
            "${HOME}",
            "$HOME",
            "back\\slash\\",
            "new\nline\n",
            "\n",
            "tab\tand space  ",
            "semi;colon && or || pipe | amp &",
            "glob * ? [a-z] ~",
            "#comment",
            "!bang",
            "émoji 🚀 ünïcödé",
            "\u{7f}\u{1}\u{1b}[31m",
            "a'b\"c`d$e\\f\ng",
            "-n",
            "-e \\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        v.push(vec![0xff, 0xfe, b'\'', 0x80, b'\n']);
        v.push((1..=255u8).collect());
        v
    }

    fn through_shell(shell: &str, value: &[u8]) -> Option<Vec<u8>> {
        let mut script = export_line("V", value).unwrap();
        script.extend_from_slice(b"printf %s \"$V\"");
        let out = Command::new(shell)
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&script))
            .env_clear()
            .output()
            .ok()?;
        assert!(out.status.success(), "{shell} failed: {out:?}");
        Some(out.stdout)
    }

    #[test]
    fn quote_examples() {
        assert_eq!(quote(b"").unwrap(), b"''");
        assert_eq!(quote(b"a").unwrap(), b"'a'");
        assert_eq!(quote(b"it's").unwrap(), b"'it'\\''s'");
        assert_eq!(quote(b"a\0b"), Err(NulByteError { offset: 1 }));
        assert_eq!(
            join(&["echo", "a b", "c'd"]).unwrap(),
            "'echo' 'a b' 'c'\\''d'"
        );
    }

    #[test]
    fn awkward_values_round_trip_through_real_shells() {
        let mut shells = vec!["/bin/sh"];
        if std::path::Path::new("/bin/busybox").exists() {
            shells.push("/bin/busybox");
        }
        for shell in shells {
            for value in awkward_values() {
                let got = if shell == "/bin/busybox" {
                    let mut script = export_line("V", &value).unwrap();
                    script.extend_from_slice(b"printf %s \"$V\"");
                    Command::new(shell)
                        .arg("sh")
                        .arg("-c")
                        .arg(std::ffi::OsStr::from_bytes(&script))
                        .env_clear()
                        .output()
                        .ok()
                        .map(|o| o.stdout)
                } else {
                    through_shell(shell, &value)
                };
                let Some(got) = got else {
                    eprintln!("skipping {shell}: cannot run it");
                    continue;
                };
                assert_eq!(got, value, "{shell}: {value:?}");
            }
        }
        assert!(!std::path::Path::new("/tmp/smolvm-pwned").exists());
    }

    #[test]
    fn random_bytes_round_trip() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let len = (next() % 64) as usize;
            let value: Vec<u8> = (0..len)
                .map(|_| match (next() % 256) as u8 {
                    0 => b'\'',
                    b => b,
                })
                .collect();
            if let Some(got) = through_shell("/bin/sh", &value) {
                assert_eq!(got, value);
            }
        }
    }
}
