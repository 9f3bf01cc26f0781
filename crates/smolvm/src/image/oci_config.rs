//! Reading an OCI image layout that skopeo wrote (one manifest, tagged): the image config's runtime
//! defaults (`Env`, `WorkingDir`, `User`, `Entrypoint`, `Cmd`) and its platform, which must be
//! linux/amd64 to boot on the Debian x86_64 kernel.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ImageError;

/// The runtime defaults an OCI/Docker image declares, recorded in `image.json`. `env` and
/// `working_dir` become the defaults of commands run in VMs made from the image (a login-shell
/// profile in the image, so `smolvm exec`/`run` and SSH sessions get them); `user`, `entrypoint` and
/// `cmd` are recorded only (the smolvm agent is PID 1, not the image's entrypoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute), if set.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User, if set.
    #[serde(default)]
    pub user: Option<String>,
    /// Entrypoint argv.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Cmd argv.
    #[serde(default)]
    pub cmd: Vec<String>,
}

impl RuntimeConfig {
    /// `Env` as key/value pairs; entries without `=` or whose key is not a shell identifier (which no
    /// shell could export) are skipped.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| {
                !k.is_empty()
                    && !k.as_bytes()[0].is_ascii_digit()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigSection {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ConfigSection>,
}

fn blob_path(layout: &Path, digest: &str) -> Result<std::path::PathBuf, ImageError> {
    let (algo, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            a.bytes().all(|b| b.is_ascii_alphanumeric())
                && !h.is_empty()
                && h.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .ok_or_else(|| ImageError::invalid("image", format!("bad digest {digest:?}")))?;
    Ok(layout.join("blobs").join(algo).join(hex))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Import {
        source_desc: path.display().to_string(),
        reason: format!("unreadable {what}: {e}"),
    })
}

/// The single image of `layout`: checks its platform and returns its runtime defaults.
pub(super) fn read(layout: &Path) -> Result<RuntimeConfig, ImageError> {
    let index: Index = read_json(&layout.join("index.json"), "OCI index")?;
    let desc = index.manifests.first().ok_or_else(|| ImageError::Import {
        source_desc: layout.display().to_string(),
        reason: "the OCI index lists no image".into(),
    })?;
    let manifest: Manifest = read_json(&blob_path(layout, &desc.digest)?, "manifest")?;
    let config: ImageConfig = read_json(&blob_path(layout, &manifest.config.digest)?, "config")?;
    check_platform(&config.os, &config.architecture)?;
    let c = config.config.unwrap_or(ConfigSection {
        env: None,
        working_dir: None,
        user: None,
        entrypoint: None,
        cmd: None,
    });
    Ok(RuntimeConfig {
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
    })
}

/// Only linux/amd64 images boot here (the kernel is Debian's x86_64 cloud kernel).
pub(super) fn check_platform(os: &str, arch: &str) -> Result<(), ImageError> {
    if (os.is_empty() || os == "linux") && arch == "amd64" {
        Ok(())
    } else {
        Err(ImageError::WrongPlatform {
            found: format!("{}/{}", if os.is_empty() { "?" } else { os }, arch),
        })
    }
}

/// The login-shell profile that makes the image's `Env` and `WorkingDir` the defaults of commands:
/// every value is quoted for the shell, keys must be shell identifiers (others are skipped, as a
/// shell could not export them anyway).
pub(super) fn profile_script(rc: &RuntimeConfig) -> String {
    let mut s = String::from("# Written by smolvm from the OCI image config (Env, WorkingDir).\n");
    for (k, v) in rc.env_pairs() {
        s.push_str(&format!("export {k}={}\n", crate::ssh::quote::quote(&v)));
    }
    if let Some(w) = &rc.working_dir {
        s.push_str(&format!(
            "cd {} 2>/dev/null || true\n",
            crate::ssh::quote::quote(w)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn put_blob(layout: &Path, bytes: &[u8]) -> String {
        let hex = super::super::deb::hex(&Sha256::digest(bytes));
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    fn layout_with(config: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let c = put_blob(t.path(), config.as_bytes());
        let m = put_blob(
            t.path(),
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{c}","size":1}},"layers":[]}}"#)
                .as_bytes(),
        );
        fs::write(
            t.path().join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{m}","size":1}}]}}"#),
        )
        .unwrap();
        t
    }

    #[test]
    fn reads_runtime_defaults_and_rejects_other_platforms() {
        let t = layout_with(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","GREETING=it's"],
               "WorkingDir":"/srv/app","User":"1000","Cmd":["python3"]}}"#,
        );
        let rc = read(t.path()).unwrap();
        assert_eq!(rc.env, ["PATH=/usr/bin:/bin", "GREETING=it's"]);
        assert_eq!(rc.working_dir.as_deref(), Some("/srv/app"));
        assert_eq!(rc.user.as_deref(), Some("1000"));
        assert_eq!(rc.cmd, ["python3"]);
        let t = layout_with(r#"{"architecture":"arm64","os":"linux"}"#);
        let e = read(t.path()).unwrap_err();
        assert!(e.to_string().contains("linux/arm64"), "{e}");
        assert!(matches!(
            read(Path::new("/nonexistent")),
            Err(ImageError::Io { .. })
        ));
    }

    #[test]
    fn profile_quotes_values_and_skips_bad_keys() {
        let rc = RuntimeConfig {
            env: vec![
                "A=it's $(x)".into(),
                "1BAD=x".into(),
                "B=".into(),
                "noequals".into(),
            ],
            working_dir: Some("/my dir".into()),
            ..RuntimeConfig::default()
        };
        let s = profile_script(&rc);
        assert!(s.contains("export A='it'\\''s $(x)'\n"), "{s}");
        assert!(s.contains("export B=''\n"), "{s}");
        assert!(!s.contains("1BAD"), "{s}");
        assert!(s.contains("cd '/my dir' 2>/dev/null || true\n"), "{s}");
    }
}
