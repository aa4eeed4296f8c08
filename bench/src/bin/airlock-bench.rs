//! `cargo xtask bench`: Airlock's per-packet cost, live drop rate and policy load
//! times against the kernel's floor and against xdp-filter and nftables, written
//! to `<out>/latest.md` and `<out>/latest.json`. Needs root; everything happens in
//! throwaway namespaces with private bpffs mounts, and every loop is bounded.
//!
//! Usage: airlock-bench [--out DIR] [--quick] [--per-packet-only | --control-only | --live-only] [--live-packet-socket] [--variant NAME=OBJECT]... [--datapath-log LEVEL]...
//! (`--quick`: sizes up to 10,000 prefixes only, for trying the suite out;
//! `--live-packet-socket`: live rows from a raw packet socket where the kernel
//! refuses its own generator; `--variant`: also time an experimental build of
//! the XDP program, same maps; `--datapath-log LEVEL`: also time the production
//! program loaded with its aya-log lines at LEVEL, as variant `log-LEVEL`.)
//! `AIRLOCK_BENCH_SIZES=100000,1000000` (prefix counts, comma-separated)
//! measures those policy sizes only, for variant runs aimed at one size.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use airlock::{compile, loader::LoadedFilter, loader::PolicySummary, policy};
use airlock_bench::{
    bench::{
        RUNS, Stats, control, egress,
        live::{LiveBed, Rate, Source, Window},
        load::LoadLog,
        peers::{self, Nftables, XdpFilter},
        per_packet::{self, Floor, Subject, timed},
        pin_to_cpu,
        policies::{self, Workload},
        production, progress,
        report::{LibraryRow, LiveRow, Results},
        sandbox, unpin,
    },
    netns::{PrivateBpffs, require_root},
};
use anyhow::{Context as _, Result};
use serde_json::json;

/// Each live measurement window.
const WINDOW: Duration = Duration::from_millis(1000);
/// Longest any one external load (nft -f, an airlock run) may take.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
const PORT_RANGES: [usize; 3] = [1, 10, 60];
/// Loads of Airlock's program whose runs each per-packet figure pools.
const AIRLOCK_LOADS: usize = 3;

