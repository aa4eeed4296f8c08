//! What the return-traffic egress program costs per packet the host sends, against
//! a TC program that does nothing (`tc-pass`), both through BPF_PROG_TEST_RUN and
//! interleaved run by run like the XDP figures. Measured in steady state: the
//! flow is already in the table, so a packet costs its parse and one lookup (the
//! write happens at most once a second per flow). Experimental builds
//! (`--variant`) have their egress programs timed in the same runs, interleaved
//! with the floor and the shipped program, each on its own maps.

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};

use airlock::loader::LoadedFilter;

use super::{
    RUNS, Stats,
    per_packet::{REPEAT, time},
    policies::{DROP_V4, FLOW_PORT},
};
use crate::packet::{FrameSpec, TCP_FLAGS_OFFSET, mirror};

/// One frame the host sends.
#[derive(Clone, Debug)]
pub struct EgressRow {
    pub case: &'static str,
    pub floor_ns: Stats,
    pub egress_ns: Stats,
    pub ratio: Stats,
    /// Each `--variant`'s egress program on the same frame, in the same runs.
    pub variants: Vec<(String, EgressVariant)>,
}

/// A variant's egress program on one frame.
#[derive(Clone, Debug)]
pub struct EgressVariant {
    pub ns: Stats,
    pub ratio: Stats,
}

/// The host's packet that `reply` answers, with TCP `flags` if given.
fn outgoing(reply: FrameSpec, flags: Option<u8>) -> Vec<u8> {
    let mut bytes = reply.build().bytes;
    let l4 = mirror(&mut bytes);
    if let Some(flags) = flags {
        bytes[l4 + TCP_FLAGS_OFFSET] = flags;
    }
    bytes
}

/// Opens the TCP flow the per-packet "reply" row answers, as the host's SYN and
/// then its first ACK would (established: it stays open for hours, past any run).
/// `filter` must hold a policy (the egress program consults its port arrays).
pub fn open_flow(filter: &mut LoadedFilter) -> Result<()> {
    open_flow_with(filter.egress_program()?)
}

/// [`open_flow`] through `egress` (an experimental build's egress program, on
/// that build's own maps).
pub fn open_flow_with(egress: &mut SchedClassifier) -> Result<()> {
    let peer = DROP_V4.to_string();
    for flags in [None, Some(0x10)] {
        egress.test_run(TestRunOptions {
            data_in: Some(&outgoing(FrameSpec::tcp(&peer, FLOW_PORT), flags)),
            repeat: 1,
            ..Default::default()
        })?;
    }
    Ok(())
}

/// `filter`, every reload and every variant must hold the same policy (the
/// egress program consults its port arrays); `reloads` are further loads of
/// Airlock's own egress program, pooled with the first as the per-packet rows
/// pool theirs (each JIT image starts at a random offset); `variants` are
/// experimental builds' egress programs by name.
pub fn measure(
    filter: &mut LoadedFilter,
    covered_port: u16,
    reloads: &mut [&mut SchedClassifier],
    variants: &mut [(String, &mut SchedClassifier)],
) -> Result<Vec<EgressRow>> {
    let bytes = crate::floors::floor_object_bytes("tc-pass").context("no tc-pass object")?;
    let mut floor_object = EbpfLoader::new().load(bytes)?;
    let floor: &mut SchedClassifier = floor_object
        .program_mut("tc_pass")
        .context("no program tc_pass")?
        .try_into()?;
    floor.load()?;
    let peer = &DROP_V4.to_string();
    let syn = outgoing(FrameSpec::tcp(peer, FLOW_PORT), None);
    let cases = [
        (
            "TCP segment on an open flow",
            outgoing(FrameSpec::tcp(peer, FLOW_PORT), Some(0x10)),
        ),
        (
            "UDP datagram on an open flow",
            outgoing(FrameSpec::udp(peer, FLOW_PORT + 1), None),
        ),
        (
            "TCP from a port a rule covers (not recorded)",
            outgoing(FrameSpec::tcp(peer, covered_port), Some(0x10)),
        ),
        ("non-IP (ARP)", FrameSpec::arp().build().bytes),
    ];
    let egress = filter.egress_program()?;
    // Open the flows the cases refresh, as the host's SYN and first datagram would
    // (the datagram's is opened by the warm-up run below), in every build's table.
    for program in std::iter::once(&mut *egress)
        .chain(reloads.iter_mut().map(|p| &mut **p))
        .chain(variants.iter_mut().map(|(_, p)| &mut **p))
    {
        program.test_run(TestRunOptions {
            data_in: Some(&syn),
            repeat: 1,
            ..Default::default()
        })?;
    }
    let mut rows = Vec::new();
    for (case, frame) in cases {
        time(floor, &frame, REPEAT / 10)?;
        time(egress, &frame, REPEAT / 10)?;
        for program in reloads.iter_mut() {
            time(*program, &frame, REPEAT / 10)?;
        }
        for (_, program) in variants.iter_mut() {
            time(*program, &frame, REPEAT / 10)?;
        }
        let (mut floor_ns, mut egress_ns, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let mut variant_ns = vec![Vec::new(); variants.len()];
        let mut variant_ratio = vec![Vec::new(); variants.len()];
        for _ in 0..RUNS {
            let f = time(floor, &frame, REPEAT)?.ns;
            let e = time(egress, &frame, REPEAT)?.ns;
            floor_ns.push(f);
            egress_ns.push(e);
            ratio.push(e / f);
            for program in reloads.iter_mut() {
                let r = time(*program, &frame, REPEAT)?.ns;
                egress_ns.push(r);
                ratio.push(r / f);
            }
            for (i, (_, program)) in variants.iter_mut().enumerate() {
                let v = time(*program, &frame, REPEAT)?.ns;
                variant_ns[i].push(v);
                variant_ratio[i].push(v / f);
            }
        }
        rows.push(EgressRow {
            case,
            floor_ns: Stats::of(&floor_ns),
            egress_ns: Stats::of(&egress_ns),
            ratio: Stats::of(&ratio),
            variants: variants
                .iter()
                .zip(variant_ns.iter().zip(&variant_ratio))
                .map(|((name, _), (ns, ratio))| {
                    (
                        name.clone(),
                        EgressVariant {
                            ns: Stats::of(ns),
                            ratio: Stats::of(ratio),
                        },
                    )
                })
                .collect(),
        });
    }
    Ok(rows)
}
