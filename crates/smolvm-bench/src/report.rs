//! What a benchmark run produces: rows of figures grouped by section, each row optionally checked against
//! its target from the issue, plus the machine. Serialised as the JSON file; the CLI renders the table.

use serde::{Deserialize, Serialize};

use super::machine::Machine;
use super::stats::Summary;

/// Version of the JSON layout below.
pub const REPORT_SCHEMA: u32 = 1;

/// The benchmark sections (`--only` names in kebab case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Cold start with its phases, interleaved with the raw-VMM baseline.
    ColdStart,
    /// Warm exec latency via the agent and via SSH.
    Exec,
    /// Create + delete of a VM that is never started.
    Lifecycle,
    /// VMM memory per VM and for 8 concurrent VMs.
    Memory,
    /// 4 cold starts in parallel.
    Parallel,
    /// Start from a snapshot and fork against cold starts; pause/resume; snapshot size and time.
    Snapshot,
}

impl Section {
    /// All sections, in the order they run.
    pub const ALL: [Section; 6] = [
        Section::Lifecycle,
        Section::ColdStart,
        Section::Exec,
        Section::Memory,
        Section::Parallel,
        Section::Snapshot,
    ];

    /// The `--only` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::ColdStart => "cold-start",
            Section::Exec => "exec",
            Section::Lifecycle => "lifecycle",
            Section::Memory => "memory",
            Section::Parallel => "parallel",
            Section::Snapshot => "snapshot",
        }
    }

    /// Parses an `--only` name.
    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// A heading for the table.
    pub fn title(self) -> &'static str {
        match self {
            Section::ColdStart => "Cold start (create -> start -> first command) vs raw VMM",
            Section::Exec => "Warm exec of `true`",
            Section::Lifecycle => "Create + delete without boot",
            Section::Memory => "Memory",
            Section::Parallel => "Parallel cold start",
            Section::Snapshot => "Snapshots: from snapshot and fork vs cold start, pause/resume",
        }
    }
}

/// Units of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Mebibytes.
    Mib,
    /// A dimensionless ratio.
    Ratio,
}

impl Unit {
    /// Short label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
            Unit::Ratio => "x",
        }
    }
}

/// One measured figure: a distribution, a single value, or an honest "not measured".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Unit of every number of the row.
    pub unit: Unit,
    /// Median, p95 and friends, when there are samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Summary>,
    /// A single value (a ratio, a sum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why this figure is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_measured: Option<String>,
    /// The target from the issue and whether it was met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetCheck>,
    /// Extra context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Raw samples, in measuring order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Row {
    /// A row of samples.
    pub fn samples(name: impl Into<String>, unit: Unit, samples: Vec<f64>) -> Row {
        Row {
            name: name.into(),
            unit,
            stats: Summary::of(&samples),
            value: None,
            not_measured: None,
            target: None,
            note: None,
            samples,
        }
    }

    /// A row with one value.
    pub fn value(name: impl Into<String>, unit: Unit, value: f64) -> Row {
        Row {
            value: Some(value),
            ..Row::samples(name, unit, Vec::new())
        }
    }

    /// A row that could not be measured, saying why.
    pub fn not_measured(name: impl Into<String>, unit: Unit, reason: impl Into<String>) -> Row {
        Row {
            not_measured: Some(reason.into()),
            ..Row::samples(name, unit, Vec::new())
        }
    }

    /// Adds a target check.
    pub fn with_target(mut self, target: TargetCheck) -> Row {
        self.target = Some(target);
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    /// The representative figure: the median of samples, else the single value.
    pub fn headline(&self) -> Option<f64> {
        self.stats.as_ref().map(|s| s.median).or(self.value)
    }
}

/// A target from the issue, checked against a measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// The target in words, e.g. `cold start <= 1.1 x raw VMM`.
    pub target: String,
    /// Which figure is compared, e.g. `median`.
    pub compares: String,
    /// The limit, in the row's unit.
    pub limit: f64,
    /// True if the limit itself counts as met (`<=`), false for a strict `<`.
    pub inclusive: bool,
    /// The compared figure.
    pub actual: f64,
    /// Whether the target was met.
    pub met: bool,
    /// `limit - actual`: headroom when positive, the amount missed by when negative.
    pub margin: f64,
    /// The margin as a percentage of the limit.
    pub margin_pct: f64,
}

