//! Errors of the image area. Each says what to do; causes stay in the `source()` chain.

use std::path::PathBuf;

use crate::error::ValidationError;

/// Building, finding or reading a guest image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An option was rejected before any work was done.
    #[error("invalid {field}: {reason}")]
    InvalidOption {
        /// The option (spec name).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A host tool the build needs is missing, could not be run, or failed.
    #[error(transparent)]
    Tool(#[from] crate::host::ToolError),

    /// No apt on this host, so the distribution kernel cannot be fetched.
    #[error(
        "cannot fetch the kernel: `apt-get` not found (not a Debian-family host). Point smolvm at a \
         kernel instead: set SMOLVM_KERNEL=/path/to/bzImage and SMOLVM_KERNEL_MODULES=/lib/modules/<version> \
         (or `smolvm image build --kernel ... --kernel-modules ...`); the kernel needs virtio-mmio, \
         virtio-blk, virtio-net, virtio-console and vsock, built in or as modules"
    )]
    NoPackageManager,

    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The disk is full.
    #[error("no space left while trying to {action} {}: free some space or use another --data-dir", path.display())]
    NoSpace {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The kernel file is not a usable x86 bzImage.
    #[error("kernel {}: {reason}", path.display())]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The kernel lacks a driver the guest needs.
    #[error(
        "kernel {release} has no `{module}` (neither built in nor a module under {}): use a kernel with \
         virtio and vsock drivers, e.g. Debian's linux-image-cloud-amd64", modules_dir.display()
    )]
    ModuleMissing {
        /// The module (driver) name.
        module: String,
        /// The kernel release.
        release: String,
        /// Where modules were searched.
        modules_dir: PathBuf,
    },

    /// A kernel module file could not be read.
    #[error("kernel module {}: {reason}", path.display())]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The guest agent binary was not found.
    #[error(
        "guest agent binary not found{}: this smolvm was built without the embedded agent \
         (SMOLVM_EMBED_AGENT=0); set SMOLVM_AGENT_BIN to a static build of smolvm-agent \
         (`scripts/build-agent.sh` makes one)",
        if searched.is_empty() { String::new() } else { format!(" at {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")) }
    )]
    AgentMissing {
        /// The places looked at, in order.
        searched: Vec<PathBuf>,
    },

    /// The agent binary is dynamically linked (the guest has no matching C library for it).
    #[error(
        "guest agent {} is dynamically linked: rebuild it with `scripts/build-agent.sh` \
         (RUSTFLAGS='-C target-feature=+crt-static' and --target x86_64-unknown-linux-gnu)",
        path.display()
    )]
    AgentNotStatic {
        /// The binary.
        path: PathBuf,
    },

    /// A metadata file of the cache is unreadable.
    #[error("image metadata {}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A package archive is malformed.
    #[error("package {}: {reason}", path.display())]
    BadPackage {
        /// The .deb file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// This host architecture has no default image.
    #[error("default images are built for x86_64 hosts only (this is {0})")]
    UnsupportedArch(&'static str),

    /// An OCI/Docker image or archive could not be imported.
    #[error("cannot import {source_desc}: {reason}")]
    Import {
        /// What was being imported (path or reference).
        source_desc: String,
        /// What is wrong.
        reason: String,
    },

    /// The image is for another platform than this host's kernel.
    #[error("the image is for {found}, but smolvm boots linux/amd64 images here")]
    WrongPlatform {
        /// `os/architecture` of the image.
        found: String,
    },

    /// The image cannot be removed: VMs boot from it.
    #[error("image {name:?} is used by VM(s) {}: delete them first (smolvm delete ID)", vms.join(", "))]
    InUse {
        /// The image.
        name: String,
        /// The VMs using it.
        vms: Vec<String>,
    },

    /// No image of that name is in the cache.
    #[error(
        "no image named {0:?}: build it with `smolvm image build --name {0}` (add `--distro debian` \
         for a Debian image) or import one with `smolvm image import PATH --name {0}`; \
         `smolvm image list` shows what there is"
    )]
    NotFound(String),
}

impl ImageError {
    /// Wraps an I/O error; a full disk becomes [`ImageError::NoSpace`] so the message says what to do.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            ImageError::NoSpace {
                action,
                path,
                source,
            }
        } else {
            ImageError::Io {
                action,
                path,
                source,
            }
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ImageError::InvalidOption {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ImageError> for crate::Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::InvalidOption { field, reason } => {
                crate::Error::Validation(ValidationError::new(field, reason))
            }
            other => crate::Error::Image(Box::new(other)),
        }
    }
}
