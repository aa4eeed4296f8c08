//! The long randomized differential run (`cargo xtask soak`): random policies and
//! frames through the real XDP program, every verdict compared with the reference
//! model. Prints the count, the seed and the result; exits 1 on any disagreement.
//!
//! `airlock-soak [FRAMES] [SEED]`: FRAMES defaults to 1,000,000, SEED to a fresh
//! one (printed, so a failure can be replayed with the same seed).

use std::process::ExitCode;
use std::time::Instant;

use airlock_integration::differential;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let frames = args.next().map_or(1_000_000, |a| {
        a.replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("FRAMES {a:?} is not a count: {e}"))
    });
    let seed = args
        .next()
        .map_or_else(rand::random::<u64>, |s| differential::parse_seed(&s));
    println!(
        "soak: {frames} frames, seed {seed:#x} (replay: cargo xtask soak --frames {frames} --seed {seed:#x})"
    );
    let started = Instant::now();
    let mut shown = 0;
    let report = differential::run(seed, frames, |r| {
        // Shown as found, so a long run that fails late has said why already.
        for (_, d) in r
            .disagreements
            .iter()
            .skip(shown)
            .take(10usize.saturating_sub(shown))
        {
            println!("---- disagreement ----\n{d}");
        }
        shown = r.disagreements.len().max(shown);
        if r.policies % 50 == 0 {
            println!(
                "soak: {} frames, {} policies, {} disagreements, {:.0?}",
                r.frames,
                r.policies,
                r.disagreements.len(),
                started.elapsed()
            );
        }
    });
    println!(
        "soak: {} frames over {} policies in {:.0?}: {} with length fields varied, {} fragment pairs in both orders",
        report.frames,
        report.policies,
        started.elapsed(),
        report.length_varied,
        report.fragment_pairs
    );
    println!("soak: verdicts by reason: {:?}", report.by_reason);
    if report.disagreements.is_empty() {
        println!(
            "soak: seed {seed:#x}: 0 disagreements in {} frames",
            report.frames
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "soak: seed {seed:#x}: {} disagreements in {} frames: {:?}",
            report.disagreements.len(),
            report.frames,
            report.kinds()
        );
        ExitCode::FAILURE
    }
}
