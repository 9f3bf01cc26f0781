//! `smolvm bench`: runs the benchmark (see the `smolvm-bench` crate), prints a table (or JSON with `--json`) and
//! writes the JSON report to a file.
//!
//! Exit status 1 when a section failed; missed targets are results, not failures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use smolvm::BackendKind;
use smolvm_bench::machine::file_stamp;
use smolvm_bench::run::{cancel_on_sigint, BenchOptions, Progress, DEFAULT_ITERATIONS};
use smolvm_bench::{BenchReport, Row, Section, Unit};

use crate::Cli;

/// Arguments of `smolvm bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Cold-start iterations (each paired with a raw-VMM baseline boot).
    #[arg(long, short = 'n', default_value_t = DEFAULT_ITERATIONS)]
    pub iterations: usize,
    /// Only these sections, comma-separated: lifecycle, cold-start, exec, memory, parallel.
    #[arg(long, value_delimiter = ',', value_parser = parse_section)]
    pub only: Vec<Section>,
    /// Write the JSON report here [default: <data dir>/bench/<UTC timestamp>.json].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// vCPUs per VM [default: the image's].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB of the VMs that do not set their own (the memory section sets 128 and 512)
    /// [default: the image's].
    #[arg(long)]
    pub mem: Option<u32>,
    /// Where the default image is cached [default: --data-dir, else smolvm's default data dir].
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Boot this cached image instead of the default one, e.g. `minimal` (built with `smolvm image
    /// build --kernel minimal`): the baseline is then the raw VMM booting that image, its floor.
    #[arg(long)]
    pub image: Option<String>,
}

fn parse_section(s: &str) -> Result<Section, String> {
    Section::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Section::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown section {s:?}; one of {}", names.join(", "))
    })
}

