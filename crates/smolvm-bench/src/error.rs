//! Errors of the benchmark.

use std::path::PathBuf;
use std::time::Duration;

/// Why a benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A smolvm operation failed (the step says which).
    #[error("{step}")]
    Step {
        /// What the benchmark was doing, e.g. `cold start 3: start`.
        step: String,
        /// The cause.
        #[source]
        source: Box<smolvm::Error>,
    },
    /// A filesystem or process operation of the benchmark itself failed.
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
    /// The raw VMM of the baseline exited before its guest was ready.
    #[error("baseline VMM exited before the guest agent was ready; end of {}:\n{tail}", log.display())]
    BaselineExited {
        /// The VMM's log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The baseline guest did not send its Ready frame in time.
    #[error(
        "baseline guest sent no Ready frame within {}s; end of console log {}:\n{tail}",
        after.as_secs_f64(), console.display()
    )]
    BaselineTimeout {
        /// The limit.
        after: Duration,
        /// The guest console log.
        console: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A command in the guest did not succeed.
    #[error("{step}: command exited with {exit_code}: {stderr}")]
    CommandFailed {
        /// Which step.
        step: String,
        /// Its exit code.
        exit_code: i32,
        /// Its standard error.
        stderr: String,
    },
    /// The benchmark was interrupted (Ctrl-C); everything it made was removed.
    #[error("interrupted")]
    Interrupted,
    /// A worker thread panicked.
    #[error("benchmark thread panicked: {0}")]
    Panicked(String),
}

impl BenchError {
    /// Wraps a smolvm error with the step that failed.
    pub fn step(step: impl Into<String>, e: impl Into<smolvm::Error>) -> BenchError {
        BenchError::Step {
            step: step.into(),
            source: Box::new(e.into()),
        }
    }

    /// Wraps an I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> BenchError {
        BenchError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<BenchError> for smolvm::Error {
    fn from(e: BenchError) -> Self {
        match e {
            BenchError::Io {
                action,
                path,
                source,
            } => smolvm::Error::Io {
                action,
                path,
                source,
            },
            // A VM that failed under the benchmark is a backend-level failure; the chain keeps the cause.
            other => smolvm::Error::Backend(Box::new(other)),
        }
    }
}
