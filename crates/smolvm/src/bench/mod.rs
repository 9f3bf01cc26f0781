//! `smolvm bench`: how fast and how small smolvm's VMs are, measured against the raw VMM in the same run
//! (issue 8). A benchmark, never a test: nothing here asserts a timing; targets are reported as met or
//! missed with their margin.

pub mod baseline;
mod error;
pub mod machine;
pub mod mem;
pub mod report;
pub mod stats;
pub mod watch;

pub use error::BenchError;
pub use report::{BenchReport, Row, Section, SectionReport, TargetCheck, Unit};
