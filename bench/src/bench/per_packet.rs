//! Per-packet cost through BPF_PROG_TEST_RUN: the same frame run a million times
//! through Airlock, through the do-nothing floor and through xdp-filter, each
//! timed by the CPU time of the calling thread (the kernel's own per-run figure is
//! rounded to whole nanoseconds, too coarse for a 10 ns floor), runs interleaved
//! so every ratio compares programs measured side by side.

use std::time::Instant;

use airlock::loader::PinnableMaps as _;
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, TestRunResult, Xdp},
};

use super::{
    RUNS, Stats,
    policies::{DROP_V4, DROP_V6, FLOW_PORT, PORT, UNCOVERED_PORT, Workload},
    thread_cpu_time,
};
use crate::packet::{FrameSpec, Tag, Transport};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Runs per measurement: at ~10-100 ns a run, 10-100 ms of CPU each.
pub const REPEAT: u32 = 1_000_000;

/// A frame measured on every policy.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Airlock's verdict for it under the workload's policy.
    pub pass: bool,
    /// Airlock's verdict rule for it: what a peer must do to express the policy.
    pub family: Family,
    /// Whether the peers can express Airlock's verdict on it (xdp-filter keeps no
    /// flows: it cannot pass a reply): where not, they are not run on it.
    pub peers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    NonIp,
}

/// Allowed and refused TCP (SYNs) to the covered port in both families, an allowed
/// frame behind an 802.1Q tag, an ARP request, and the two paths `default: drop`
/// adds: a segment to a port no rule covers (refused after a flow-table miss) and
/// a reply on a flow the host opened (passed by the flow table; open it first with
/// [`super::egress::open_flow`]). Those two are ACK segments. Beside them, a SYN to
/// the uncovered port: a SYN without ACK cannot be a reply, so it is refused
/// without the lookup (the SYN flood's path).
pub fn cases(workload: &Workload) -> Vec<Case> {
    let tcp = Transport::tcp_syn(PORT);
    let uncovered = Transport::tcp_ack(UNCOVERED_PORT);
    let reply = Transport::tcp_ack(FLOW_PORT);
    let mut out = vec![
        Case {
            name: "allowed IPv4 TCP",
            bytes: FrameSpec::ip(workload.allowed_v4.into(), tcp.clone())
                .build()
                .bytes,
            pass: true,
            family: Family::V4,
            peers: true,
        },
        Case {
            name: "dropped IPv4 TCP",
            bytes: FrameSpec::ip(DROP_V4.into(), tcp.clone()).build().bytes,
            pass: false,
            family: Family::V4,
            peers: true,
        },
    ];
    if let Some(v6) = workload.allowed_v6 {
        out.push(Case {
            name: "allowed IPv6 TCP",
            bytes: FrameSpec::ip(v6.into(), tcp.clone()).build().bytes,
            pass: true,
            family: Family::V6,
            peers: true,
        });
    }
    out.extend([
        Case {
            name: "dropped IPv6 TCP",
            bytes: FrameSpec::ip(DROP_V6.into(), tcp.clone()).build().bytes,
            pass: false,
            family: Family::V6,
            peers: true,
        },
        Case {
            name: "allowed IPv4 TCP, VLAN",
            bytes: FrameSpec::ip(workload.allowed_v4.into(), tcp)
                .tag(Tag::Dot1Q)
                .build()
                .bytes,
            pass: true,
            family: Family::V4,
            peers: true,
        },
        Case {
            name: "non-IP (ARP)",
            bytes: FrameSpec::arp().build().bytes,
            pass: true,
            family: Family::NonIp,
            peers: true,
        },
        Case {
            name: REFUSED_UNCOVERED,
            bytes: FrameSpec::ip(DROP_V4.into(), uncovered).build().bytes,
            pass: false,
            family: Family::V4,
            peers: true,
        },
        Case {
            name: "dropped IPv4 TCP SYN, no rule's port",
            bytes: FrameSpec::ip(DROP_V4.into(), Transport::tcp_syn(UNCOVERED_PORT))
                .build()
                .bytes,
            pass: false,
            family: Family::V4,
            peers: true,
        },
        Case {
            name: REPLY,
            bytes: FrameSpec::ip(DROP_V4.into(), reply).build().bytes,
            pass: true,
            family: Family::V4,
            peers: false,
        },
    ]);
    out
}

/// The case refused by `default: drop` after a flow-table miss.
pub const REFUSED_UNCOVERED: &str = "dropped IPv4 TCP ACK, no rule's port (flow miss)";
/// The case passed as return traffic.
pub const REPLY: &str = "reply IPv4 TCP on an open flow";

/// One timed batch: the action and the mean CPU nanoseconds per run (and the
/// kernel's own, rounded, figure).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub action: u32,
    pub ns: f64,
    pub kernel_ns: f64,
}

pub fn time<P>(program: &mut P, bytes: &[u8], repeat: u32) -> Result<Timing>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let before = thread_cpu_time();
    let result = program.test_run(TestRunOptions {
        data_in: Some(bytes),
        repeat,
        ..Default::default()
    })?;
    let cpu = thread_cpu_time() - before;
    Ok(Timing {
        action: result.return_value,
        ns: cpu.as_nanos() as f64 / f64::from(repeat),
        kernel_ns: result.duration.as_nanos() as f64,
    })
}

