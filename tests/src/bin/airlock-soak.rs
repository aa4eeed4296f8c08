//! The long runs (`cargo xtask soak`), each printing its figures; exits 1 if any
//! fails:
//! - differential: random policies and frames through the real XDP program, every
//!   verdict compared with the reference model;
//! - swaps: policy swaps by the CLI and the agent under traffic from several
//!   threads, every frame's verdict and counter checked against the policies in
//!   force while it ran;
//! - kills: `airlock apply` and the agent SIGKILLed at every step, the confirm
//!   watchdog in its window and rollback, and applies killed after random delays;
//! - fuzz: the policy pipeline fuzzed (parse, validate, compile, reference model
//!   against the compiled tables);
//! - faults: the filtered interface deleted and recreated under the agent; the pin
//!   root without bpffs, read-only, unmounted, the state directory full; map
//!   creation refused by a memory cgroup; the interface renamed, the default route
//!   moved; the wall clock jumping in a confirm window; agent reloads in a row.
//! - upgrades: the pinned filter taken over by a build with another map layout
//!   and back, real datagrams and checked frames crossing it throughout.
//!
//! `airlock-soak [FRAMES] [SEED] [--only PART]... [--swaps N] [--kills N] [--fuzz N] [--churn N] [--takeovers N] [--reloads N]`:
//! FRAMES defaults to 1,000,000, SEED to a fresh one (printed, so a failure can be
//! replayed with the same seed; it seeds the random kills and the fuzzer too);
//! `--swaps` 2,000 (half by the CLI, half by the agent), `--kills` 500 random kills
//! (besides the named steps), `--fuzz` 10,000,000 executions, `--churn` 100
//! interface deletions, `--takeovers` 100, `--reloads` 1,000 agent reloads (valid
//! and invalid alternating).

use std::process::ExitCode;
use std::time::Instant;

use airlock_integration::{differential, faults, fixture::Fixture, fuzz, kills, swaps, upgrades};

struct Args {
    frames: u64,
    seed: u64,
    only: Vec<String>,
    swaps: u64,
    kills: u64,
    fuzz: u64,
    churn: u64,
    takeovers: u64,
    reloads: u64,
}

fn count(text: &str) -> u64 {
    text.replace('_', "")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a count: {e}"))
}

fn parse_args() -> Args {
    let mut args = Args {
        frames: 1_000_000,
        seed: rand::random::<u64>(),
        only: Vec::new(),
        swaps: 2_000,
        kills: 500,
        fuzz: 10_000_000,
        churn: 100,
        takeovers: 100,
        reloads: 1_000,
    };
    let mut positional = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--only" => args.only.push(value()),
            "--swaps" => args.swaps = count(&value()),
            "--kills" => args.kills = count(&value()),
            "--fuzz" => args.fuzz = count(&value()),
            "--churn" => args.churn = count(&value()),
            "--takeovers" => args.takeovers = count(&value()),
            "--reloads" => args.reloads = count(&value()),
            _ if positional == 0 => {
                args.frames = count(&arg);
                positional += 1;
            }
            _ if positional == 1 => {
                args.seed = differential::parse_seed(&arg);
                positional += 1;
            }
            _ => panic!("unexpected argument {arg:?}"),
        }
    }
    args
}

