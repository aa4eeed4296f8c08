//! The results: a Markdown table for people, a JSON file with every figure for
//! machines (and the plot), and the targets judged met or not met.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    RUNS, Stats,
    control::ControlRow,
    live::Rate,
    load::LoadLog,
    per_packet::{Family, Measured, Row, Sampled, XDP_DROP, XDP_PASS},
    policies::{MANAGEMENT_LABEL, size_label},
    production::Settings,
};

/// In-process control-plane figures (the library, without the CLI around it),
/// each the median of [`RUNS`] runs.
#[derive(Clone, Debug, Default)]
pub struct LibraryRow {
    pub label: String,
    pub prefixes: usize,
    pub parse_s: Stats,
    pub compile_s: Stats,
    pub apply_s: Stats,
    /// The map update of a 1% change, with both copies holding the policy.
    pub reapply_s: Option<Stats>,
    pub entries_v4: usize,
    pub entries_v6: usize,
}

/// Live rates for one policy size and kind of traffic.
#[derive(Clone, Debug)]
pub struct LiveRow {
    pub label: String,
    pub prefixes: usize,
    pub traffic: &'static str,
    /// `xdp-drop` for refused traffic, `xdp-pass` for allowed.
    pub floor_name: &'static str,
    pub floor: Rate,
    /// Refused traffic: `xdp-peek-drop`, XDP_DROP after reading the headers.
    pub peek_floor: Option<Rate>,
    pub airlock: Rate,
    pub xdp_filter: Option<Rate>,
    pub nft: Result<Rate, String>,
    pub nft_load_s: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Results {
    pub machine: Value,
    /// How Airlock was loaded and configured.
    pub settings: Settings,
    /// /proc/loadavg through the run.
    pub load: LoadLog,
    /// What sent the live test's frames, or why there are no live rows.
    pub live_source: String,
    pub live_notes: Vec<String>,
    /// The live source cannot outrun the receiver (a packet socket): live rows are
    /// compared by the receiver's CPU time per frame, not by its rate.
    pub live_by_cpu: bool,
    pub per_packet: Vec<Row>,
    /// The return-traffic egress program, per packet the host sends.
    pub egress: Vec<super::egress::EgressRow>,
    pub library: Vec<LibraryRow>,
    pub live: Vec<LiveRow>,
    pub control: Vec<ControlRow>,
    /// Agent resident memory with a policy of `agent_prefixes`, KiB, or why not
    /// measured.
    pub agent_rss: Result<u64, String>,
    pub agent_prefixes: usize,
    /// Instructions the kernel's verifier processed loading the XDP and the egress
    /// program (most of a first apply's time), where the kernel says.
    pub verified: (Option<u32>, Option<u32>),
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// One target (issues 4 and 19), judged.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub met: Option<bool>,
    pub detail: String,
}

fn action(a: u32) -> &'static str {
    match a {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        0 => "aborted",
        3 => "tx",
        _ => "?",
    }
}

fn mpps(pps: f64) -> String {
    format!("{:.2}", pps / 1e6)
}

