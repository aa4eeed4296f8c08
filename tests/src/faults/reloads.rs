//! The agent under churn: reloads in a row, valid and invalid alternating (the
//! valid ones alternate between two policies, so each is a real swap). Its
//! resident memory and open descriptors must stay flat, its metrics must count
//! every reload and every rejection, and the policy in force must be the last
//! valid one throughout.

use std::{
    fs,
    time::{Duration, Instant},
};

use super::{Tally, policy, spawn_agent};
use crate::{agent, fixture::Fixture, netns::wait_until};

/// Resident memory (KiB) and open descriptors of process `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[derive(Debug, Default)]
pub struct Churn {
    pub reloads: u64,
    pub rejections: u64,
    /// (reload, RSS KiB, descriptors) samples.
    pub samples: Vec<(u64, u64, usize)>,
}

pub fn churn(f: &Fixture, count: u64) -> (Tally, Churn) {
    let mut t = Tally::new("agent reload churn");
    let mut c = Churn::default();
    let office = policy(f, "office");
    let partners = fs::read_to_string(policy(f, "partners")).expect("policy");
    let office_text = fs::read_to_string(&office).expect("policy");
    let path = agent::policy_path(f);
    fs::write(&path, &office_text).expect("policy");
    let state = f.dir.path().join("state-churn");
    let agent = match spawn_agent(f, &path, &state, false) {
        Ok(agent) => agent,
        Err(e) => {
            t.fail(format!("churn: {e}"));
            return (t, c);
        }
    };
    if !super::ready_within(f, Duration::from_secs(10)) {
        t.fail(format!("churn: agent not ready: {}", agent.log()));
        return (t, c);
    }
    t.office(f, "before the churn");
    let pid = agent.child.id();
    let reloads0 = agent::metric(f, "airlock_policy_reloads_total");
    let failures0 = agent::metric_sum(f, "airlock_policy_reload_failures_total");
    let started = Instant::now();
    let mut office_in_force = true;
    for i in 0..count {
        let valid = i.is_multiple_of(2);
        let text = if !valid {
            // A different mistake each time: the agent must not take it for the
            // last one it rejected.
            format!(
                "{}  - name: broken{i}\n    ports: [{}/tcp]\n",
                office_text,
                70_000 + i
            )
        } else if office_in_force {
            partners.clone()
        } else {
            office_text.clone()
        };
        agent::rename_policy(f, &text);
        t.faults += 1;
        let (series, before) = if valid {
            ("airlock_policy_reloads_total", reloads0 + c.reloads as f64)
        } else {
            (
                "airlock_policy_reload_failures_total",
                failures0 + c.rejections as f64,
            )
        };
        // The failures counter is labelled by kind: summed.
        let counted = wait_until(agent::RELOAD * 3, || agent::metric_sum(f, series) > before);
        if !counted {
            t.fail(format!(
                "churn: reload {i} ({}) not counted in {series}: {}",
                if valid { "valid" } else { "invalid" },
                agent
                    .log()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            break;
        }
        if valid {
            c.reloads += 1;
            office_in_force = !office_in_force;
        } else {
            c.rejections += 1;
        }
        if i.is_multiple_of(100) || i + 1 == count {
            let (rss, fds) = usage(pid);
            c.samples.push((i + 1, rss, fds));
        }
        // Real packets now and then: the last valid policy is in force.
        if i % 50 == 1 || i + 1 == count {
            if office_in_force {
                t.office(f, &format!("after reload {i}"));
            } else {
                t.partners(f, &format!("after reload {i}"));
            }
        }
    }
    let elapsed = started.elapsed();
    // Metrics: exactly one count per reload and per rejection.
    let reloads = agent::metric(f, "airlock_policy_reloads_total") - reloads0;
    let failures = agent::metric_sum(f, "airlock_policy_reload_failures_total") - failures0;
    if reloads != c.reloads as f64 || failures != c.rejections as f64 {
        t.fail(format!(
            "churn: metrics count {reloads} reloads and {failures} rejections for {} and {}",
            c.reloads, c.rejections
        ));
    }
    if agent::metric(f, "airlock_policy_in_sync") != 0.0 && count.is_multiple_of(2) && count > 0 {
        t.fail("churn: in_sync says 1 while the file holds a rejected policy".into());
    }
    // No growth: the last sample against the first after the allocator's
    // warm-up (the first 100); between samples both move with the reload in
    // progress (its buffers, the metrics scrape's socket).
    if let (Some(&(_, rss0, fds0)), Some(&(_, rss1, fds1))) =
        (c.samples.get(1).or(c.samples.first()), c.samples.last())
    {
        let peak = c.samples.iter().map(|s| s.1).max().unwrap_or(0);
        if rss1 > rss0 + 4096 || fds1 > fds0 + 2 {
            t.fail(format!(
                "churn: RSS {rss0} -> {rss1} KiB, descriptors {fds0} -> {fds1}: {:?}",
                c.samples
            ));
        }
        t.outcome(format!(
            "{} reloads and {} rejections in {elapsed:.0?}: metrics exact, RSS {rss0} -> {rss1} KiB (at most {peak}), descriptors {fds0} -> {fds1}",
            c.reloads, c.rejections
        ));
    }
    drop(agent);
    let _ = f.airlock(&["remove", "--all"]);
    (t, c)
}