fn main() -> ExitCode {
    let args = parse_args();
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    let seed = args.seed;
    println!(
        "soak: seed {seed:#x} (replay: cargo xtask soak --frames {} --seed {seed:#x} --swaps {} --kills {} --fuzz {})",
        args.frames, args.swaps, args.kills, args.fuzz
    );
    let mut results: Vec<(&str, bool, String)> = Vec::new();
    if wanted("differential") {
        results.push(differential_run(args.frames, seed));
    }
    if wanted("swaps") {
        results.push(swaps_run(args.swaps));
    }
    if wanted("kills") {
        results.push(kills_run(args.kills, seed));
    }
    if wanted("fuzz") {
        results.push(fuzz_run(args.fuzz, seed));
    }
    if wanted("faults") {
        results.push(faults_run(args.churn, args.reloads));
    }
    if wanted("upgrades") {
        results.push(upgrades_run(args.takeovers));
    }
    println!("\nsoak: summary (seed {seed:#x})");
    for (part, ok, figures) in &results {
        println!(
            "  {part:<12} {}  {figures}",
            if *ok { "ok  " } else { "FAIL" }
        );
    }
    if results.iter().all(|(_, ok, _)| *ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn differential_run(frames: u64, seed: u64) -> (&'static str, bool, String) {
    println!("soak: differential: {frames} frames, seed {seed:#x}");
    let started = Instant::now();
    let mut shown = 0;
    let report = differential::run(seed, frames as usize, |r| {
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
    let figures = format!(
        "{} frames, {} disagreements {:?}",
        report.frames,
        report.disagreements.len(),
        report.kinds()
    );
    ("differential", report.disagreements.is_empty(), figures)
}

fn swaps_run(total: u64) -> (&'static str, bool, String) {
    println!("soak: swaps: {total} under traffic, half by the CLI, half by the agent");
    let f = Fixture::new("sks");
    let report = swaps::run(&f, total / 2, total - total / 2);
    for example in &report.examples {
        println!("---- wrong ----\n{example}");
    }
    let figures = format!(
        "{} swaps, {} frames checked ({} overlapping a flip), {} wrong verdicts, {} unattributed",
        report.swaps, report.packets, report.overlapping, report.wrong, report.unattributed
    );
    ("swaps", report.ok(), figures)
}

fn kills_run(random: u64, seed: u64) -> (&'static str, bool, String) {
    println!("soak: kills: every step, confirm, agent, then {random} random kills");
    let started = Instant::now();
    let bed = kills::Bed::new("skk");
    let mut report = kills::Report::default();
    kills::at_every_step(&bed, &mut report);
    kills::during_confirm(&bed, &mut report);
    kills::agent_at_steps(&bed, &mut report);
    let named = report.kills;
    kills::at_random(&bed, random, seed, &mut report);
    for example in &report.examples {
        println!("---- failure ----\n{example}");
    }
    let figures = format!(
        "{} kills ({named} at named steps, {} after random delays; {} applies finished first) in {:.0?}: {} wrong states, {} status lies, {} failed repairs",
        report.kills,
        report.kills - named,
        report.finished_first,
        started.elapsed(),
        report.wrong_states,
        report.status_lies,
        report.failed_repairs
    );
    (
        "kills",
        report.ok() && report.kills >= named + random,
        figures,
    )
}

fn fuzz_run(executions: u64, seed: u64) -> (&'static str, bool, String) {
    println!("soak: fuzz: {executions} executions, seed {seed:#x}");
    let started = Instant::now();
    let checker = fuzz::counts_panics();
    let report = fuzz::run(seed, executions, |r| {
        if r.executions % 1_000_000 == 0 {
            println!(
                "soak: fuzz: {} executions, {} compiled, {} packets, {} mismatches, {} panics, {:.0?}",
                r.executions,
                r.compiled,
                r.packets,
                r.mismatches,
                r.panics,
                started.elapsed()
            );
        }
    });
    for (input, what) in &report.failures {
        println!("---- {what}\n{input:?}");
    }
    let figures = format!(
        "{} executions ({} parsed, {} compiled, {} packets checked) in {:.0?}: {} mismatches, {} panics, {} hangs (slowest {:.0?}), RSS {} -> {} KiB",
        report.executions,
        report.parsed,
        report.compiled,
        report.packets,
        started.elapsed(),
        report.mismatches,
        report.panics,
        report.hangs,
        report.slowest,
        report.rss_kib.0,
        report.rss_kib.1
    );
    ("fuzz", checker && report.ok(), figures)
}

fn faults_run(cycles: u64, reloads: u64) -> (&'static str, bool, String) {
    println!(
        "soak: faults: the interface deleted and recreated {cycles} times under the agent; filesystems, memory, interfaces, clock; {reloads} agent reloads"
    );
    let started = Instant::now();
    let bed = kills::Bed::new("skf");
    let report = faults::interface_churn(&bed, cycles);
    for example in &report.examples {
        println!("---- failure ----\n{example}");
    }
    drop(bed);
    let mut ok = report.ok() && report.cycles == cycles;
    let mut tallies = Vec::new();
    let f = Fixture::new("skg");
    tallies.push(faults::bpffs::all(&f));
    tallies.push(faults::memory::map_creation_refused(&f));
    tallies.push(faults::ifaces::all(&f));
    tallies.push(faults::clock::jumps(&f));
    let (churn, samples) = faults::reloads::churn(&f, reloads);
    println!(
        "soak: faults: reload churn samples (reload, RSS KiB, descriptors): {:?}",
        samples.samples
    );
    tallies.push(churn);
    let (mut tried, mut checks, mut wrong) = (cycles, 0, 0);
    let mut unfiltered = std::time::Duration::ZERO;
    for t in &tallies {
        println!("soak: faults: {}", t.summary());
        for failure in &t.failures {
            println!("---- failure ----\n{failure}");
        }
        ok &= t.ok();
        tried += t.faults;
        checks += t.checks;
        wrong += t.wrong_verdicts;
        unfiltered += t.unfiltered;
    }
    let figures = format!(
        "{tried} faults in {:.0?} ({} interface deletions: {} not repaired, slowest repair {:.1?}; {} more of {} kinds), {checks} packet checks: {wrong} wrong verdicts; time without a filter where there had been one: {unfiltered:.1?} (bpffs unmounted: the kernel drops the pins)",
        started.elapsed(),
        report.cycles,
        report.unrepaired,
        report.slowest_repair,
        tried - cycles,
        tallies.len(),
    );
    ("faults", ok, figures)
}

fn upgrades_run(takeovers: u64) -> (&'static str, bool, String) {
    println!(
        "soak: upgrades: {takeovers} takeovers of the pinned filter by a build with another map layout, and back, under traffic"
    );
    let started = Instant::now();
    let f = Fixture::new("sku");
    let report = upgrades::run(&f, takeovers);
    for failure in &report.failures {
        println!("---- failure ----\n{failure}");
    }
    let figures = format!("{} in {:.0?}", report.figures(), started.elapsed());
    (
        "upgrades",
        report.ok() && report.takeovers == takeovers,
        figures,
    )
}
