//! `smolvm bench`: how fast and how small smolvm's VMs are, measured against the raw VMM in the same run
//! (issue 8). A benchmark, never a test: nothing here asserts a timing; targets are reported as met or
//! missed with their margin.

pub mod baseline;
mod coldstart;
mod concurrent;
mod error;
mod image;
pub mod machine;
pub mod mem;
pub mod netns;
mod parallel;
pub mod report;
pub mod run;
mod sections;
mod snapshot;
mod ssh;
pub mod stats;
pub mod vm;
pub mod watch;
pub mod workdir;

pub use error::BenchError;
pub use report::{BenchReport, Row, Section, SectionReport, TargetCheck, Unit};
pub use run::{run, BenchOptions};
