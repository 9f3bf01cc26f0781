//! Progress of long build steps: a spinner with the current step on a terminal, nothing otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a build reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// A spinner on stderr when stderr is a terminal, else nothing.
    #[default]
    Auto,
    /// Never print.
    Quiet,
    /// Always show the spinner on stderr.
    Terminal,
}

/// Reports build steps.
#[derive(Debug)]
pub(crate) struct Reporter {
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    pub(crate) fn new(mode: Progress) -> Reporter {
        let show = match mode {
            Progress::Quiet => false,
            Progress::Terminal => true,
            Progress::Auto => std::io::stderr().is_terminal(),
        };
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Reporter { bar }
    }

    /// Starts a step.
    pub(crate) fn step(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::info!(step = %msg, "image build");
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }

    /// Prints a warning above the spinner (or through tracing when quiet).
    pub(crate) fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
        if let Some(b) = &self.bar {
            b.println(format!("warning: {msg}"));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
