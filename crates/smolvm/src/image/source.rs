//! [`ImageSource`]: where an image's userland came from, recorded in `image.json` and shown by
//! `smolvm image list`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an image's root filesystem came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ImageSource {
    /// The built-in minimal image (busybox and dropbear from the host).
    #[default]
    Default,
    /// A Debian userland installed from the distribution's packages with `mmdebstrap`.
    Debian {
        /// Debian suite (`bookworm`).
        suite: String,
        /// The mirror the packages came from.
        mirror: String,
        /// Packages asked for (preset and user packages, sorted), besides the base set.
        packages: Vec<String>,
    },
    /// An OCI/Docker image pulled from a registry.
    Oci {
        /// The reference it was pulled as (`docker.io/library/alpine:3.20`).
        reference: String,
    },
    /// An imported archive or directory (`docker save` tar, OCI layout, rootfs tarball).
    Archive {
        /// The path it was imported from.
        path: String,
    },
}

impl ImageSource {
    /// The one-word kind: `default`, `debian`, `oci` or `archive`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Default => "default",
            ImageSource::Debian { .. } => "debian",
            ImageSource::Oci { .. } => "oci",
            ImageSource::Archive { .. } => "archive",
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Default => f.write_str("default"),
            ImageSource::Debian {
                suite, packages, ..
            } if packages.is_empty() => write!(f, "debian {suite}"),
            ImageSource::Debian {
                suite, packages, ..
            } => write!(f, "debian {suite} +{}", packages.join(",")),
            ImageSource::Oci { reference } => write!(f, "oci {reference}"),
            ImageSource::Archive { path } => write!(f, "archive {path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_metadata_reads_as_default_and_kinds_round_trip() {
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            source: ImageSource,
        }
        let old: Old = serde_json::from_str("{}").unwrap();
        assert_eq!(old.source, ImageSource::Default);
        let d = ImageSource::Debian {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: vec!["git".into(), "python3".into()],
        };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"kind\":\"debian\""), "{json}");
        assert_eq!(serde_json::from_str::<ImageSource>(&json).unwrap(), d);
        assert_eq!(d.to_string(), "debian bookworm +git,python3");
        assert_eq!(d.kind(), "debian");
    }
}
