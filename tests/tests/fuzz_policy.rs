//! The policy pipeline fuzzed (issue 20, part 3): generated and mutated policy text
//! through parse, validate and compile, and whatever compiles checked on random
//! packets, the reference model against the compiled tables. A short run here, and
//! the committed corpus replayed; `cargo xtask soak` runs 10,000,000.
//!
//! Rerun a seed: `cargo xtask soak --only fuzz --fuzz N --seed S`.

use std::path::Path;

use airlock_integration::fuzz;

fn corpus() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-corpus"))
}

#[test]
fn a_short_fuzz_run_finds_no_panic_hang_or_disagreement() {
    let executions = std::env::var("AIRLOCK_FUZZ_EXECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    assert!(fuzz::counts_panics(), "the fuzzer does not see panics");
    let report = fuzz::run(0x5eed_f022, executions, |_| {});
    eprintln!(
        "fuzz: {} executions, {} parsed, {} compiled, {} packets, {} mismatches, {} panics, {} hangs, slowest {:?}, RSS {:?} KiB",
        report.executions,
        report.parsed,
        report.compiled,
        report.packets,
        report.mismatches,
        report.panics,
        report.hangs,
        report.slowest,
        report.rss_kib
    );
    for (input, what) in &report.failures {
        eprintln!("---- {what}\n{input:?}");
    }
    assert!(report.ok(), "{report:#?}");
    assert!(
        report.compiled > executions / 100,
        "too few inputs compiled: {report:?}"
    );
}

#[test]
fn the_corpus_replays_cleanly() {
    let (files, report) = fuzz::replay(corpus());
    assert!(files >= 10, "the corpus holds {files} files");
    for (input, what) in &report.failures {
        eprintln!("---- {what}\n{input:?}");
    }
    assert!(report.ok(), "{report:#?}");
}