fn ratio(s: &Stats) -> String {
    format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Results {
    /// Frames per second a program's receiver can take: the rate it took, or with
    /// a source that cannot outrun it, what its CPU time per frame allows.
    fn capacity(&self, rate: &Rate) -> f64 {
        if self.live_by_cpu {
            match rate.rx_cpu_ns.median {
                ns if ns > 0.0 => 1e9 / ns,
                _ => f64::NAN,
            }
        } else {
            rate.rx_pps.median
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        // Issue 19's targets: every IP row (allowed, refused, replies; v4, v6; with
        // and without a VLAN tag; every port-range count) against the floor.
        let ip_rows = |prefixes: usize| {
            self.per_packet
                .iter()
                .filter(move |r| r.prefixes == prefixes && r.family != Family::NonIp)
        };
        for (generated, limit) in [(100_000usize, 1.7), (1_000_000, 2.0)] {
            let rows: Vec<&Row> = ip_rows(generated + 11).collect();
            if rows.is_empty() {
                continue;
            }
            let worst = rows
                .iter()
                .map(|r| (r.airlock.ratio.median, r.case, r.workload.as_str()))
                .fold((0.0, "", ""), |a, b| if b.0 > a.0 { b } else { a });
            out.push(Target {
                name: format!(
                    "per-packet ≤ {limit}× floor at {} prefixes (every IP row)",
                    size_label(generated)
                ),
                met: Some(worst.0 <= limit),
                detail: format!("worst {:.2}× ({}, {})", worst.0, worst.1, worst.2),
            });
        }
        // IP rows: faster than xdp-filter; non-IP (which it drops, Airlock passes):
        // within 1 ns of it.
        let mut beaten = 0;
        let mut total = 0;
        let mut worst = String::new();
        for r in &self.per_packet {
            if let Some(x) = &r.xdp_filter {
                total += 1;
                let met = if r.family == Family::NonIp {
                    r.airlock.ns.median <= x.ns.median + 1.0
                } else {
                    r.airlock.ns.median < x.ns.median
                };
                if met {
                    beaten += 1;
                } else if worst.is_empty() {
                    worst = format!(
                        "{} {} ({:.1} ns against {:.1})",
                        r.workload, r.case, r.airlock.ns.median, x.ns.median
                    );
                }
            }
        }
        if total > 0 {
            out.push(Target {
                name: "per-packet lower than xdp-filter on every IP row, within 1 ns on non-IP"
                    .into(),
                met: Some(beaten == total),
                detail: format!(
                    "{beaten} of {total} rows{}",
                    if worst.is_empty() {
                        String::new()
                    } else {
                        format!("; first miss: {worst}")
                    }
                ),
            });
        }
        let open_flow: Vec<_> = self
            .egress
            .iter()
            .filter(|r| r.case.contains("open flow"))
            .collect();
        if !open_flow.is_empty() {
            let worst = open_flow
                .iter()
                .map(|r| (r.ratio.median, r.case))
                .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
            out.push(Target {
                name: "egress ≤ 1.5× its floor on an open flow".into(),
                met: Some(worst.0 <= 1.5),
                detail: format!("worst {:.2}× ({})", worst.0, worst.1),
            });
        }
        for r in self
            .live
            .iter()
            .filter(|r| r.prefixes == 100_011 && r.floor_name == "xdp-drop")
        {
            let (floor, airlock) = (self.capacity(&r.floor), self.capacity(&r.airlock));
            let share = airlock / floor;
            let mut detail = format!("{:.0}%", share * 100.0);
            if self.live_by_cpu {
                detail.push_str(" (by the receiver's CPU time per frame: the sender set the rate)");
            } else if let Some(cpu_share) = cpu_share(r) {
                let _ = write!(
                    detail,
                    " (by the receiver's CPU time per frame: {:.0}%)",
                    cpu_share * 100.0
                );
            }
            if let Some(peek) = &r.peek_floor {
                let peek = self.capacity(peek);
                let _ = write!(
                    detail,
                    "; XDP_DROP after reading the headers reaches {:.0}%, Airlock {:.0}% of that",
                    peek / floor * 100.0,
                    airlock / peek * 100.0
                );
            }
            out.push(Target {
                name: format!("live drop ≥ 90% of XDP_DROP at 100k ({})", r.traffic),
                met: share.is_finite().then_some(share >= 0.9),
                detail,
            });
            match &r.nft {
                Ok(nft) => {
                    let x = airlock / self.capacity(nft);
                    out.push(Target {
                        name: format!("live drop ≥ 5× nftables at 100k ({})", r.traffic),
                        met: x.is_finite().then_some(x >= 5.0),
                        detail: format!("{x:.1}×"),
                    });
                }
                Err(e) => out.push(Target {
                    name: format!("live drop ≥ 5× nftables at 100k ({})", r.traffic),
                    met: None,
                    detail: format!("nftables not measured: {e}"),
                }),
            }
        }
        for c in &self.control {
            let generated = c.prefixes - 11;
            let limit = match generated {
                100_000 => 1.0,
                1_000_000 => 10.0,
                _ => f64::NAN,
            };
            if limit.is_finite() {
                out.push(Target {
                    name: format!("apply {} prefixes < {limit} s", size_label(generated)),
                    met: Some(c.first.seconds < limit),
                    detail: secs(c.first.seconds),
                });
            }
            if generated >= 100_000 {
                let share = c.change_2.seconds / c.first.seconds;
                out.push(Target {
                    name: format!(
                        "1% change re-applied < 10% of a full apply ({})",
                        size_label(generated)
                    ),
                    met: Some(share < 0.1),
                    // One decimal: rounded to whole percent, 9.7% read as a met "10%".
                    detail: format!(
                        "{:.1}% ({} of {}; into the empty copy: {:.1}%){}",
                        share * 100.0,
                        secs(c.change_2.seconds),
                        secs(c.first.seconds),
                        c.change_1.seconds / c.first.seconds * 100.0,
                        self.library
                            .iter()
                            .find(|l| l.prefixes == c.prefixes && l.label.ends_with("/1"))
                            .and_then(|l| Some((l.reapply_s?.median, l.apply_s.median)))
                            .map_or(String::new(), |(re, full)| format!(
                                "; the map update alone (in-process): {} = {:.0}% of a full map write",
                                secs(re),
                                re / full * 100.0
                            ))
                    ),
                });
            }
            if generated == 1_000_000 {
                let peak = [c.validate, c.first, c.change_1, c.change_2]
                    .iter()
                    .map(|r| r.max_rss_kib)
                    .max()
                    .unwrap_or(0);
                out.push(Target {
                    name: "CLI peak memory < 200 MiB at 1M".into(),
                    met: Some(peak < 200 * 1024),
                    detail: mib(peak),
                });
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# Airlock benchmark\n");
        let _ = writeln!(
            md,
            "Kernel {}, {} ({} CPUs), commit {}, {}; {}. Suite took {:.0} s. Every ratio is against a baseline measured in the same run, the programs compared taking turns run by run (A B C A B C ...); figures are medians, ranges min–max, of {RUNS} runs.\n",
            m["kernel"].as_str().unwrap_or("?"),
            m["cpu"].as_str().unwrap_or("?"),
            m["cpus"],
            m["commit"].as_str().unwrap_or("?"),
            m["date"].as_str().unwrap_or("?"),
            self.load.summary(),
            self.seconds,
        );
        if self.load.busy() {
            let _ = writeln!(
                md,
                "**Busy machine:** the one-minute load average reached {:.2}, above the {} cores: other work shared the CPUs, so absolute times are inflated and ratios noisier than on an idle machine.\n",
                self.load.peak(),
                super::load::machine_cores()
            );
        }
        let held = held_back_range(&self.per_packet).map_or(String::new(), |(lo, hi)| {
            format!(
                " In this run, {:.3}–{:.3}% of each refused row's packets took it.",
                lo * 100.0,
                hi * 100.0
            )
        });
        let _ = writeln!(md, "{}{held}\n", self.settings.describe());
        let _ = writeln!(md, "## Targets\n\n| target | result | |\n|---|---|---|");
        for t in self.targets() {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {verdict} | {} |", t.name, t.detail);
        }
        let _ = writeln!(
            md,
            "\n## Per-packet cost (BPF_PROG_TEST_RUN, {} runs of each frame)\n\nns per packet (median); ratio = program ÷ do-nothing XDP_PASS program, median (min–max). xdp-filter holds each prefix as one exact address (it cannot express prefixes or ports, nor pass a reply: it is not run on that row). Held back: the share of a refused row's packets the drop sampler rate-limited (the rest were sampled).\n",
            super::per_packet::REPEAT
        );
        let _ = writeln!(
            md,
            "| policy (prefixes/port ranges) | frame | floor ns | Airlock ns | Airlock ratio | verdict | held back | xdp-filter ns | xdp-filter ratio | verdict |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.per_packet {
            let (xn, xr, xa) = match &r.xdp_filter {
                Some(Measured {
                    ns,
                    ratio: rt,
                    action: a,
                }) => (
                    format!("{:.1}", ns.median),
                    ratio(rt),
                    action(*a).to_owned(),
                ),
                None => ("–".into(), "–".into(), "–".into()),
            };
            let verdict = action(r.airlock.action);
            let expected = if r.expected_pass { "pass" } else { "drop" };
            let verdict = if verdict == expected {
                verdict.to_owned()
            } else {
                format!("{verdict} (expected {expected}!)")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {} | {verdict} | {} | {xn} | {xr} | {xa} |",
                r.workload,
                r.case,
                r.floor.median,
                r.airlock.ns.median,
                ratio(&r.airlock.ratio),
                r.sampled.as_ref().map_or("–".into(), held_back),
            );
        }
        if let Some(first) = self.per_packet.first() {
            let names: Vec<&str> = first.variants.iter().map(|(n, _)| n.as_str()).collect();
            variants_table(
                &mut md,
                "### Experimental builds of Airlock's program (not shipped)\n\nns per packet (median), ratio to the floor in brackets.",
                &["policy", "frame"],
                &names,
                self.per_packet.iter().map(|r| VariantLine {
                    lead: vec![r.workload.to_string(), r.case.to_string()],
                    floor_ns: r.floor.median,
                    shipped: (r.airlock.ns.median, r.airlock.ratio.median),
                    variants: r
                        .variants
                        .iter()
                        .map(|(_, m)| (m.ns.median, m.ratio.median))
                        .collect(),
                }),
            );
        }
        let _ = writeln!(
            md,
            "\n## Live throughput (veth, native XDP on the receiver)\n\nTraffic source: {}.{}\n",
            self.live_source,
            self.live_notes
                .iter()
                .map(|n| format!(" {n}."))
                .collect::<String>()
        );
        if self.live.is_empty() {
            let _ = writeln!(
                md,
                "No live rows in this run (see above); the per-packet and control-plane figures do not depend on them."
            );
        } else {
            self.live_table(&mut md);
        }
        self.control_tables(&mut md);
        if !self.egress.is_empty() {
            self.egress_table(&mut md);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    fn live_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "Mpps the receiver processed (median of {} windows); {}ratio = Airlock ÷ the do-nothing program (XDP_DROP for refused traffic, XDP_PASS for allowed) measured in the same run. nftables: a netdev ingress chain with interval sets (behind an XDP_PASS program, which keeps the veth in NAPI mode). gen = the generator's send rate; overflow = frames lost because the receiver's ring was full (it, not the generator, was the bottleneck). CPU ns/frame: the receiver's NAPI thread's CPU time per frame it processed, floor / Airlock (floor ÷ Airlock: the share of the floor's rate Airlock would reach with the receiver's core to itself). peek ÷ floor: `xdp-peek-drop`, which reads the Ethernet type and a word of the source address before XDP_DROP, against XDP_DROP, which reads nothing: the cost of touching the frame at all.\n",
            super::RUNS,
            if self.live_by_cpu {
                "the sender set those rates, so every ratio (÷ columns) compares the receiver's CPU time per frame instead (frames per second of the receiver's CPU); "
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "| policy | traffic | floor Mpps | peek ÷ floor | Airlock Mpps | Airlock ÷ floor | xdp-filter Mpps | xdp-filter ÷ floor | nftables Mpps | Airlock ÷ nftables | gen Mpps | overflow Mpps | CPU ns/frame floor / Airlock (÷) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.live {
            let floor = r.floor.rx_pps.median;
            let capacity_floor = self.capacity(&r.floor);
            let (xm, xr) = match &r.xdp_filter {
                Some(x) => (
                    mpps(x.rx_pps.median),
                    format!("{:.2}", self.capacity(x) / capacity_floor),
                ),
                None => ("–".into(), "–".into()),
            };
            let (nm, nr) = match &r.nft {
                Ok(n) => (
                    mpps(n.rx_pps.median),
                    format!("{:.1}", self.capacity(&r.airlock) / self.capacity(n)),
                ),
                Err(e) => (format!("n/a ({e})"), "–".into()),
            };
            let peek = r.peek_floor.as_ref().map_or("–".into(), |p| {
                format!("{:.2}", self.capacity(p) / capacity_floor)
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} ({}) | {peek} | {} | {:.2} | {xm} | {xr} | {nm} | {nr} | {} | {} | {} |",
                r.label,
                r.traffic,
                mpps(floor),
                r.floor_name,
                mpps(r.airlock.rx_pps.median),
                self.capacity(&r.airlock) / capacity_floor,
                mpps(r.airlock.tx_pps.median),
                mpps(r.airlock.overflow_pps.median),
                cpu_per_frame(r),
            );
        }
    }

    fn control_tables(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Control plane\n\nThe real `airlock` CLI in a namespace, policy importing the prefixes with `file:`; each figure the median (min–max) of {RUNS} runs. First apply: no filter on the interface (`airlock remove --all` before each). Re-applies change 1% of the prefixes: right after a first apply, into the empty second copy; then in steady state, into a copy holding the policy before last. Peak RSS from GNU time (the highest of all runs). Map memory: the kernel's `memlock` charge for the filter's maps.\n"
        );
        let _ = writeln!(
            md,
            "| prefixes | compiled prefixes v4/v6 | validate | first apply | re-apply 1% (empty copy) | re-apply 1% (steady) | CLI peak RSS | map memory |\n|---|---|---|---|---|---|---|---|"
        );
        for c in &self.control {
            let peak = [c.validate, c.first, c.change_1, c.change_2]
                .iter()
                .map(|r| r.max_rss_kib)
                .max()
                .unwrap_or(0);
            let entries = c.entries.map_or("?".into(), |(a, b)| format!("{a}/{b}"));
            let _ = writeln!(
                md,
                "| {} | {entries} | {} | {} | {} | {} | {} | {} |",
                c.label,
                spread(c.validate.seconds, &c.validate_seconds),
                spread(c.first.seconds, &c.first_seconds),
                spread(c.change_1.seconds, &c.change_1_seconds),
                spread(c.change_2.seconds, &c.steady_seconds),
                mib(peak),
                mib(c.map_bytes / 1024),
            );
        }
        let _ = writeln!(
            md,
            "\nAgent resident memory at {} prefixes: {}.\n",
            size_label(self.agent_prefixes),
            match &self.agent_rss {
                Ok(kib) => mib(*kib),
                Err(e) => format!("n/a ({e})"),
            }
        );
        let count = |n: Option<u32>| n.map_or("n/a".to_owned(), |n| n.to_string());
        let _ = writeln!(
            md,
            "Instructions the kernel's verifier processed to load the programs (most of a first apply): XDP {}, egress {}.\n",
            count(self.verified.0),
            count(self.verified.1)
        );
        let _ = writeln!(
            md,
            "In-process breakdown, medians of {RUNS} runs (library: parse+validate with the import, compile, write the source tables and port arrays of one copy, which held the previous row's policy; re-apply: the map update alone of a 1% change, into a copy that holds the unchanged policy):\n\n| prefixes/port ranges | parse | compile | apply (maps) | re-apply 1% (maps) | trie entries v4/v6 |\n|---|---|---|---|---|---|"
        );
        for l in &self.library {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {}/{} |",
                l.label,
                secs(l.parse_s.median),
                secs(l.compile_s.median),
                secs(l.apply_s.median),
                l.reapply_s.map_or("–".into(), |s| secs(s.median)),
                l.entries_v4,
                l.entries_v6
            );
        }
    }

    fn egress_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Egress: recording the host's flows (BPF_PROG_TEST_RUN, {} runs)\n\nThe return-traffic program on TC egress, per packet the host sends, in steady state (the flow already tracked); ratio = program ÷ do-nothing TC program.\n\n| frame the host sends | floor ns | egress ns | ratio |\n|---|---|---|---|",
            super::per_packet::REPEAT
        );
        for r in &self.egress {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.2}× ({:.2}–{:.2}) |",
                r.case,
                r.floor_ns.median,
                r.egress_ns.median,
                r.ratio.median,
                r.ratio.min,
                r.ratio.max
            );
        }
        if let Some(first) = self.egress.first() {
            let names: Vec<&str> = first.variants.iter().map(|(n, _)| n.as_str()).collect();
            variants_table(
                md,
                "### Experimental builds' egress programs (not shipped)\n\nns per packet (median), ratio to the floor in brackets, in the same runs as the table above.",
                &["frame the host sends"],
                &names,
                self.egress.iter().map(|r| VariantLine {
                    lead: vec![r.case.to_string()],
                    floor_ns: r.floor_ns.median,
                    shipped: (r.egress_ns.median, r.ratio.median),
                    variants: r
                        .variants
                        .iter()
                        .map(|(_, v)| (v.ns.median, v.ratio.median))
                        .collect(),
                }),
            );
        }
    }

    pub fn json(&self) -> Value {
        let per_packet: Vec<Value> = self
            .per_packet
            .iter()
            .map(|r| {
                json!({
                    "policy": r.workload, "prefixes": r.prefixes, "port_ranges": r.port_ranges,
                    "frame": r.case, "expected": if r.expected_pass { "pass" } else { "drop" },
                    "floor_ns": r.floor.json(),
                    "airlock": { "ns": r.airlock.ns.json(), "ratio": r.airlock.ratio.json(), "action": action(r.airlock.action) },
                    "drop_samples": r.sampled.as_ref().map(|s| json!({ "sent": s.sent, "ring_full": s.ring_full, "rate_limited": s.rate_limited, "rate_limited_share": s.rate_limited_share() })),
                    "xdp_filter": r.xdp_filter.as_ref().map(|x| json!({ "ns": x.ns.json(), "ratio": x.ratio.json(), "action": action(x.action) })),
                    "variants": r.variants.iter().map(|(n, x)| json!({ "name": n, "ns": x.ns.json(), "ratio": x.ratio.json(), "action": action(x.action) })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let live: Vec<Value> = self
            .live
            .iter()
            .map(|r| {
                json!({
                    "policy": r.label, "prefixes": r.prefixes, "traffic": r.traffic,
                    "floor": { "program": r.floor_name, "rate": r.floor.json() },
                    "peek_floor": r.peek_floor.as_ref().map(|p| json!({ "program": "xdp-peek-drop", "rate": p.json() })),
                    "airlock": r.airlock.json(),
                    "airlock_over_floor": self.capacity(&r.airlock) / self.capacity(&r.floor),
                    "compared_by": if self.live_by_cpu { "receiver CPU time per frame" } else { "receiver rate" },
                    "xdp_filter": r.xdp_filter.as_ref().map(Rate::json),
                    "nftables": match &r.nft { Ok(n) => n.json(), Err(e) => json!({ "error": e }) },
                    "nftables_load_s": r.nft_load_s,
                })
            })
            .collect();
        let run = |c: &super::control::CliRun| json!({ "seconds": c.seconds, "max_rss_kib": c.max_rss_kib });
        let control: Vec<Value> = self
            .control
            .iter()
            .map(|c| {
                json!({
                    "prefixes": c.prefixes, "runs": RUNS,
                    "validate": run(&c.validate), "validate_seconds": c.validate_seconds,
                    "first_apply": run(&c.first), "first_apply_seconds": c.first_seconds,
                    "reapply_1pct_empty_copy": run(&c.change_1), "reapply_1pct_empty_copy_seconds": c.change_1_seconds,
                    "reapply_1pct_steady": run(&c.change_2), "reapply_1pct_steady_seconds": c.steady_seconds,
                    "map_memlock_bytes": c.map_bytes, "trie_entries": c.entries,
                })
            })
            .collect();
        let library: Vec<Value> = self
            .library
            .iter()
            .map(|l| {
                json!({ "policy": l.label, "prefixes": l.prefixes, "parse_s": l.parse_s.json(), "compile_s": l.compile_s.json(),
                        "apply_s": l.apply_s.json(), "reapply_1pct_maps_s": l.reapply_s.as_ref().map(Stats::json), "entries_v4": l.entries_v4, "entries_v6": l.entries_v6 })
            })
            .collect();
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({ "target": t.name, "met": t.met, "detail": t.detail }))
            .collect();
        json!({
            "machine": self.machine,
            "load_average": self.load.json(),
            "busy": self.load.busy(),
            "settings": self.settings.json(),
            "runs_per_row": RUNS,
            "seconds": self.seconds,
            "live_source": self.live_source,
            "live_notes": self.live_notes,
            "targets": targets,
            "per_packet": per_packet,
            "egress": self.egress.iter().map(|r| json!({
                "frame": r.case, "floor_ns": r.floor_ns.json(), "egress_ns": r.egress_ns.json(), "ratio": r.ratio.json(),
                "variants": r.variants.iter().map(|(n, v)| json!({ "name": n, "ns": v.ns.json(), "ratio": v.ratio.json() })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "live": live,
            "control_plane": control,
            "library": library,
            "agent_rss_kib": match &self.agent_rss { Ok(k) => json!(k), Err(e) => json!({ "error": e }) },
            "agent_prefixes": self.agent_prefixes,
            "verified_instructions": { "xdp": self.verified.0, "egress": self.verified.1 },
            "notes": self.notes,
            "plot": self.plot(),
        })
    }

    /// What `cargo xtask bench` draws: ns per packet against policy size.
    fn plot(&self) -> Value {
        let series = |name: &str, pick: &dyn Fn(&Row) -> Option<f64>, case: &str| {
            let points: Vec<Value> = self
                .per_packet
                .iter()
                .filter(|r| {
                    r.port_ranges == 1 && r.case == case && !r.workload.ends_with(MANAGEMENT_LABEL)
                })
                .filter_map(|r| pick(r).map(|y| json!([r.prefixes, y])))
                .collect();
            json!({ "name": name, "points": points })
        };
        let live_series = |name: &str, pick: &dyn Fn(&LiveRow) -> Option<f64>| {
            let points: Vec<Value> = self
                .live
                .iter()
                .filter(|r| r.traffic == "refused IPv4 TCP")
                .filter_map(|r| {
                    pick(r)
                        .filter(|p| *p > 0.0)
                        .map(|pps| json!([r.prefixes, 1e9 / pps]))
                })
                .collect();
            json!({ "name": name, "points": points })
        };
        let mut plot = json!({
            "x_label": "source prefixes in the policy",
            "panels": [
                {
                    "title": "BPF_PROG_TEST_RUN: ns per packet",
                    "series": [
                        series("floor (XDP_PASS)", &|r| Some(r.floor.median), "dropped IPv4 TCP"),
                        series("Airlock, dropped IPv4", &|r| Some(r.airlock.ns.median), "dropped IPv4 TCP"),
                        series("Airlock, allowed IPv4", &|r| Some(r.airlock.ns.median), "allowed IPv4 TCP"),
                        series("Airlock, dropped IPv6", &|r| Some(r.airlock.ns.median), "dropped IPv6 TCP"),
                        series("xdp-filter, dropped IPv4", &|r| r.xdp_filter.as_ref().map(|x| x.ns.median), "dropped IPv4 TCP"),
                    ],
                },
                {
                    "title": if self.live_by_cpu {
                        "live veth, refused IPv4: receiver CPU ns per packet"
                    } else {
                        "live veth, refused IPv4: ns per packet at the receiver"
                    },
                    "series": [
                        live_series("floor (XDP_DROP)", &|r| Some(self.capacity(&r.floor))),
                        live_series("XDP_DROP after reading the headers", &|r| r.peek_floor.as_ref().map(|p| self.capacity(p))),
                        live_series("Airlock", &|r| Some(self.capacity(&r.airlock))),
                        live_series("xdp-filter", &|r| r.xdp_filter.as_ref().map(|x| self.capacity(x))),
                        live_series("nftables", &|r| r.nft.as_ref().ok().map(|n| self.capacity(n))),
                    ],
                },
            ],
        });
        if self.live.is_empty()
            && let Some(panels) = plot["panels"].as_array_mut()
        {
            panels.truncate(1);
        }
        plot
    }
}

/// Floor ÷ Airlock of the receiver's CPU time per frame (medians), when measured.
fn cpu_share(r: &LiveRow) -> Option<f64> {
    let (floor, airlock) = (r.floor.rx_cpu_ns.median, r.airlock.rx_cpu_ns.median);
    (floor > 0.0 && airlock > 0.0).then(|| floor / airlock)
}

/// The live table's CPU cell: "floor / Airlock (share)", or a dash.
fn cpu_per_frame(r: &LiveRow) -> String {
    match cpu_share(r) {
        Some(share) => format!(
            "{:.0} / {:.0} ({share:.2})",
            r.floor.rx_cpu_ns.median, r.airlock.rx_cpu_ns.median
        ),
        None => "–".into(),
    }
}

/// A control-plane cell: the median, and min–max when there are several runs.
fn spread(median: f64, runs: &[f64]) -> String {
    if runs.len() < 2 {
        return secs(median);
    }
    let (min, max) = runs
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    format!("{} ({}–{})", secs(median), secs(min), secs(max))
}

/// The per-packet table's sampler cell.
fn held_back(s: &Sampled) -> String {
    let sampled = s.sent + s.ring_full;
    if sampled + s.rate_limited == 0 {
        return "**nothing sampled or held back: sampling off?**".into();
    }
    format!("{:.3}% ({sampled} sampled)", s.rate_limited_share() * 100.0)
}

/// Min–max of the refused rows' held-back shares, for the report's summary.
fn held_back_range(rows: &[Row]) -> Option<(f64, f64)> {
    rows.iter()
        .filter_map(|r| r.sampled.as_ref())
        .map(Sampled::rate_limited_share)
        .fold(None, |acc, x| match acc {
            None => Some((x, x)),
            Some((lo, hi)) => Some((f64::min(lo, x), f64::max(hi, x))),
        })
}

/// One row of an experimental builds' table: its leading cells, the floor, and
/// (ns, ratio) for the shipped program and each variant in turn.
struct VariantLine {
    lead: Vec<String>,
    floor_ns: f64,
    shipped: (f64, f64),
    variants: Vec<(f64, f64)>,
}

/// The variants beside the shipped program, one column each (nothing when the
/// run had no `--variant`): the per-packet and egress sections share it.
fn variants_table(
    md: &mut String,
    heading: &str,
    lead: &[&str],
    names: &[&str],
    lines: impl Iterator<Item = VariantLine>,
) {
    if names.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n{heading}\n");
    let mut header = String::from("|");
    let mut rule = String::from("|");
    for column in lead.iter().chain(&["floor", "Airlock"]).chain(names) {
        let _ = write!(header, " {column} |");
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for l in lines {
        let mut line = String::from("|");
        for cell in &l.lead {
            let _ = write!(line, " {cell} |");
        }
        let _ = write!(line, " {:.1} |", l.floor_ns);
        for (ns, ratio) in std::iter::once(l.shipped).chain(l.variants) {
            let _ = write!(line, " {ns:.1} ({ratio:.2}) |");
        }
        let _ = writeln!(md, "{line}");
    }
}
