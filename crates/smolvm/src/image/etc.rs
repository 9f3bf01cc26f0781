//! The small configuration files of the guest's `/etc`, generated from the build options.

use super::error::ImageError;

/// Default host name (the agent replaces it from `smolvm.hostname=` at boot).
pub(super) const DEFAULT_HOSTNAME: &str = "smolvm";

/// `(path, mode, contents)` of every generated file.
pub(super) fn files(
    password_hash: Option<&str>,
    authorized_keys: Option<&str>,
) -> Vec<(&'static str, u32, String)> {
    let shadow_pw = password_hash.unwrap_or("*");
    let mut v = vec![
        (
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_string(),
        ),
        (
            "etc/group",
            0o644,
            "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n".to_string(),
        ),
        // An empty "last change" field disables password ageing; `*` means "no password login" without
        // locking the account (dropbear refuses every login, keys too, for a `!` locked account).
        (
            "etc/shadow",
            0o600,
            format!("root:{shadow_pw}::0:99999:7:::\nnobody:*::0:99999:7:::\n"),
        ),
        ("etc/shells", 0o644, "/bin/sh\n/bin/ash\n".to_string()),
        (
            "etc/nsswitch.conf",
            0o644,
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".to_string(),
        ),
        (
            "etc/profile",
            0o644,
            concat!(
                "# smolvm guest profile. Login shells (ssh, `sh -l`) read it; it sources /etc/profile.d/*.sh,\n",
                "# where smolvm writes the VM's environment variables (smolvm_env.sh).\n",
                "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                "umask 022\n",
                // `\$` is `#` for root, `$` otherwise: no `$(id -u)`, whose fork and exec every login
                // shell (each `run()`) paid.
                "PS1='\\h:\\w\\$ '\n",
                // Debian's static busybox segfaults on `wget -T` and its shell runs applets without
                // looking at PATH, so login shells (`smolvm exec` shell strings, `smolvm ssh`) reach
                // the agent's front end at /usr/bin/wget through a function, which wins over applets.
                "wget() { /usr/bin/wget \"$@\"; }\n",
                "for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n",
                "unset f\n",
            )
            .to_string(),
        ),
        ("etc/hostname", 0o644, format!("{DEFAULT_HOSTNAME}\n")),
        (
            "etc/hosts",
            0o644,
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{DEFAULT_HOSTNAME}\n::1\tlocalhost ip6-localhost\n"),
        ),
        (
            "etc/os-release",
            0o644,
            concat!(
                "NAME=\"smolvm guest\"\nID=smolvm\nPRETTY_NAME=\"smolvm guest (Debian kernel, busybox, dropbear)\"\n",
                "HOME_URL=\"https://github.com/smolvm\"\n"
            )
            .to_string(),
        ),
        ("etc/resolv.conf", 0o644, String::new()),
    ];
    if let Some(keys) = authorized_keys {
        let mut k = keys.trim_end().to_string();
        k.push('\n');
        v.push(("root/.ssh/authorized_keys", 0o600, k));
    }
    v
}

/// Checks a password option: non-empty, one line, no NUL.
pub(super) fn check_password(pw: &str) -> Result<(), ImageError> {
    if pw.is_empty() {
        return Err(ImageError::invalid("ssh_password", "must not be empty"));
    }
    if pw.contains(['\n', '\r', '\0']) {
        return Err(ImageError::invalid(
            "ssh_password",
            "must be one line without NUL bytes",
        ));
    }
    Ok(())
}

