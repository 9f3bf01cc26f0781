//! `smolvm_bench::run` end to end against real QEMU (TCG here): the benchmark runs, reports every
//! figure it promises, and leaves no VM, VMM process or file behind. No timing is asserted: the figures
//! are the benchmark's business, this only checks that it works. Needs `SMOLVM_E2E=1` (skips otherwise);
//! builds the default image on first use (under `target/tmp`). The exec section's SSH measurement runs
//! in a private network namespace of the benchmark's own.

use std::path::Path;

use smolvm_bench::{self as bench, BenchOptions, Section};

fn e2e() -> bool {
    if std::env::var("SMOLVM_E2E").as_deref() != Ok("1") {
        eprintln!("skipping: real-QEMU benchmark run; set SMOLVM_E2E=1 to run it");
        return false;
    }
    true
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn one_iteration_reports_every_figure_and_cleans_up() {
    if !e2e() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let opts = BenchOptions {
        iterations: 1,
        sections: vec![Section::Lifecycle, Section::ColdStart, Section::Exec],
        data_dir: Some(data.path().join("d")),
        socket_dir: Some(data.path().join("s")),
        // The tests' image cache under the target directory, built at most once per target dir.
        image_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images")),
        ..BenchOptions::default()
    };
    let report = bench::run(&opts).expect("benchmark run");
    for s in &report.sections {
        assert!(s.error.is_none(), "{:?} failed: {:?}", s.section, s.error);
    }
    let cold = report
        .sections
        .iter()
        .find(|s| s.section == Section::ColdStart)
        .unwrap();
    for name in [
        "create",
        "start (-> agent Ready)",
        "first command (`true` via sh -lc)",
        "baseline: raw VMM spawn -> agent Ready",
        "cold start / baseline (medians)",
    ] {
        let row = cold.row(name).unwrap_or_else(|| panic!("no row {name:?}"));
        assert!(row.headline().is_some_and(|v| v > 0.0), "{row:?}");
    }
    assert!(
        cold.notes.iter().any(|n| n.contains("argv equals")),
        "the baseline must boot smolvm's exact argv: {:?}",
        cold.notes
    );
    let exec = report
        .sections
        .iter()
        .find(|s| s.section == Section::Exec)
        .unwrap();
    let ssh = exec
        .rows
        .iter()
        .find(|r| r.name.starts_with("SSH exec"))
        .unwrap();
    assert!(
        ssh.stats.is_some(),
        "SSH exec not measured: {:?}",
        ssh.not_measured
    );
    // Every target of the chosen sections is checked.
    // lifecycle < 50 ms; cold start <= 1.2 s and <= 1.1 x the floor; warm exec argv and sh -lc.
    assert_eq!(
        report.targets().count(),
        5,
        "{:#?}",
        report.targets().collect::<Vec<_>>()
    );
    // The JSON file is what the CLI writes; it must serialise.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["machine"]["accelerator"], report.machine.accelerator);

    // Nothing left: no VM rows, no disks, no VMM running on our sockets.
    let m = smolvm::SmolVmManager::new(
        Some(&data.path().join("d")),
        Some(&data.path().join("s")),
        None,
    )
    .unwrap();
    assert!(m.list_vms(None).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(m.disk_dir()).unwrap().count(), 0);
    let sockets = data.path().join("s");
    assert!(processes_mentioning(&sockets.to_string_lossy()).is_empty());
}