impl TargetCheck {
    /// `actual <= limit`.
    pub fn at_most(target: &str, compares: &str, limit: f64, actual: f64) -> TargetCheck {
        Self::new(target, compares, limit, true, actual)
    }

    /// `actual < limit`.
    pub fn below(target: &str, compares: &str, limit: f64, actual: f64) -> TargetCheck {
        Self::new(target, compares, limit, false, actual)
    }

    fn new(target: &str, compares: &str, limit: f64, inclusive: bool, actual: f64) -> TargetCheck {
        let met = if inclusive {
            actual <= limit
        } else {
            actual < limit
        };
        let margin = limit - actual;
        TargetCheck {
            target: target.to_string(),
            compares: compares.to_string(),
            limit,
            inclusive,
            actual,
            met,
            margin,
            margin_pct: if limit != 0.0 {
                margin / limit * 100.0
            } else {
                0.0
            },
        }
    }
}

/// The figures of one section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SectionReport {
    /// Which section.
    pub section: Section,
    /// Its heading.
    pub title: String,
    /// Its figures.
    pub rows: Vec<Row>,
    /// Remarks (method, what dominates a miss).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Set when the section failed part-way: the error, with its causes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SectionReport {
    /// An empty report for `section`.
    pub fn new(section: Section) -> SectionReport {
        SectionReport {
            section,
            title: section.title().to_string(),
            rows: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// How the run was configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Cold-start iterations (each with one baseline boot).
    pub iterations: usize,
    /// The backend under test.
    pub backend: String,
    /// Sections that ran.
    pub sections: Vec<Section>,
    /// Guest memory of the cold-start VMs in MiB.
    pub mem_size_mib: u32,
    /// vCPUs per VM.
    pub vcpu_count: u32,
    /// Where VMs were made.
    pub data_dir: String,
    /// The kernel, initrd and rootfs booted.
    pub image: ImageFiles,
}

/// The image files booted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFiles {
    /// Kernel.
    pub kernel: String,
    /// Initramfs.
    pub initrd: Option<String>,
    /// Root filesystem.
    pub rootfs: String,
    /// Kernel command line of the config (smolvm appends its own parameters).
    pub boot_args: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// The machine.
    pub machine: Machine,
    /// The configuration.
    pub settings: Settings,
    /// Figures per section.
    pub sections: Vec<SectionReport>,
}

impl BenchReport {
    /// Every row that carries a target, with its section.
    pub fn targets(&self) -> impl Iterator<Item = (Section, &Row, &TargetCheck)> {
        self.sections.iter().flat_map(|s| {
            s.rows
                .iter()
                .filter_map(move |r| r.target.as_ref().map(|t| (s.section, r, t)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_margins() {
        let t = TargetCheck::at_most("x", "median", 1.15, 1.15);
        assert!(t.met);
        assert_eq!(t.margin, 0.0);
        let t = TargetCheck::below("y", "p50", 2.0, 2.0);
        assert!(!t.met);
        let t = TargetCheck::below("z", "median", 50.0, 75.0);
        assert!(!t.met);
        assert_eq!(t.margin, -25.0);
        assert_eq!(t.margin_pct, -50.0);
    }

    #[test]
    fn rows_serialise_without_empty_fields() {
        let r = Row::not_measured("ssh exec", Unit::Ms, "networking has not landed");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["not_measured"], "networking has not landed");
        assert!(j.get("stats").is_none() && j.get("samples").is_none());
        let r = Row::samples("a", Unit::Ms, vec![2.0, 1.0, 3.0]);
        assert_eq!(r.headline(), Some(2.0));
        assert_eq!(Row::value("b", Unit::Ratio, 1.5).headline(), Some(1.5));
    }

    #[test]
    fn section_names() {
        for s in Section::ALL {
            assert_eq!(Section::parse(s.as_str()), Some(s));
            let j = serde_json::to_value(s).unwrap();
            assert_eq!(j, s.as_str());
        }
        assert_eq!(Section::parse("nope"), None);
    }
}