/// One of the embedded do-nothing programs, loaded.
pub struct Floor {
    ebpf: Ebpf,
    program: &'static str,
}

impl Floor {
    /// `name`: `xdp-pass`, `xdp-drop`, `xdp-peek-drop` or `xdp-tx`.
    pub fn load(name: &'static str) -> Result<Self> {
        let bytes = crate::floors::floor_object_bytes(name)
            .with_context(|| format!("no embedded floor object {name}"))?;
        anyhow::ensure!(
            !bytes.is_empty(),
            "{name} was built without its eBPF object"
        );
        let program = match name {
            "xdp-pass" => "xdp_pass",
            "xdp-drop" => "xdp_drop",
            "xdp-peek-drop" => "xdp_peek_drop",
            _ => "xdp_tx",
        };
        let mut floor = Self {
            ebpf: EbpfLoader::new().load(bytes)?,
            program,
        };
        floor.program()?.load()?;
        Ok(floor)
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        let program = self
            .ebpf
            .program_mut(self.program)
            .with_context(|| format!("no program {}", self.program))?;
        Ok(program.try_into()?)
    }
}

/// A subject's figures for one case: ns per run and the ratio to the floor.
#[derive(Clone, Debug)]
pub struct Measured {
    pub ns: Stats,
    pub ratio: Stats,
    pub action: u32,
}

/// What Airlock's drop sampler did with the refused packets of a row's timed runs
/// (SAMPLE_STATS before and after): how many it sampled (sent to the ring, or
/// found it full) and how many it held back, the path a flood takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    pub sent: u64,
    pub ring_full: u64,
    pub rate_limited: u64,
}

impl Sampled {
    /// Share of the refused packets that took the rate-limited path.
    pub fn rate_limited_share(&self) -> f64 {
        let total = self.sent + self.ring_full + self.rate_limited;
        if total == 0 {
            return 0.0;
        }
        self.rate_limited as f64 / total as f64
    }

    fn since(after: [u64; 3], before: [u64; 3]) -> Self {
        use airlock_common::{SAMPLES_RATE_LIMITED, SAMPLES_RING_FULL, SAMPLES_SENT};
        let d = |slot: u32| after[slot as usize].saturating_sub(before[slot as usize]);
        Self {
            sent: d(SAMPLES_SENT),
            ring_full: d(SAMPLES_RING_FULL),
            rate_limited: d(SAMPLES_RATE_LIMITED),
        }
    }
}

/// One row of the per-packet table.
#[derive(Clone, Debug)]
pub struct Row {
    pub workload: String,
    pub prefixes: usize,
    pub port_ranges: usize,
    pub case: &'static str,
    pub family: Family,
    pub expected_pass: bool,
    pub floor: Stats,
    pub airlock: Measured,
    /// Refused frames: the sampler's work over Airlock's timed runs.
    pub sampled: Option<Sampled>,
    /// xdp-filter, where it was run (policies with a single port range).
    pub xdp_filter: Option<Measured>,
    /// Experimental builds of Airlock's program (`--variant`), by name.
    pub variants: Vec<(String, Measured)>,
}

/// Airlock's program with a way to read its drop-sample counters
/// (`PolicyMaps::counters().samples`).
pub struct Subject<'a> {
    pub program: &'a mut Xdp,
    /// The same object loaded again, each with maps filled alike. The kernel
    /// starts each JIT image at a random offset (a JIT-spraying defence), which
    /// moved a packet's cost by 1-2 ns between loads of one object (session
    /// 19): Airlock's figures pool the runs of every load, so no single draw
    /// decides a row.
    pub reloads: Vec<&'a mut Xdp>,
    pub samples: &'a dyn Fn() -> Result<[u64; 3]>,
}