/// Checks an `authorized_keys` text: one or more lines, each a public key (`ssh-*`, `ecdsa-*`, `sk-*`,
/// optionally after options), no control characters.
pub(super) fn check_public_key(text: &str) -> Result<(), ImageError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err(ImageError::invalid("ssh_public_key", "no key in it"));
    }
    for l in lines {
        if l.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ImageError::invalid(
                "ssh_public_key",
                "contains control characters",
            ));
        }
        let looks_like_key = l
            .split_whitespace()
            .any(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-sha2-") || w.starts_with("sk-"));
        if !looks_like_key {
            let shown: String = l.chars().take(40).collect();
            return Err(ImageError::invalid(
                "ssh_public_key",
                format!("{shown:?} is not an OpenSSH public key line (expected e.g. \"ssh-ed25519 AAAA...\")"),
            ));
        }
    }
    Ok(())
}

/// SHA-512 crypt (`$6$`) hash of a password with a random salt, as `/etc/shadow` wants.
pub(super) fn hash_password(pw: &str) -> Result<String, ImageError> {
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| ImageError::invalid("ssh_password", format!("cannot hash: {e:?}")))?;
    sha_crypt::sha512_simple(pw, &params)
        .map_err(|e| ImageError::invalid("ssh_password", format!("cannot hash: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_and_keys() {
        let f = files(Some("$6$salt$hash"), Some("ssh-ed25519 AAAA k"));
        let get = |p: &str| f.iter().find(|(q, _, _)| *q == p).unwrap().clone();
        assert_eq!(
            get("etc/shadow").2.lines().next().unwrap(),
            "root:$6$salt$hash::0:99999:7:::"
        );
        assert_eq!(get("etc/shadow").1, 0o600);
        assert_eq!(get("root/.ssh/authorized_keys").2, "ssh-ed25519 AAAA k\n");
        let f = files(None, None);
        assert!(f.iter().all(|(p, _, _)| *p != "root/.ssh/authorized_keys"));
        assert!(f
            .iter()
            .any(|(p, _, c)| *p == "etc/shadow" && c.starts_with("root:*:")));
        assert!(f
            .iter()
            .any(|(p, _, c)| *p == "etc/profile" && c.contains("/etc/profile.d/*.sh")));
    }

    #[test]
    fn validates_options() {
        assert!(check_password("secret").is_ok());
        assert!(check_password("").is_err());
        assert!(check_password("a\nb").is_err());
        assert!(check_public_key("ssh-ed25519 AAAAC3 me@host\n").is_ok());
        assert!(check_public_key("no-pty,command=\"x\" ssh-rsa AAAA me").is_ok());
        assert!(check_public_key("ecdsa-sha2-nistp256 AAAA\nssh-rsa BBBB\n").is_ok());
        assert!(check_public_key("").is_err());
        assert!(check_public_key("hello world").is_err());
        assert!(check_public_key("ssh-rsa AAAA\u{1b}[31m").is_err());
    }

    #[test]
    fn password_hash_verifies_and_matches_openssl() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(sha_crypt::sha512_check("s3cret", &h).is_ok());
        assert!(sha_crypt::sha512_check("other", &h).is_err());
        // Same salt through openssl gives the same string (glibc's crypt reads it then).
        let salt = h.split('$').nth(2).unwrap();
        if let Some(openssl) = crate::test_tools::tool_or_skip("openssl cross-check", "openssl") {
            let out = std::process::Command::new(openssl)
                .args(["passwd", "-6", "-salt", salt, "s3cret"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h);
        }
    }

    /// A login shell of the image (busybox ash, which runs applets before searching PATH) calls the
    /// agent's wget front end, not busybox's crashing applet.
    #[test]
    fn profile_routes_wget_to_the_front_end() {
        let Some(busybox) = crate::test_tools::tool_or_skip("profile wget", "busybox") else {
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let profile = t.path().join("profile");
        let f = files(None, None);
        let text = &f.iter().find(|(p, _, _)| *p == "etc/profile").unwrap().2;
        std::fs::write(&profile, text).unwrap();
        let out = std::process::Command::new(busybox)
            .arg("sh")
            .arg("-c")
            .arg(". \"$0\"; type wget")
            .arg(&profile)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("wget is a function"), "{said} {out:?}");
    }
}
