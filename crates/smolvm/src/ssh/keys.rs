//! The client key (one per data directory) and the per-VM host keys.
//!
//! Keys are generated under a temporary name and published with `link(2)`, which fails if the final
//! name exists: when two processes race, exactly one key wins and both use it. Public keys are always
//! derived from the published private key, so a `.pub` file can never belong to another key.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{io_err, path_str, run_tool, SshError};

/// The per-data-dir ed25519 client key smolvm logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// `<data_dir>/ssh/id_ed25519` (mode 0600).
    pub private_key: PathBuf,
    /// `<data_dir>/ssh/id_ed25519.pub`.
    pub public_key: PathBuf,
}

impl ClientKey {
    /// The public key line (`ssh-ed25519 AAAA... smolvm`), for the guest's authorized_keys.
    pub fn public_key_line(&self) -> Result<String, SshError> {
        read_public_line(&self.public_key)
    }
}

/// Returns the client key of `data_dir`, generating it on first use (`ssh-keygen -t ed25519 -N ""`).
pub fn ensure_client_key(data_dir: &Path) -> Result<ClientKey, SshError> {
    let dir = data_dir.join("ssh");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("create directory", &dir))?;
    let private_key = dir.join("id_ed25519");
    ensure_key(&private_key, "smolvm")?;
    Ok(ClientKey {
        public_key: pub_path(&private_key),
        private_key,
    })
}

/// The format the guest's SSH server reads its host key in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyFormat {
    /// OpenSSH `sshd` (the private key as ssh-keygen writes it).
    OpenSsh,
    /// Dropbear (converted with `dropbearconvert openssh dropbear`).
    Dropbear,
}

impl HostKeyFormat {
    /// Where the server looks for its ed25519 host key in the guest.
    pub fn guest_path(self) -> &'static str {
        match self {
            HostKeyFormat::OpenSsh => "/etc/ssh/ssh_host_ed25519_key",
            HostKeyFormat::Dropbear => "/etc/dropbear/dropbear_ed25519_host_key",
        }
    }
}

/// A VM's SSH host key, kept on the host in the VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The OpenSSH private key (`<vm_dir>/ssh_host_ed25519_key`).
    pub private_key: PathBuf,
    /// Its public key line, pinned in known_hosts.
    pub public_key_line: String,
    /// The file to install into the guest (same as `private_key` for OpenSSH, a converted copy for
    /// Dropbear).
    pub guest_key_file: PathBuf,
    /// Its format.
    pub format: HostKeyFormat,
}

/// Returns the host key of a VM, generating it if missing. Idempotent, so a re-created VM that keeps
/// its disk also keeps the key its known_hosts pins.
pub fn ensure_host_key(
    vm_dir: &Path,
    vm_id: &str,
    format: HostKeyFormat,
) -> Result<HostKey, SshError> {
    fs::create_dir_all(vm_dir).map_err(io_err("create directory", vm_dir))?;
    let private_key = vm_dir.join("ssh_host_ed25519_key");
    ensure_key(&private_key, &format!("smolvm-host-{vm_id}"))?;
    let guest_key_file = match format {
        HostKeyFormat::OpenSsh => private_key.clone(),
        HostKeyFormat::Dropbear => {
            let out = vm_dir.join("dropbear_ed25519_host_key");
            if !out.exists() {
                let tmp = temp_name(&out);
                let result = run_tool(
                    "dropbearconvert",
                    &[
                        "openssh",
                        "dropbear",
                        path_str("key path", &private_key)?,
                        path_str("key path", &tmp)?,
                    ],
                    None,
                    None,
                )
                .and_then(|_| publish(&tmp, &out));
                let _ = fs::remove_file(&tmp);
                result?;
            }
            out
        }
    };
    Ok(HostKey {
        public_key_line: read_public_line(&pub_path(&private_key))?,
        private_key,
        guest_key_file,
        format,
    })
}

fn pub_path(private_key: &Path) -> PathBuf {
    let mut s = private_key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn temp_name(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    final_path.with_file_name(format!(".{name}.tmp-{}-{nonce:x}", std::process::id()))
}

/// Makes `tmp` visible as `final_path` unless that already exists (then the existing one wins).
fn publish(tmp: &Path, final_path: &Path) -> Result<(), SshError> {
    match fs::hard_link(tmp, final_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("publish", final_path)(e)),
    }
}

