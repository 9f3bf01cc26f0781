//! The image auto-configuration boots when no image is named (`SmolVm::builder().build()`, `smolvm
//! create` / `smolvm run` without `--image`, Python's `SmolVM()`): one decision, made here.
//!
//! smolvm's minimal kernel starts a guest about twice as fast as Debian's cloud kernel under TCG
//! (README, Performance), but compiling it takes minutes. So auto-configuration uses the minimal
//! kernel once it has been compiled on this machine (`smolvm image build --kernel minimal`, or
//! [`AUTO_KERNEL_ENV`]`=minimal`), and Debian's kernel until then: a first run never waits for a
//! compile. The minimal-kernel variant of the default image is its own image,
//! [`AUTO_MINIMAL_IMAGE_NAME`], so VMs made from the Debian-kernel default image keep booting the files
//! they were made with, and a user's own image named `minimal` is never rebuilt behind their back.

use super::builder::{ImageBuilder, ImageOptions};
use super::error::ImageError;
use super::kcache::{self, KernelSource};
use super::{GuestImage, DEFAULT_IMAGE_NAME};

/// The image auto-configuration builds (seconds, from the cached kernel) and boots once the minimal
/// kernel is compiled: the default userland with the minimal kernel.
pub const AUTO_MINIMAL_IMAGE_NAME: &str = "default-minimal";

/// Environment variable choosing auto-configuration's kernel: `debian` (always Debian's kernel),
/// `minimal` (the minimal kernel, compiled first if needed: minutes, once); unset or `auto`: the
/// minimal kernel if it is already compiled, else Debian's.
pub const AUTO_KERNEL_ENV: &str = "SMOLVM_AUTO_KERNEL";

/// What [`AUTO_KERNEL_ENV`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoKernel {
    /// The minimal kernel if compiled, else Debian's (the default).
    Auto,
    /// Always Debian's kernel.
    Debian,
    /// Always the minimal kernel, compiling it if needed.
    Minimal,
}

impl AutoKernel {
    /// Parses [`AUTO_KERNEL_ENV`]'s value (`None`: unset).
    pub fn parse(value: Option<&str>) -> Result<AutoKernel, ImageError> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(AutoKernel::Auto),
            Some("debian") => Ok(AutoKernel::Debian),
            Some("minimal") => Ok(AutoKernel::Minimal),
            Some(other) => Err(ImageError::invalid(
                AUTO_KERNEL_ENV,
                format!("{other:?}: use auto, debian or minimal"),
            )),
        }
    }

    /// From the environment.
    pub fn from_env() -> Result<AutoKernel, ImageError> {
        AutoKernel::parse(std::env::var(AUTO_KERNEL_ENV).ok().as_deref())
    }
}

impl ImageBuilder {
    /// The image auto-configuration boots, chosen by `choice` (see the module docs). A builder whose
    /// kernel was set explicitly (`SMOLVM_KERNEL`, another package) always builds the default image with
    /// that kernel.
    pub fn auto_image(&self, choice: AutoKernel) -> Result<GuestImage, ImageError> {
        let default_kernel = self.has_default_kernel();
        let minimal = self.clone().with_minimal_kernel();
        let use_minimal = default_kernel
            && match choice {
                AutoKernel::Debian => false,
                AutoKernel::Minimal => true,
                AutoKernel::Auto => minimal.minimal_kernel_is_compiled(),
            };
        let (builder, name) = if use_minimal {
            (&minimal, AUTO_MINIMAL_IMAGE_NAME)
        } else {
            (self, DEFAULT_IMAGE_NAME)
        };
        builder.build(&ImageOptions {
            name: name.to_string(),
            ..ImageOptions::default()
        })
    }

    /// True if this builder's kernel is Debian's default package (not one chosen explicitly).
    pub(super) fn has_default_kernel(&self) -> bool {
        matches!(self.kernel_source(),
            KernelSource::Package(p) if p == super::DEFAULT_KERNEL_PACKAGE)
    }

    /// True if this builder's (minimal) kernel is already in the prepared-kernel cache. Identifying it
    /// asks apt which source version is current (remembered until apt's lists change); any failure
    /// there counts as "not compiled", so auto-configuration falls back to Debian's kernel.
    fn minimal_kernel_is_compiled(&self) -> bool {
        let dir = self.images_dir();
        match kcache::identify(self.kernel_source(), &dir.join(".cache")) {
            Ok(id) => kcache::is_prepared(&id, &dir.join(".kernels")),
            Err(e) => {
                tracing::debug!("minimal kernel not identified: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_value_is_parsed_strictly() {
        assert_eq!(AutoKernel::parse(None).unwrap(), AutoKernel::Auto);
        assert_eq!(AutoKernel::parse(Some("auto")).unwrap(), AutoKernel::Auto);
        assert_eq!(
            AutoKernel::parse(Some(" debian ")).unwrap(),
            AutoKernel::Debian
        );
        assert_eq!(
            AutoKernel::parse(Some("minimal")).unwrap(),
            AutoKernel::Minimal
        );
        assert!(matches!(
            AutoKernel::parse(Some("tiny")),
            Err(ImageError::InvalidOption { .. })
        ));
    }
}