fn main() -> ExitCode {
    require_root();
    // Before any thread exists (the kernel requires it): from here on, every
    // namespace the bench creates dies with it, however it ends.
    if let Err(e) = sandbox::enter() {
        eprintln!("airlock-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    airlock_bench::bench::remember_cpus();
    let mut out = PathBuf::from("bench-results");
    let mut quick = false;
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--quick" => quick = true,
            "--per-packet-only" => options.per_packet_only = true,
            "--control-only" => options.control_only = true,
            "--live-only" => options.live_only = true,
            "--live-packet-socket" => options.live_packet_socket = true,
            "--variant" => {
                let Some((name, path)) = args.next().and_then(|v| {
                    v.split_once('=')
                        .map(|(n, p)| (n.to_owned(), PathBuf::from(p)))
                }) else {
                    eprintln!("--variant takes NAME=OBJECT");
                    return ExitCode::from(2);
                };
                options.variants.push((name, path));
            }
            "--datapath-log" => {
                let level = match args.next().as_deref() {
                    Some("error") => aya_log::Level::Error,
                    Some("warn") => aya_log::Level::Warn,
                    Some("info") => aya_log::Level::Info,
                    Some("debug") => aya_log::Level::Debug,
                    Some("trace") => aya_log::Level::Trace,
                    _ => {
                        eprintln!("--datapath-log takes error, warn, info, debug or trace");
                        return ExitCode::from(2);
                    }
                };
                options.datapath_logs.push(level);
            }
            other => {
                eprintln!(
                    "usage: airlock-bench [--out DIR] [--quick] [--per-packet-only | --control-only | --live-only] [--live-packet-socket] [--variant NAME=OBJECT]... [--datapath-log LEVEL]... (unknown argument {other:?})"
                );
                return ExitCode::from(2);
            }
        }
    }
    match run(&out, quick, &options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-bench: {e:?}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Options {
    per_packet_only: bool,
    /// Only the control-plane rows (apply and re-apply times): for iterating on the loader.
    control_only: bool,
    /// Only the live rows, the figures that move most from run to run: for
    /// iterating on them (and profiling the receiver).
    live_only: bool,
    /// Live rows from a raw packet socket when the kernel refuses its own
    /// generator (see live.rs for why not by default).
    live_packet_socket: bool,
    variants: Vec<(String, PathBuf)>,
    /// The production program with its datapath log lines on, at these levels.
    datapath_logs: Vec<aya_log::Level>,
}

fn run(out: &Path, quick: bool, options: &Options) -> Result<()> {
    let started = Instant::now();
    // Issue 19's targets are at 100k and 1M prefixes, which `--quick` leaves out
    // and a full run reaches only after the small sizes: a variant run can ask
    // for just those.
    let sizes_from_env: Option<Vec<usize>> =
        std::env::var("AIRLOCK_BENCH_SIZES").ok().map(|list| {
            list.split(',')
                .filter_map(|size| size.trim().parse().ok())
                .collect()
        });
    let sizes: &[usize] = match &sizes_from_env {
        Some(sizes) => sizes,
        None if quick => &[0, 1000, 10_000],
        None => &[0, 1000, 100_000, 1_000_000],
    };
    let mut load = LoadLog::default();
    load.sample("start");
    let mut floor_pass = Floor::load("xdp-pass")?;
    let mut floor_drop = Floor::load("xdp-drop")?;
    let mut floor_peek = Floor::load("xdp-peek-drop")?;
    let (mut filter, settings) = production::load()?;
    let verified = (
        filter.program()?.info()?.verified_instruction_count(),
        filter
            .egress_program()?
            .info()?
            .verified_instruction_count(),
    );
    let mut results = Results {
        machine: machine(),
        settings,
        load,
        live_source: String::new(),
        live_notes: Vec::new(),
        live_by_cpu: false,
        per_packet: Vec::new(),
        egress: Vec::new(),
        library: Vec::new(),
        live: Vec::new(),
        control: Vec::new(),
        agent_rss: Err("not measured".into()),
        agent_prefixes: if quick { 10_000 } else { 100_000 },
        verified,
        notes: Vec::new(),
        seconds: 0.0,
    };
    let mut live = LiveBed::new(options.live_packet_socket)?;
    results.live_source = live.source_name().to_owned();
    results.live_notes = live.source_notes.clone();
    results.live_by_cpu = matches!(live.source, Source::PacketSocket(_));
    progress(format!("live traffic: {}", live.source_name()));
    for note in &live.source_notes {
        progress(note);
    }
    if !live.available() {
        progress(format!(
            "no live traffic source: {}; carrying on without the live rows",
            live.source_notes.join("; ")
        ));
    }
    // The policy the first row's apply replaces: none.
    let mut previous = compile_yaml(
        "version: 1\ninterfaces: [eth0]\ndefault: drop\n",
        tempfile::tempdir()?.path(),
    )?;
    let bpffs = PrivateBpffs::new();
    let tempdir = tempfile::tempdir()?;
    // AIRLOCK_BENCH_WORKDIR: keep the generated policies and lists there (to profile
    // the CLI on them afterwards).
    let workdir = std::env::var_os("AIRLOCK_BENCH_WORKDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tempdir.path().to_owned());
    std::fs::create_dir_all(&workdir)?;
    let xdp_filter_object = peers::find_xdp_filter_object();
    if xdp_filter_object.is_none() {
        results.notes.push(format!(
            "xdp-filter not measured: {} not found (apt-get install xdp-tools)",
            peers::XDP_FILTER_OBJECT
        ));
    }
    let have_nft = peers::have("nft");
    let mut variants = Vec::new();
    for (name, path) in &options.variants {
        let dir = bpffs.path().join(format!("variant-{name}"));
        variants.push(per_packet::Variant::load(name, path, &dir)?);
    }
    for &level in &options.datapath_logs {
        let name = format!("log-{}", format!("{level:?}").to_lowercase());
        let dir = bpffs.path().join(format!("variant-{name}"));
        let ebpf = airlock::loader::load_object_logging(level as u8)
            .map_err(|e| anyhow::anyhow!("loading the program with logging on: {e}"))?;
        variants.push(per_packet::Variant::from_ebpf(&name, ebpf, &dir)?);
    }
    // Airlock's program loaded again for its figures to pool (see
    // `per_packet::Subject::reloads`), filled and configured as a variant is.
    let mut reloads = Vec::new();
    for load in 2..=AIRLOCK_LOADS {
        let name = format!("airlock-load{load}");
        let dir = bpffs.path().join(&name);
        let ebpf = airlock::loader::load_object()
            .map_err(|e| anyhow::anyhow!("loading Airlock's program again: {e}"))?;
        reloads.push(per_packet::Variant::from_ebpf(&name, ebpf, &dir)?);
    }
    results.notes.push(format!(
        "Airlock's per-packet and egress figures pool {AIRLOCK_LOADS} loads of its programs (each with its own maps, filled alike; {} runs each): the kernel starts every JIT image at a random offset, which moves a packet's cost by 1-2 ns from load to load.",
        airlock_bench::bench::RUNS
    ));
    // What logging (or any variant) adds to the program the kernel runs.
    for variant in &mut variants {
        let count = variant.program()?.info()?.verified_instruction_count();
        results.notes.push(format!(
            "Variant {}: the kernel's verifier processed {} instructions (XDP).",
            variant.name,
            count.map_or("?".to_owned(), |c| c.to_string())
        ));
    }
    results.notes.push(
        "xdp-filter (deny mode, IP features) matches exact addresses only: every prefix of the policy is loaded as its network address, so it enforces a looser policy (no prefixes, no ports) and its maps are sized to fit (its own limit is 10,000 per family). In deny mode it also drops ARP from unlisted senders, where Airlock passes all non-IP frames.".into(),
    );
    results.notes.push(format!(
        "Policies labelled `{}` are the one-range policy plus `management: [{}]`. Where a family has no management or deny prefix, a frame to a port no rule covers cannot depend on its source, and the program skips the lookup; with one, every frame of the family is looked up. Those rows show the cost a policy with an anti-lockout entry pays.",
        policies::MANAGEMENT_LABEL,
        policies::MANAGEMENT.join(", ")
    ));
    let packet_sizes: &[usize] = if options.control_only { &[] } else { sizes };
    for &generated in packet_sizes {
        let bulk = policies::generate(generated, policies::SEED);
        // Beside the port-range counts, the one-range policy with a management set:
        // its uncovered-port rows must look the source up (management passes
        // anywhere), which the policies without one skip.
        let workloads = PORT_RANGES
            .map(|ranges| Workload::with_bulk(bulk.clone(), ranges))
            .into_iter()
            .chain([Workload::with_bulk(bulk.clone(), 1).with_management()]);
        for workload in workloads {
            // The peers and the live runs measure the plain one-range policy only.
            let plain_one_range = workload.port_ranges == 1 && !workload.management;
            progress(format!("policy {}", workload.label));
            results.load.sample(format!("policy {}", workload.label));
            let (library, compiled) = apply_policy(&mut filter, &workload, &workdir, &previous)?;
            results.library.push(library);
            // Twice: both generations hold this policy, so a variant that reads
            // one generation's maps only still sees it.
            for variant in variants.iter_mut().chain(&mut reloads) {
                for _ in 0..2 {
                    variant
                        .maps
                        .apply(&compiled, &PolicySummary::default())
                        .map_err(|e| {
                            anyhow::anyhow!("applying to variant {}: {e:?}", variant.name)
                        })?;
                }
            }
            let mut xdp_filter = match (&xdp_filter_object, plain_one_range) {
                (Some(object), true) => {
                    let dir = bpffs.path().join(format!("xdpf-{generated}"));
                    match XdpFilter::load(object, &workload, &dir) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            results
                                .notes
                                .push(format!("xdp-filter failed to load: {e:#}"));
                            None
                        }
                    }
                }
                _ => None,
            };
            // Each variant has its own flow table: the "reply" row needs its flow
            // open there too, or a variant's reply row times a refused segment.
            if !options.live_only {
                for variant in variants.iter_mut().chain(&mut reloads) {
                    variant.open_flow()?;
                }
            }
            let mut variant_programs = Vec::new();
            for variant in &mut variants {
                let name = variant.name.clone();
                variant_programs.push((name, variant.program()?));
            }
            let mut reload_programs = Vec::new();
            for reload in &mut reloads {
                reload_programs.push(reload.program()?);
            }
            if !options.live_only {
                egress::open_flow(&mut filter)?;
                pin_to_cpu(last_cpu());
                let LoadedFilter { ebpf, maps } = &mut filter;
                let samples = || -> Result<[u64; 3]> {
                    Ok(maps
                        .counters()
                        .map_err(|e| anyhow::anyhow!("reading the counters: {e}"))?
                        .samples)
                };
                let program: &mut aya::programs::Xdp = ebpf
                    .program_mut(airlock_common::PROGRAM_NAME)
                    .context("no XDP program")?
                    .try_into()?;
                let rows = per_packet::measure(
                    &workload,
                    floor_pass.program()?,
                    Subject {
                        program,
                        reloads: reload_programs,
                        samples: &samples,
                    },
                    match xdp_filter.as_mut() {
                        Some(x) => Some(x.program()?),
                        None => None,
                    },
                    &mut variant_programs,
                    per_packet::REPEAT,
                )?;
                if results.egress.is_empty() {
                    // The egress program's cost does not depend on the policy's size
                    // (one port-array read, one flow lookup): measured once.
                    // Variants too (their own maps hold the same policy), so
                    // an experimental egress build is compared in the same runs.
                    let mut reload_egress = Vec::new();
                    for reload in &mut reloads {
                        reload_egress.push(reload.egress_program()?);
                    }
                    let mut variant_egress = Vec::new();
                    for variant in &mut variants {
                        let name = variant.name.clone();
                        variant_egress.push((name, variant.egress_program()?));
                    }
                    results.egress = egress::measure(
                        &mut filter,
                        policies::PORT,
                        &mut reload_egress,
                        &mut variant_egress,
                    )?;
                }
                unpin();
                results.per_packet.extend(rows);
            }
            previous = compiled;
            if plain_one_range && !options.per_packet_only && live.available() {
                live_rows(
                    &mut results,
                    &mut live,
                    &workload,
                    &mut filter,
                    &mut floor_pass,
                    &mut floor_drop,
                    &mut floor_peek,
                    xdp_filter.as_mut(),
                    have_nft,
                )?;
            }
        }
    }
    if !results.live.is_empty() && !live.threaded_napi {
        results.notes.push(
            "threaded NAPI unavailable: generator and receiver shared a CPU in the live test"
                .into(),
        );
    }
    // The in-process filter's maps hold two 1M-prefix policies; free them first.
    drop(filter);
    drop(variants);
    drop(reloads);
    drop(previous);
    let control_sizes: &[usize] = if options.per_packet_only || options.live_only {
        &[]
    } else {
        sizes
    };
    for &generated in control_sizes.iter().filter(|&&n| n >= 1000) {
        let workload = Workload::new(generated, 1);
        progress(format!("control plane, {} prefixes", workload.prefixes));
        results
            .load
            .sample(format!("control plane, {} prefixes", workload.prefixes));
        match control::measure(
            &live.bed.server,
            &live.bed.server_if,
            &workload,
            &workdir,
            LOAD_LIMIT,
        ) {
            Ok(row) => results.control.push(row),
            Err(e) => results.notes.push(format!(
                "control plane at {generated} prefixes failed: {e:#}"
            )),
        }
    }
    let agent_size = results.agent_prefixes;
    progress("agent memory");
    results.agent_rss = if options.per_packet_only || options.control_only || options.live_only {
        Err("not measured (--per-packet-only, --control-only or --live-only)".into())
    } else {
        match control::agent_rss(
            &live.bed.server,
            &live.bed.server_if,
            &Workload::new(agent_size, 1),
            &workdir,
            Duration::from_secs(8),
        ) {
            Ok(Some(kib)) => Ok(kib),
            Ok(None) => Err("agent pending: this airlock has no `agent` command yet".into()),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    results.load.sample("end");
    results.seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("latest.md"), results.markdown())?;
    std::fs::write(
        out.join("latest.json"),
        serde_json::to_string_pretty(&results.json())?,
    )?;
    progress(format!(
        "wrote {} and latest.json in {:.0} s",
        out.join("latest.md").display(),
        results.seconds
    ));
    Ok(())
}

fn last_cpu() -> usize {
    airlock_bench::bench::online_cpus().saturating_sub(1)
}

/// Parses, compiles and writes `workload`'s policy into `filter`'s maps, timing
/// each [`RUNS`] times. The map write is timed from `previous` (the policy of the
/// row before) in both copies, as when an apply replaces it.
fn apply_policy(
    filter: &mut LoadedFilter,
    workload: &Workload,
    dir: &Path,
    previous: &compile::Compiled,
) -> Result<(LibraryRow, compile::Compiled)> {
    let list = dir.join("lib-bulk.txt");
    std::fs::write(&list, workload.list_text())?;
    let yaml = workload.policy_yaml("eth0", Path::new("lib-bulk.txt"));
    let path = dir.join("lib-policy.yaml");
    let mut parse_s = Vec::new();
    let mut parsed = None;
    for _ in 0..RUNS {
        let (policy, seconds) = timed(|| policy::parse_str(&yaml, &path));
        parse_s.push(seconds);
        parsed = Some(policy.map_err(|e| anyhow::anyhow!("generated policy is invalid: {e}"))?);
    }
    let policy = parsed.context("no runs")?;
    let mut compile_s = Vec::new();
    let mut compiled = None;
    for _ in 0..RUNS {
        let (result, seconds) = timed(|| compile::compile(&policy));
        compile_s.push(seconds);
        compiled = Some(result?);
    }
    let compiled = compiled.context("no runs")?;
    let mut apply_s = Vec::new();
    for _ in 0..RUNS {
        apply(filter, previous)?;
        apply(filter, previous)?;
        let (applied, seconds) = timed(|| apply(filter, &compiled));
        applied?;
        apply_s.push(seconds);
    }
    let reapply_s = if workload.bulk.is_empty() {
        None
    } else {
        Some(reapply_1pct(filter, workload, &compiled, dir)?)
    };
    let row = LibraryRow {
        label: workload.label.clone(),
        prefixes: workload.prefixes,
        parse_s: Stats::of(&parse_s),
        compile_s: Stats::of(&compile_s),
        apply_s: Stats::of(&apply_s),
        reapply_s,
        entries_v4: compiled.v4.len(),
        entries_v6: compiled.v6.len(),
    };
    Ok((row, compiled))
}

/// Writes `compiled` into the filter's inactive copy and makes it the active one.
fn apply(filter: &mut LoadedFilter, compiled: &compile::Compiled) -> Result<()> {
    filter
        .maps
        .apply(compiled, &PolicySummary::default())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("applying: {e:?}"))
}

/// A policy from its text (`dir`: where relative imports would be).
fn compile_yaml(yaml: &str, dir: &Path) -> Result<compile::Compiled> {
    let policy = policy::parse_str(yaml, &dir.join("policy.yaml"))
        .map_err(|e| anyhow::anyhow!("policy is invalid: {e}"))?;
    Ok(compile::compile(&policy)?)
}

/// The map update of a 1% change alone (no CLI, no parsing), [`RUNS`] times: with
/// both copies holding `compiled`, the time to apply it with 1% of the prefixes
/// replaced. Leaves `compiled` in force (and in the other copy the changed policy).
fn reapply_1pct(
    filter: &mut LoadedFilter,
    workload: &Workload,
    compiled: &compile::Compiled,
    dir: &Path,
) -> Result<Stats> {
    let changed = Workload::with_bulk(
        policies::mutate(&workload.bulk, 1, policies::SEED + 1),
        workload.port_ranges,
    );
    std::fs::write(dir.join("lib-bulk-changed.txt"), changed.list_text())?;
    let changed = compile_yaml(
        &changed.policy_yaml("eth0", Path::new("lib-bulk-changed.txt")),
        dir,
    )?;
    let mut seconds = Vec::new();
    for _ in 0..RUNS {
        apply(filter, compiled)?;
        apply(filter, compiled)?;
        let (applied, s) = timed(|| apply(filter, &changed));
        applied?;
        seconds.push(s);
    }
    apply(filter, compiled)?;
    Ok(Stats::of(&seconds))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the bench's loaded programs"
)]
fn live_rows(
    results: &mut Results,
    live: &mut LiveBed,
    workload: &Workload,
    filter: &mut LoadedFilter,
    floor_pass: &mut Floor,
    floor_drop: &mut Floor,
    floor_peek: &mut Floor,
    mut xdp_filter: Option<&mut XdpFilter>,
    have_nft: bool,
) -> Result<()> {
    let cases = per_packet::cases(workload);
    let mut traffic: Vec<(&'static str, bool, Vec<u8>)> = vec![
        ("refused IPv4 TCP", false, find(&cases, "dropped IPv4 TCP")?),
        ("refused IPv6 TCP", false, find(&cases, "dropped IPv6 TCP")?),
    ];
    if workload.prefixes == 100_011 || workload.prefixes == 10_011 {
        traffic.push(("allowed IPv4 TCP", true, find(&cases, "allowed IPv4 TCP")?));
    }
    let mut nft = if have_nft {
        Some(Nftables::load(
            &live.bed.server,
            &live.bed.server_if.clone(),
            workload,
            LOAD_LIMIT,
        ))
    } else {
        None
    };
    // Loaded once, unloaded between measurements: the chain only runs while the
    // XDP_PASS program lets frames through, so measure it last for each traffic.
    let nft_load_s = nft
        .as_ref()
        .and_then(|n| n.as_ref().ok())
        .map(|n| n.load_time.as_secs_f64());
    for (name, pass, frame) in traffic {
        progress(format!("live {} {name}", workload.label));
        let frame = live.addressed(&frame);
        let floor_name = if pass { "xdp-pass" } else { "xdp-drop" };
        // Round by round, one window of each program in turn (see LiveBed::measure).
        let mut windows: [Vec<Window>; 5] = Default::default();
        for _ in 0..RUNS {
            let floor = if pass {
                floor_pass.program()?
            } else {
                floor_drop.program()?
            };
            windows[0].push(live.measure(floor, &frame, WINDOW)?);
            if !pass {
                windows[4].push(live.measure(floor_peek.program()?, &frame, WINDOW)?);
            }
            windows[1].push(live.measure(filter.program()?, &frame, WINDOW)?);
            if let Some(x) = xdp_filter.as_deref_mut() {
                windows[2].push(live.measure(x.program()?, &frame, WINDOW)?);
            }
            if let Some(Ok(_)) = &nft {
                windows[3].push(live.measure(floor_pass.program()?, &frame, WINDOW)?);
            }
        }
        let [floor, airlock, xdpf, nft_windows, peek] = windows;
        results.live.push(LiveRow {
            label: workload.label.clone(),
            prefixes: workload.prefixes,
            traffic: name,
            floor_name,
            floor: Rate::of(&floor),
            peek_floor: (!peek.is_empty()).then(|| Rate::of(&peek)),
            airlock: Rate::of(&airlock),
            xdp_filter: (!xdpf.is_empty()).then(|| Rate::of(&xdpf)),
            nft: match &nft {
                Some(Ok(_)) => Ok(Rate::of(&nft_windows)),
                Some(Err(e)) => Err(format!("{e:#}")),
                None => Err("nft not installed".into()),
            },
            nft_load_s,
        });
    }
    // Removing a large table takes a while; do it now rather than at exit.
    nft.take();
    Ok(())
}

fn find(cases: &[per_packet::Case], name: &str) -> Result<Vec<u8>> {
    cases
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.bytes.clone())
        .with_context(|| format!("no case {name}"))
}

fn machine() -> serde_json::Value {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    json!({
        "kernel": sh("uname -r"),
        "cpu": cpu,
        "cpus": airlock_bench::bench::online_cpus(),
        "commit": sh("git rev-parse --short HEAD 2>/dev/null; git diff --quiet HEAD 2>/dev/null || echo '(modified)'").replace('\n', " "),
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "nft": sh("nft --version"),
        "xdp_filter": sh("xdp-filter --version 2>&1 | head -1"),
    })
}
