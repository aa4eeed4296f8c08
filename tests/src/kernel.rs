//! Harness for running frames through the real XDP program with
//! `BPF_PROG_TEST_RUN`: the embedded object loaded with fresh (unpinned) maps, the
//! policy compiled and written by the real loader, and every verdict read back from
//! the program's own counters so the reason and the deciding rule are the kernel's,
//! not inferred from the action.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use airlock::compile;
use airlock::link_type::Framing;
use airlock::loader::{Counters, Flow, FlowTable, LoadedFilter, PolicySummary, monotonic_ns};
use airlock::policy::{self, Policy};
use airlock::reference::{self, L4, PacketClass, Verdict};
use airlock_common::{Counter, FlowKey, PROGRAM_NAME, Reason};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};

use crate::packet::{Frame, SOURCE_PORT};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// These tests need root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN). Without it they must
/// fail loudly: a suite that silently skips its kernel tests proves nothing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the kernel verdict tests need root to load and test-run the XDP program \
         (running as uid {euid}); run them with sudo or as root, e.g. \
         `sudo -E cargo test -p airlock-integration --test kernel_verdicts`"
    );
}

/// Name of an XDP action, for messages (the library's, as `explain --live` prints it).
pub use airlock::probe::action_name;

/// What the kernel did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The XDP action returned.
    pub action: u32,
    /// The one reason counter that moved.
    pub reason: Reason,
    /// The rule whose counter moved, if any.
    pub rule: Option<usize>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} reason={} rule={:?}",
            action_name(self.action),
            self.reason.name(),
            self.rule
        )
    }
}

/// The reference model's verdict, in the kernel's terms.
pub fn expected_outcome(verdict: &Verdict) -> Outcome {
    Outcome {
        action: if verdict.pass { XDP_PASS } else { XDP_DROP },
        reason: verdict.reason,
        rule: verdict.rule,
    }
}

/// A kernel outcome that differs from the reference model's, with everything needed
/// to reproduce it.
#[derive(Clone, Debug)]
pub struct Disagreement {
    pub frame: Frame,
    pub kernel: Outcome,
    pub reference: Verdict,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "frame: {:?}", self.frame.spec)?;
        writeln!(f, "class: {:?}", self.frame.class)?;
        writeln!(f, "kernel:    {}", self.kernel)?;
        writeln!(
            f,
            "reference: {} (set {:?})",
            expected_outcome(&self.reference),
            self.reference.set
        )?;
        write!(
            f,
            "bytes ({}):\n{}",
            self.frame.bytes.len(),
            self.frame.hex()
        )
    }
}

/// One loaded filter (program + its own maps), with the policy last applied.
pub struct Harness {
    pub filter: LoadedFilter,
    /// The filter's return-traffic flow table.
    pub flows: FlowTable,
    /// Flows written live into `flows` by the test (the model's view of the table).
    pub open_flows: HashSet<FlowKey>,
    pub policy: Option<Policy>,
    /// The YAML of `policy`, for failure messages.
    pub policy_text: String,
}