/// Measures every case: for each run, the floor, Airlock, xdp-filter (if given)
/// and the variants back to back (A B C A B C ...), so each ratio compares
/// programs seen under the same machine conditions; figures are over [`RUNS`]
/// runs.
pub fn measure(
    workload: &Workload,
    floor: &mut Xdp,
    airlock: Subject<'_>,
    mut xdp_filter: Option<&mut Xdp>,
    variants: &mut [(String, &mut Xdp)],
    repeat: u32,
) -> Result<Vec<Row>> {
    let Subject {
        program: airlock,
        mut reloads,
        samples,
    } = airlock;
    let mut rows = Vec::new();
    for case in cases(workload) {
        let mut peer = xdp_filter.as_deref_mut().filter(|_| case.peers);
        // Warm caches and the trie path once before timing.
        time(floor, &case.bytes, repeat / 10)?;
        time(airlock, &case.bytes, repeat / 10)?;
        for reload in &mut reloads {
            time(&mut **reload, &case.bytes, repeat / 10)?;
        }
        let mut floor_ns = Vec::new();
        let (mut a_ns, mut a_ratio, mut a_action) = (Vec::new(), Vec::new(), 0);
        let (mut x_ns, mut x_ratio, mut x_action) = (Vec::new(), Vec::new(), 0);
        let mut v_figures = vec![(Vec::new(), Vec::new(), 0); variants.len()];
        let samples_before = samples()?;
        for _ in 0..RUNS {
            let f = time(floor, &case.bytes, repeat)?;
            let a = time(airlock, &case.bytes, repeat)?;
            floor_ns.push(f.ns);
            a_ns.push(a.ns);
            a_ratio.push(a.ns / f.ns);
            a_action = a.action;
            for reload in &mut reloads {
                let t = time(&mut **reload, &case.bytes, repeat)?;
                if t.action != a.action {
                    bail!(
                        "{}: a second load of Airlock's program returned {} where the first returned {}",
                        case.name,
                        t.action,
                        a.action
                    );
                }
                a_ns.push(t.ns);
                a_ratio.push(t.ns / f.ns);
            }
            if let Some(x) = peer.as_deref_mut() {
                let t = time(x, &case.bytes, repeat)?;
                x_ns.push(t.ns);
                x_ratio.push(t.ns / f.ns);
                x_action = t.action;
            }
            for ((_, program), figures) in variants.iter_mut().zip(&mut v_figures) {
                let t = time(&mut **program, &case.bytes, repeat)?;
                figures.0.push(t.ns);
                figures.1.push(t.ns / f.ns);
                figures.2 = t.action;
            }
        }
        let sampled = Sampled::since(samples()?, samples_before);
        rows.push(Row {
            workload: workload.label.clone(),
            prefixes: workload.prefixes,
            port_ranges: workload.port_ranges,
            case: case.name,
            family: case.family,
            expected_pass: case.pass,
            floor: Stats::of(&floor_ns),
            airlock: Measured {
                ns: Stats::of(&a_ns),
                ratio: Stats::of(&a_ratio),
                action: a_action,
            },
            sampled: (!case.pass).then_some(sampled),
            xdp_filter: peer.is_some().then(|| Measured {
                ns: Stats::of(&x_ns),
                ratio: Stats::of(&x_ratio),
                action: x_action,
            }),
            variants: variants
                .iter()
                .zip(&v_figures)
                .map(|((name, _), (ns, ratio, action))| {
                    (
                        name.clone(),
                        Measured {
                            ns: Stats::of(ns),
                            ratio: Stats::of(ratio),
                            action: *action,
                        },
                    )
                })
                .collect(),
        });
    }
    Ok(rows)
}

/// Wall time of `f`, in seconds, with its result.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed().as_secs_f64())
}

/// An experimental build of Airlock's program (same maps, same loader), for
/// finding where the time goes: `airlock-bench --variant NAME=OBJECT`.
pub struct Variant {
    pub name: String,
    ebpf: Ebpf,
    pub maps: airlock::loader::PolicyMaps,
}

impl Variant {
    /// Loads `object`, pins its maps under `pin_dir` (a bpffs directory) and opens
    /// them with the real loader's handles, so `maps.apply` fills them as it
    /// fills Airlock's.
    pub fn load(name: &str, object: &std::path::Path, pin_dir: &std::path::Path) -> Result<Self> {
        // Logging off, as in production (aya-log's own default is everything on);
        // an object without aya-log has no such global.
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &0u8, false)
            .load_file(object)
            .with_context(|| format!("loading variant {}", object.display()))?;
        Self::from_ebpf(name, ebpf, pin_dir)
    }

    /// As [`Variant::load`], for an object already parsed (its maps created).
    pub fn from_ebpf(name: &str, ebpf: Ebpf, pin_dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(pin_dir)?;
        for (map_name, map) in ebpf.pinnable_maps() {
            map.pin(pin_dir.join(map_name))?;
        }
        let mut maps = airlock::loader::PolicyMaps::open_pinned(pin_dir)
            .map_err(|e| anyhow::anyhow!("opening the variant's maps: {e:?}"))?;
        super::production::configure(&mut maps)?;
        let mut variant = Self {
            name: name.to_owned(),
            ebpf,
            maps,
        };
        variant.program()?.load()?;
        Ok(variant)
    }

    /// Opens the per-packet "reply" row's flow in this build's own flow table,
    /// through its own egress program.
    pub fn open_flow(&mut self) -> Result<()> {
        super::egress::open_flow_with(self.egress_program()?)
    }

    /// This build's egress program (loaded on first use), on its own maps.
    pub fn egress_program(&mut self) -> Result<&mut aya::programs::SchedClassifier> {
        let egress: &mut aya::programs::SchedClassifier = self
            .ebpf
            .program_mut(airlock_common::EGRESS_PROGRAM_NAME)
            .context("variant has no egress program")?
            .try_into()?;
        if egress.fd().is_err() {
            egress.load()?;
        }
        Ok(egress)
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        let program = self
            .ebpf
            .program_mut(airlock_common::PROGRAM_NAME)
            .context("variant has no airlock_xdp program")?;
        Ok(program.try_into()?)
    }
}
