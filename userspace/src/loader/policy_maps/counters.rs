//! Reading the per-CPU counters, summed over CPUs, and keeping each generation's
//! rule counters monotonic across the applies that reuse it.

use airlock_common::{
    Counter, GENERATIONS, MAP_REASON_STATS, MAP_RULE_BASE, MAP_RULE_STATS, MAP_SAMPLE_STATE,
    MAP_SAMPLE_STATS, MAX_RULES, RULE_STAT_SLOTS, Reason, SAMPLE_STAT_SLOTS, SAMPLES_RATE_LIMITED,
    reason_stat_index, rule_base_index, rule_stat_index,
};
use aya::maps::{IterableMap as _, PerCpuValues};

use super::{LoaderError, PolicyMaps, map_err};
use crate::loader::batch;

/// Per-CPU counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `Reason as usize`: every packet, whatever the mode.
    pub reasons: Vec<Counter>,
    /// The part of `reasons` judged in monitor mode (a drop reason there means
    /// "would have dropped"; the packet passed).
    pub reasons_in_monitor: Vec<Counter>,
    /// Drop samples sent, held back by the rate limit, lost to a full ring.
    pub samples: [u64; SAMPLE_STAT_SLOTS as usize],
    /// The generation that was active when `rules` were read: its summary
    /// ([`PolicyMaps::generation_summary`]) names them. Asking for the active one
    /// afterwards could name them after a policy applied in between.
    pub generation: u32,
    /// For `generation`: (allowed, refused) per rule index.
    pub rules: Vec<(Counter, Counter)>,
}

impl Counters {
    pub fn reason(&self, reason: Reason) -> Counter {
        self.reasons
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl PolicyMaps {
    /// Rule counters are per generation, so the counters of the policy in force belong
    /// to its rules. They are never reset (their sums are the `RuleAllowed` and
    /// `RuleRefused` totals, which must only grow): a generation about to be reused
    /// gets a snapshot of its counters instead, and the policy's counters are the
    /// growth since.
    pub(super) fn snapshot_rule_base(&mut self, generation: u32) -> Result<(), LoaderError> {
        let stats = self.rule_stats_summed()?;
        let mut keys = Vec::with_capacity(2 * MAX_RULES);
        let mut values = Vec::with_capacity(2 * MAX_RULES);
        for allowed in [true, false] {
            for rule in 0..MAX_RULES as u32 {
                let at =
                    |monitor| stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                keys.push(rule_base_index(generation, allowed, rule));
                values.push(add(at(false), at(true)));
            }
        }
        let raw: Vec<u64> = values.iter().flat_map(|c| [c.packets, c.bytes]).collect();
        if batch::update_u32_keys_u64s(self.rule_base.map(), &keys, &raw, 2).is_err() {
            for (&index, &value) in keys.iter().zip(&values) {
                self.rule_base
                    .set(index, value, 0)
                    .map_err(map_err(MAP_RULE_BASE))?;
            }
        }
        Ok(())
    }

    /// Every `RULE_STATS` slot, summed over CPUs.
    fn rule_stats_summed(&self) -> Result<Vec<Counter>, LoaderError> {
        let mut out = vec![Counter::default(); RULE_STAT_SLOTS as usize];
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| LoaderError::io("reading", "/sys/devices/system/cpu/possible", e))?;
        let per_cpu = size_of::<Counter>();
        let batch = batch::lookup_each(
            self.rule_stats.map(),
            size_of::<u32>(),
            per_cpu * cpus,
            |key, values| {
                let index = u32::from_ne_bytes(key.try_into().unwrap_or_default()) as usize;
                let word = |at: usize| {
                    u64::from_ne_bytes(values[at..at + 8].try_into().unwrap_or_default())
                };
                if let Some(slot) = out.get_mut(index) {
                    for cpu in 0..cpus {
                        slot.packets += word(cpu * per_cpu);
                        slot.bytes += word(cpu * per_cpu + 8);
                    }
                }
            },
        );
        if batch.is_err() {
            for (index, slot) in (0..RULE_STAT_SLOTS).zip(out.iter_mut()) {
                let values = self
                    .rule_stats
                    .get(&index, 0)
                    .map_err(map_err(MAP_RULE_STATS))?;
                *slot = values
                    .iter()
                    .fold(Counter::default(), |acc, c| add(acc, *c));
            }
        }
        Ok(out)
    }

    /// Counters summed over CPUs; rule counters are those of the active generation.
    pub fn counters(&self) -> Result<Counters, LoaderError> {
        let sum = |values: PerCpuValues<Counter>| {
            values
                .iter()
                .fold(Counter::default(), |acc, c| add(acc, *c))
        };
        let mut reasons = Vec::with_capacity(Reason::ALL.len());
        let mut reasons_in_monitor = Vec::with_capacity(Reason::ALL.len());
        for reason in Reason::ALL {
            let read = |monitor| {
                self.reason_stats
                    .get(&reason_stat_index(reason as u32, monitor), 0)
                    .map(sum)
                    .map_err(map_err(MAP_REASON_STATS))
            };
            let (enforced, monitored) = (read(false)?, read(true)?);
            reasons.push(add(enforced, monitored));
            reasons_in_monitor.push(monitored);
        }
        // Packets a rule decided are counted only per rule (one counter update per
        // packet in the kernel): their reason totals are the sums over every rule,
        // outcome and generation, so they only grow, across any number of applies.
        let stats = self.rule_stats_summed()?;
        for generation in 0..GENERATIONS {
            for monitor in [false, true] {
                for (allowed, reason) in [(true, Reason::RuleAllowed), (false, Reason::RuleRefused)]
                {
                    for rule in 0..MAX_RULES as u32 {
                        let c = stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                        let at = reason as usize;
                        reasons[at] = add(reasons[at], c);
                        if monitor {
                            reasons_in_monitor[at] = add(reasons_in_monitor[at], c);
                        }
                    }
                }
            }
        }
        let mut samples = [0u64; SAMPLE_STAT_SLOTS as usize];
        for (slot, total) in (0..SAMPLE_STAT_SLOTS).zip(samples.iter_mut()) {
            let values = self
                .sample_stats
                .get(&slot, 0)
                .map_err(map_err(MAP_SAMPLE_STATS))?;
            *total = values.iter().sum();
        }
        // The program counts what the rate limit held back in the window it
        // checks (one map lookup per refused packet, not two).
        let windows = self
            .sample_state
            .get(&0, 0)
            .map_err(map_err(MAP_SAMPLE_STATE))?;
        samples[SAMPLES_RATE_LIMITED as usize] += windows
            .iter()
            .map(|window| window.rate_limited)
            .sum::<u64>();
        let generation = self.active_generation()?;
        let rule_count = self.config(generation)?.rule_count;
        let mut rules = Vec::with_capacity(rule_count as usize);
        for rule in 0..rule_count.min(MAX_RULES as u32) {
            let mut pair = [Counter::default(); 2];
            for (slot, allowed) in pair.iter_mut().zip([true, false]) {
                let at =
                    |monitor| stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                let base = self
                    .rule_base
                    .get(&rule_base_index(generation, allowed, rule), 0)
                    .map_err(map_err(MAP_RULE_BASE))?;
                let now = add(at(false), at(true));
                *slot = Counter {
                    packets: now.packets.saturating_sub(base.packets),
                    bytes: now.bytes.saturating_sub(base.bytes),
                };
            }
            rules.push((pair[0], pair[1]));
        }
        Ok(Counters {
            reasons,
            reasons_in_monitor,
            samples,
            generation,
            rules,
        })
    }
}

fn add(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
    }
}