/// The flow a built frame is on, if it can answer one: the builder's frames come
/// from port [`SOURCE_PORT`] and carry echo identifier 0. A TCP segment is on its
/// flow whatever its flags, so a test can open the flow a peer's SYN is on;
/// whether the segment may answer it is the model's call
/// ([`reference::can_answer_flow`]).
pub fn answered_flow(class: &PacketClass) -> Option<Flow> {
    let PacketClass::Ip { src, l4 } = *class else {
        return None;
    };
    if !matches!(l4, L4::Tcp { .. }) && !reference::can_answer_flow(class) {
        return None;
    }
    let (protocol, local_port, peer_port) = match l4 {
        L4::Tcp { dst_port, .. } => (6, dst_port, SOURCE_PORT),
        L4::Udp { dst_port } => (17, dst_port, SOURCE_PORT),
        L4::Icmp { .. } => (1, 0, 0),
        L4::Icmpv6 { .. } => (58, 0, 0),
        _ => return None,
    };
    Some(Flow {
        peer: src,
        protocol,
        local_port,
        peer_port,
    })
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Loads the real embedded object: the verifier sees exactly what ships.
    pub fn new() -> Self {
        Self::for_framing(Framing::Ethernet)
    }

    /// [`Harness::new`] with the program for `framing` (`Framing::Ip`: the one
    /// for devices whose frames start at the IP header).
    pub fn for_framing(framing: Framing) -> Self {
        require_root();
        let filter = LoadedFilter::load_for(framing)
            .unwrap_or_else(|e| panic!("loading the XDP program failed: {e:?}"));
        Self::with_filter(filter)
    }

    /// [`Harness::new`] with the datapath's debug/trace lines at `level`
    /// (aya-log's numbering, 0: off); read them with `aya_log::EbpfLogger` on
    /// `filter.ebpf`.
    pub fn with_datapath_log(level: u8) -> Self {
        require_root();
        let filter = LoadedFilter::load_logging(Framing::Ethernet, level)
            .unwrap_or_else(|e| panic!("loading the XDP program failed: {e:?}"));
        Self::with_filter(filter)
    }

    fn with_filter(mut filter: LoadedFilter) -> Self {
        let flows = FlowTable::of(&mut filter.ebpf)
            .unwrap_or_else(|e| panic!("no flow table in the object: {e:?}"));
        Harness {
            filter,
            flows,
            open_flows: HashSet::new(),
            policy: None,
            policy_text: String::new(),
        }
    }

    /// Validates, compiles and applies `yaml` (flipping to the other generation);
    /// returns the validated policy, which is also kept for [`Harness::check`].
    pub fn apply(&mut self, yaml: &str) -> Policy {
        let policy = parse_policy(yaml);
        let compiled = compile::compile(&policy)
            .unwrap_or_else(|e| panic!("compiling failed: {e}\npolicy:\n{yaml}"));
        self.filter
            .maps
            .apply(&compiled, &PolicySummary::default())
            .unwrap_or_else(|e| panic!("applying failed: {e:?}\npolicy:\n{yaml}"));
        self.policy = Some(policy.clone());
        self.policy_text = yaml.to_owned();
        policy
    }

    /// The config of the generation in force, as the kernel holds it (what the
    /// program reads: which families have flag tables, say).
    pub fn config_in_force(&self) -> airlock_common::GenConfig {
        let maps = &self.filter.maps;
        let generation = maps.active_generation().expect("reading the generation");
        maps.generation_config(generation)
            .expect("reading the config back")
            .expect("the policy in force is complete")
    }

    /// Writes `flow` into the table as open for another hour, as the egress
    /// program would have after the host sent on it.
    pub fn open_flow(&mut self, flow: &Flow) {
        let expires = monotonic_ns() + Duration::from_secs(3600).as_nanos() as u64;
        self.flows
            .insert_open(flow, expires)
            .unwrap_or_else(|e| panic!("writing flow {flow:?}: {e:?}"));
        self.open_flows.insert(flow.key());
    }

    /// Writes `flow` as an entry whose timeout passed a second ago. (The programs
    /// read the coarse clock, up to a tick behind the precise one: a deadline
    /// a nanosecond past would still be ahead of it.)
    pub fn expired_flow(&mut self, flow: &Flow) {
        self.flows
            .insert_open(flow, monotonic_ns().saturating_sub(1_000_000_000))
            .unwrap_or_else(|e| panic!("writing flow {flow:?}: {e:?}"));
        self.open_flows.remove(&flow.key());
    }

    /// Whether the model holds `class`'s flow open.
    pub fn answers_open_flow(&self, class: &PacketClass) -> bool {
        answered_flow(class).is_some_and(|flow| self.open_flows.contains(&flow.key()))
    }

    /// Runs `bytes` through the TC egress program (it only records flows; its
    /// return value is TCX_NEXT, -1, for every packet).
    pub fn run_egress(&mut self, bytes: &[u8]) -> i32 {
        let program = self
            .filter
            .egress_program()
            .unwrap_or_else(|e| panic!("loading the egress program failed: {e:?}"));
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(bytes),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN (egress) failed: {e:?}\n{}",
                    crate::packet::hex(bytes)
                )
            });
        result.return_value as i32
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.filter
            .program()
            .unwrap_or_else(|e| panic!("no XDP program {PROGRAM_NAME}: {e:?}"))
    }

    pub fn counters(&self) -> Counters {
        self.filter
            .maps
            .counters()
            .unwrap_or_else(|e| panic!("reading counters failed: {e:?}"))
    }

    /// Runs `bytes` once; the raw syscall result (the kernel refuses some inputs,
    /// e.g. frames shorter than an Ethernet header).
    pub fn try_run(&mut self, bytes: &[u8]) -> Result<Outcome, ProgramError> {
        let before = self.counters();
        let result = self.program().test_run(TestRunOptions {
            data_in: Some(bytes),
            repeat: 1,
            ..Default::default()
        })?;
        let after = self.counters();
        let (reason, rule) = attribute(&before, &after, bytes.len());
        Ok(Outcome {
            action: result.return_value,
            reason,
            rule,
        })
    }

    /// Runs `bytes` once through the program and reads back what it decided.
    pub fn run(&mut self, bytes: &[u8]) -> Outcome {
        self.try_run(bytes).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN failed: {e:?}\n{}",
                crate::packet::hex(bytes)
            )
        })
    }

    /// Runs `frame` and compares with the reference verdict for its class under the
    /// applied policy: action, reason and rule.
    pub fn compare(&mut self, frame: &Frame) -> Result<Outcome, Box<Disagreement>> {
        let policy = self
            .policy
            .as_ref()
            .expect("apply a policy before running frames");
        let verdict =
            reference::verdict_for(policy, &frame.class, self.answers_open_flow(&frame.class));
        let kernel = self.run(&frame.bytes);
        if kernel == expected_outcome(&verdict) {
            Ok(kernel)
        } else {
            Err(Box::new(Disagreement {
                frame: frame.clone(),
                kernel,
                reference: verdict,
            }))
        }
    }

    /// [`Harness::compare`], panicking with the policy and frame on a disagreement.
    pub fn check(&mut self, frame: &Frame) -> Outcome {
        match self.compare(frame) {
            Ok(outcome) => outcome,
            Err(d) => panic!(
                "kernel and reference model disagree\n{d}\npolicy:\n{}",
                self.policy_text
            ),
        }
    }
}

