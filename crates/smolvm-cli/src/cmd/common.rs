//! Helpers shared by the commands: opening the manager from the global options, typed option values
//! parsed (and so validated) by clap before any command runs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use smolvm::BackendKind;
use smolvm::SmolVmManager;

use crate::Cli;

/// `--backend` / `SMOLVM_BACKEND`: `auto` (or empty) for `None`, else a backend, as the library parses
/// it ([`BackendKind::parse_choice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice(pub Option<BackendKind>);

impl FromStr for BackendChoice {
    type Err = smolvm::ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Ok(BackendChoice(None)),
            s => BackendKind::parse_choice(s).map(BackendChoice),
        }
    }
}

/// The manager-wide backend choice from `--backend` / `SMOLVM_BACKEND` (`None` = auto).
pub fn backend_choice(cli: &Cli) -> Option<BackendKind> {
    cli.backend.and_then(|b| b.0)
}

/// A duration on the command line, in seconds (fractions allowed, >= 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Secs(pub Duration);

impl Secs {
    /// A default from one of the library's constants in seconds.
    pub fn of(secs: f64) -> Secs {
        Secs(Duration::from_secs_f64(secs))
    }
}

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
            .map(Secs)
            .ok_or_else(|| format!("expected a number of seconds >= 0, got {s:?}"))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// Opens the manager with the global directory and backend options.
pub fn manager(cli: &Cli) -> anyhow::Result<SmolVmManager> {
    SmolVmManager::new(
        cli.data_dir.as_deref(),
        cli.socket_dir.as_deref(),
        backend_choice(cli),
    )
    .context("cannot open the smolvm state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choices_parse_as_the_library_does() {
        assert_eq!("".parse::<BackendChoice>().unwrap(), BackendChoice(None));
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice(None)
        );
        assert_eq!(
            "qemu".parse::<BackendChoice>().unwrap(),
            BackendChoice(Some(BackendKind::Qemu))
        );
        let e = "kvm".parse::<BackendChoice>().unwrap_err().to_string();
        assert!(e.contains("\"kvm\""), "{e}");
    }

    #[test]
    fn seconds_are_non_negative_numbers() {
        assert_eq!(
            "2.5".parse::<Secs>().unwrap(),
            Secs(Duration::from_millis(2500))
        );
        assert_eq!("0".parse::<Secs>().unwrap(), Secs(Duration::ZERO));
        for bad in ["-1", "abc", "inf", "NaN", ""] {
            assert!(bad.parse::<Secs>().is_err(), "{bad}");
        }
        assert_eq!(Secs::of(30.0).to_string(), "30");
    }
}
