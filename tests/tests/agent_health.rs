//! The agent's health endpoints answer at once whatever else it does: large
//! reloads, many concurrent scrapes, a full flow table. A liveness probe that
//! waits behind work gets the agent restarted. Needs root; fails without it.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use airlock::loader::{Flow, FlowTable, monotonic_ns};
use airlock_common::FLOW_TABLE_ENTRIES;
use airlock_integration::{
    agent::{
        Agent, Answers, RELOAD, bulk_hosts, metric, metrics, policy_path, policy_text, poll,
        rename_policy, write_policy,
    },
    fixture::Fixture,
    netns::wait_until,
};

/// The longest a health answer may take, with everything else going on.
const FAST: Duration = Duration::from_millis(100);

/// Every answer came, was 200 and took less than [`FAST`]; at least `at_least` of them.
fn assert_all_fast(answers: &Answers, at_least: usize, agent: &Agent) {
    let slowest = answers
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    let failed = answers.iter().filter(|(status, _)| *status != 200).count();
    eprintln!(
        "{} health answers, the slowest in {slowest:?}",
        answers.len()
    );
    assert!(
        answers.len() >= at_least,
        "only {} health answers; log:\n{}",
        answers.len(),
        agent.log()
    );
    assert_eq!(
        failed,
        0,
        "health requests without a 200 among {}",
        answers.len()
    );
    assert!(
        slowest < FAST,
        "the slowest of {} health answers took {slowest:?}",
        answers.len()
    );
}

/// A policy importing `hosts` hosts (sets `office` and `bulk`), letting `from` in.
fn with_bulk(f: &Fixture, from: &str) -> String {
    policy_text(f, from).replace("sets:\n", "sets:\n  bulk:\n    file: bulk.txt\n")
}

#[test]
fn health_answers_at_once_while_large_reloads_and_concurrent_scrapes_run() {
    let f = Fixture::new("ahr");
    // 400,000 hosts: a reload compiles and writes some 800,000 ranges, hundreds of
    // milliseconds of work.
    fs::write(f.dir.path().join("bulk.txt"), bulk_hosts(400_000)).expect("write list");
    write_policy(&f, &with_bulk(&f, "office, bulk"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let health = poll(&f, "/healthz", Duration::from_millis(10), Arc::clone(&stop));
    let scrapers: Vec<_> = (0..20)
        .map(|_| poll(&f, "/metrics", Duration::ZERO, Arc::clone(&stop)))
        .collect();
    let reloads = || metric(&f, "airlock_policy_reloads_total");
    for step in 0..4 {
        let before = reloads();
        let from = if step % 2 == 0 {
            "office, bulk, 203.0.113.0/24"
        } else {
            "office, bulk"
        };
        rename_policy(&f, &with_bulk(&f, from));
        assert!(
            wait_until(RELOAD * 5, || reloads() > before),
            "reload {step} not done; log:\n{}",
            agent.log()
        );
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let scrapes: usize = scrapers
        .into_iter()
        .map(|s| s.join().expect("scraper").len())
        .sum();
    assert!(scrapes >= 20, "only {scrapes} scrapes");
    assert_all_fast(&health.join().expect("health poller"), 50, &agent);
}

#[test]
fn twenty_concurrent_scrapes_of_a_full_flow_table_never_hold_up_health() {
    let f = Fixture::new("ahf");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    // Filled as the egress program fills it (the host's own flows, an hour to go).
    let dir = f.bed.bpffs.path().join(&f.bed.server_if);
    let mut table = FlowTable::open_pinned(&dir).expect("flow table");
    let until = monotonic_ns() + 3_600_000_000_000;
    for i in 0..FLOW_TABLE_ENTRIES {
        let flow = Flow {
            peer: std::net::IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0xf10, 0, 0, 0, 0, i as u16,
            )),
            protocol: 17,
            local_port: 50_000 + (i >> 16) as u16,
            peer_port: 53,
        };
        table.insert_open(&flow, until).expect("fill flow table");
    }
    let present = format!(
        "airlock_return_flows{{interface=\"{}\",kind=\"present\"}}",
        f.bed.server_if
    );
    // The scrapes report the full table.
    assert!(
        metric(&f, &present) >= f64::from(FLOW_TABLE_ENTRIES) * 0.9,
        "{}",
        metrics(&f)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let health = poll(&f, "/healthz", Duration::from_millis(10), Arc::clone(&stop));
    let scrapers: Vec<_> = (0..20)
        .map(|_| poll(&f, "/metrics", Duration::ZERO, Arc::clone(&stop)))
        .collect();
    thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let scrapes: Answers = scrapers
        .into_iter()
        .flat_map(|s| s.join().expect("scraper"))
        .collect();
    let failed = scrapes.iter().filter(|(status, _)| *status != 200).count();
    assert_eq!(failed, 0, "scrapes without a 200 among {}", scrapes.len());
    // A walk of the full table takes some 150 ms: twenty scrapes queued behind each
    // other, each walking it, would take seconds apiece.
    let slowest = scrapes
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    eprintln!("{} scrapes, the slowest in {slowest:?}", scrapes.len());
    assert!(
        scrapes.len() >= 100 && slowest < Duration::from_secs(1),
        "{} scrapes in 4 s, the slowest in {slowest:?}",
        scrapes.len()
    );
    assert_all_fast(&health.join().expect("health poller"), 100, &agent);
}