/// Parses policy text the tests wrote; a test policy that does not validate is a bug
/// in the test.
pub fn parse_policy(yaml: &str) -> Policy {
    policy::parse_str(yaml, Path::new("test-policy.yaml"))
        .unwrap_or_else(|e| panic!("test policy does not validate: {e}\n{yaml}"))
}

fn delta(before: Counter, after: Counter) -> Counter {
    Counter {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
    }
}

/// The reason and rule of one run, from the counter deltas. Exactly one reason
/// counter moves by one packet of `len` bytes; at most one rule counter moves, on
/// the side (allowed/refused) the reason says.
fn attribute(before: &Counters, after: &Counters, len: usize) -> (Reason, Option<usize>) {
    let one = Counter {
        packets: 1,
        bytes: len as u64,
    };
    let moved: Vec<(Reason, Counter)> = Reason::ALL
        .iter()
        .map(|&r| (r, delta(before.reason(r), after.reason(r))))
        .filter(|(_, d)| *d != Counter::default())
        .collect();
    let [(reason, d)] = moved[..] else {
        panic!("expected exactly one reason counter to move, got {moved:?}");
    };
    assert_eq!(d, one, "reason counter {} moved by {d:?}", reason.name());
    assert_eq!(
        before.rules.len(),
        after.rules.len(),
        "rule count changed during a run"
    );
    let mut rule = None;
    for (i, (b, a)) in before.rules.iter().zip(&after.rules).enumerate() {
        for (allowed, db) in [(true, delta(b.0, a.0)), (false, delta(b.1, a.1))] {
            if db == Counter::default() {
                continue;
            }
            assert_eq!(db, one, "rule {i} counter moved by {db:?}");
            assert!(
                rule.is_none(),
                "more than one rule counter moved ({rule:?} and {i})"
            );
            assert_eq!(
                allowed,
                reason.passes(),
                "rule {i} counted as allowed={allowed} for reason {}",
                reason.name()
            );
            rule = Some(i);
        }
    }
    (reason, rule)
}