/// Runs `smolvm bench`. VMs go to a private temporary data dir unless `--data-dir` is given.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let backend = match cli.backend.as_deref() {
        Some(s) => BackendKind::parse_choice(s)?,
        None => None,
    };
    cancel_on_sigint();
    let opts = BenchOptions {
        iterations: args.iterations,
        backend,
        sections: args.only.clone(),
        data_dir: cli.data_dir.clone(),
        socket_dir: cli.socket_dir.clone(),
        image_dir: args.image_dir.clone(),
        image: args.image.clone(),
        vcpu_count: args.vcpus,
        mem_size_mib: args.mem,
        progress: Progress::new(|m| eprintln!("bench: {m}")),
        ..BenchOptions::default()
    };
    let report =
        smolvm_bench::run(&opts).context("benchmark failed (every VM it made was deleted)")?;
    let json = serde_json::to_string_pretty(&report)?;
    let path = match &args.output {
        Some(p) => p.clone(),
        None => default_output(cli)?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&path, format!("{json}\n"))
        .with_context(|| format!("write {}", path.display()))?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", render(&report));
    }
    eprintln!("bench: JSON report written to {}", path.display());
    Ok(if report.sections.iter().any(|s| s.error.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn default_output(cli: &Cli) -> anyhow::Result<PathBuf> {
    let data_dir = match &cli.data_dir {
        Some(d) => d.clone(),
        None => smolvm::Dirs::resolve(None, cli.socket_dir.as_deref())?.data_dir,
    };
    Ok(data_dir
        .join("bench")
        .join(format!("{}.json", file_stamp(std::time::SystemTime::now()))))
}

/// A number in its unit, with sensible precision.
fn num(v: f64, unit: Unit) -> String {
    if v.is_nan() {
        return "-".into();
    }
    match unit {
        Unit::Ratio => format!("{v:.2}x"),
        Unit::Ms if v.abs() < 10.0 => format!("{v:.2} ms"),
        Unit::Ms if v.abs() < 1000.0 => format!("{v:.1} ms"),
        Unit::Ms => format!("{v:.0} ms"),
        Unit::Mib => format!("{v:.1} MiB"),
    }
}

fn row_cells(r: &Row) -> Vec<Cell> {
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    let mut cells = vec![Cell::new(&r.name)];
    match (&r.stats, r.value, &r.not_measured) {
        (Some(s), _, _) => {
            cells.push(right(s.n.to_string()));
            for v in [s.median, s.p95, s.min, s.max] {
                cells.push(right(num(v, r.unit)));
            }
        }
        (None, Some(v), _) => {
            cells.push(right("1".into()));
            cells.push(right(num(v, r.unit)));
            cells.extend((0..3).map(|_| right(String::new())));
        }
        (None, None, _) => {
            cells.push(right("0".into()));
            cells.push(Cell::new("not measured"));
            cells.extend((0..3).map(|_| Cell::new("")));
        }
    }
    cells.push(Cell::new(match &r.target {
        Some(t) => format!(
            "{} {}: {} by {}",
            if t.inclusive { "<=" } else { "<" },
            num(t.limit, r.unit),
            if t.met { "MET" } else { "MISSED" },
            num(t.margin.abs(), r.unit),
        ),
        None => String::new(),
    }));
    cells
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |[a, b, c]| format!("{a:.2}/{b:.2}/{c:.2}"))
}

/// The text report: the machine, one table per section, then the targets.
fn render(r: &BenchReport) -> String {
    let m = &r.machine;
    let mut out = format!(
        "smolvm {} benchmark, {} on {} ({} cores, {} MiB), kernel {}, accelerator {}, QEMU {}\n\
         backend {}, guest {} MiB / {} vCPU, {} cold-start iterations, host load {} -> {}\n",
        m.smolvm_version,
        m.date,
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.cores,
        m.mem_total_mib.map_or("?".into(), |v| v.to_string()),
        m.kernel.as_deref().unwrap_or("?"),
        m.accelerator,
        m.qemu_version.as_deref().unwrap_or("not installed"),
        r.settings.backend,
        r.settings.mem_size_mib,
        r.settings.vcpu_count,
        r.settings.iterations,
        load(m.loadavg_start),
        load(m.loadavg_end),
    );
    for s in &r.sections {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["metric", "n", "median", "p95", "min", "max", "target"]);
        for row in &s.rows {
            t.add_row(row_cells(row));
        }
        out.push_str(&format!("\n{}\n{t}\n", s.title));
        for note in s
            .rows
            .iter()
            .filter_map(|r| r.note.as_ref().map(|n| (&r.name, n)))
        {
            out.push_str(&format!("  * {}: {}\n", note.0, note.1));
        }
        for (name, why) in s
            .rows
            .iter()
            .filter_map(|r| r.not_measured.as_ref().map(|w| (&r.name, w)))
        {
            out.push_str(&format!("  * {name}: not measured: {why}\n"));
        }
        for n in &s.notes {
            out.push_str(&format!("  - {n}\n"));
        }
        if let Some(e) = &s.error {
            out.push_str(&format!("  ! section failed: {e}\n"));
        }
    }
    let targets: Vec<_> = r.targets().collect();
    if !targets.is_empty() {
        out.push_str("\nTargets\n");
        for (section, row, t) in targets {
            out.push_str(&format!(
                "  {:<6} {} [{}]: {} {} vs limit {} ({}{:.0}%)\n",
                if t.met { "MET" } else { "MISSED" },
                t.target,
                section.as_str(),
                t.compares,
                num(t.actual, row.unit),
                num(t.limit, row.unit),
                if t.margin >= 0.0 {
                    "headroom "
                } else {
                    "over by "
                },
                t.margin_pct.abs(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_numbers() {
        assert_eq!(parse_section("cold-start"), Ok(Section::ColdStart));
        let e = parse_section("boot").unwrap_err();
        assert!(e.contains("lifecycle, cold-start"), "{e}");
        assert_eq!(num(1.234, Unit::Ratio), "1.23x");
        assert_eq!(num(0.5, Unit::Ms), "0.50 ms");
        assert_eq!(num(123.45, Unit::Ms), "123.5 ms");
        assert_eq!(num(4567.8, Unit::Ms), "4568 ms");
        assert_eq!(num(f64::NAN, Unit::Mib), "-");
    }
}