/// Ensures an ed25519 private key at `private_key` (0600) and a matching `.pub` next to it.
fn ensure_key(private_key: &Path, comment: &str) -> Result<(), SshError> {
    if !private_key.exists() {
        let tmp = temp_name(private_key);
        let result = run_tool(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                path_str("key path", &tmp)?,
            ],
            None,
            None,
        )
        .and_then(|_| publish(&tmp, private_key));
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(pub_path(&tmp));
        result?;
    }
    // ssh refuses private keys others can read.
    let meta = fs::metadata(private_key).map_err(io_err("inspect", private_key))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(private_key, fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod 0600", private_key))?;
    }
    let public = pub_path(private_key);
    let derived = run_tool(
        "ssh-keygen",
        &["-y", "-f", path_str("key path", private_key)?],
        None,
        None,
    )?;
    let derived = String::from_utf8_lossy(&derived).into_owned();
    // `ssh-keygen -y` may append the comment stored in the key; keep only type and key.
    let (kind, key) = key_fields(&derived).ok_or_else(|| SshError::Invalid {
        what: "private key",
        value: private_key.display().to_string(),
        reason: "ssh-keygen -y printed no public key",
    })?;
    let line = format!("{kind} {key} {comment}\n");
    let current = fs::read_to_string(&public).unwrap_or_default();
    if key_fields(&current) != key_fields(&line) {
        let tmp = temp_name(&public);
        fs::write(&tmp, &line).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &public).map_err(io_err("rename into place", &public))?;
    }
    Ok(())
}

/// The type and base64 fields of a public key line (the comment does not identify the key).
pub(crate) fn key_fields(line: &str) -> Option<(&str, &str)> {
    let mut it = line.split_whitespace();
    Some((it.next()?, it.next()?))
}

fn read_public_line(path: &Path) -> Result<String, SshError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if key_fields(&line).is_none() {
        return Err(SshError::Invalid {
            what: "public key file",
            value: path.display().to_string(),
            reason: "does not hold a public key line",
        });
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing tool skips the test, or fails it under `SMOLVM_E2E=1`.
    fn have(tool: &str) -> bool {
        crate::test_tools::tool_or_skip("ssh key test", tool).is_some()
    }

    #[test]
    fn client_key_is_made_once_private_and_consistent() {
        if !have("ssh-keygen") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let k = ensure_client_key(tmp.path()).unwrap();
        assert_eq!(k.private_key, tmp.path().join("ssh/id_ed25519"));
        let mode = fs::metadata(&k.private_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(tmp.path().join("ssh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let line = k.public_key_line().unwrap();
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        let again = ensure_client_key(tmp.path()).unwrap();
        assert_eq!(again.public_key_line().unwrap(), line);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(tmp.path().join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A .pub that does not match (e.g. a lost race) is repaired from the private key.
        fs::write(&k.public_key, "ssh-ed25519 AAAAwrong x\n").unwrap();
        let fixed = ensure_client_key(tmp.path()).unwrap();
        assert_eq!(fixed.public_key_line().unwrap(), line);
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        if !have("ssh-keygen") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let lines: Vec<String> = (0..4)
            .map(|_| {
                let d = dir.clone();
                std::thread::spawn(move || {
                    ensure_client_key(&d)
                        .and_then(|k| k.public_key_line())
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(lines
            .windows(2)
            .all(|w| key_fields(&w[0]) == key_fields(&w[1])));
    }

    #[test]
    fn dropbear_host_key_matches_the_pinned_public_key() {
        if !have("ssh-keygen") || !have("dropbearconvert") || !have("dropbearkey") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let k = ensure_host_key(tmp.path(), "vm1", HostKeyFormat::Dropbear).unwrap();
        assert_eq!(
            k.guest_key_file,
            tmp.path().join("dropbear_ed25519_host_key")
        );
        let out = run_tool(
            "dropbearkey",
            &["-y", "-f", k.guest_key_file.to_str().unwrap()],
            None,
            None,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let dropbear_line = text.lines().find(|l| l.starts_with("ssh-ed25519")).unwrap();
        assert_eq!(key_fields(dropbear_line), key_fields(&k.public_key_line));
        // Idempotent: the same key comes back.
        let again = ensure_host_key(tmp.path(), "vm1", HostKeyFormat::Dropbear).unwrap();
        assert_eq!(again, k);
        let openssh = ensure_host_key(tmp.path(), "vm1", HostKeyFormat::OpenSsh).unwrap();
        assert_eq!(openssh.guest_key_file, k.private_key);
        assert_eq!(
            HostKeyFormat::Dropbear.guest_path(),
            "/etc/dropbear/dropbear_ed25519_host_key"
        );
    }
}
