//! The fleet source end to end (issue 23): the real agent binary, started with
//! `--kubernetes-node` in a test namespace, its client configured by a kubeconfig
//! the test writes, against the fake API server of `airlock_integration::fake_api`
//! served over HTTP on 127.0.0.1 in the same namespace, and a real XDP filter judged
//! by real packets. No Kubernetes API server can be had here (none is packaged):
//! the fake serves list, watch and server-side apply for the kinds the agent uses.
//! Needs root.
//!
//! The figures docs/kubernetes.md quotes are printed (`FIGURE ...`; run with
//! `--nocapture` to see them).

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use airlock_crds::{digest, shards};
use airlock_integration::{
    agent::{Agent, metric, metric_sum, ready},
    fake_api::{FakeApi, NODES, POLICIES, REVISIONS, SHARDS, STATUSES},
    fixture::{Fixture, PORT},
    netns::{addr, wait_until},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
/// How soon a revision change must be seen on the wire.
const WITHIN: Duration = Duration::from_secs(1);
/// A connect that takes longer had its SYN dropped (a veth answers in well under
/// a millisecond): short, so the verdict's change is timed to about this.
const PROBE: Duration = Duration::from_millis(100);

fn cache_dir(f: &Fixture) -> PathBuf {
    f.dir.path().join("fleet-cache")
}

/// Starts the agent as the DaemonSet does with `source: kubernetes`, and waits
/// for its HTTP endpoint.
fn spawn_agent(f: &Fixture) -> Agent {
    let kubeconfig = f.write("kubeconfig", &FakeApi::kubeconfig());
    Agent::spawn_with(
        f,
        &[],
        |command| {
            command
                .args(["--kubernetes-node", NODE, "--cache-dir"])
                .arg(cache_dir(f))
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST");
        },
        &[],
    )
}

fn wait_ready(f: &Fixture, agent: &Agent, timeout: Duration) {
    assert!(
        wait_until(timeout, || ready(f)),
        "agent not ready; log:\n{}",
        agent.log()
    );
}

/// A policy on the test bed's interface letting the sets `from` reach PORT/tcp;
/// `file_sets` are imported from the revision's source sets.
fn policy_text(f: &Fixture, file_sets: &[&str], inline: &str, from: &str) -> String {
    let mut text = format!(
        "version: 1\nmode: enforce\ninterfaces: [{}]\nsets:\n",
        f.bed.server_if
    );
    for set in file_sets {
        text.push_str(&format!("  {set}:\n    file: sets/{set}.txt\n"));
    }
    text.push_str(inline);
    text.push_str(&format!(
        "rules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n"
    ));
    text
}

/// Publishes a revision whose source set `set` is `list`, cut into shards as a
/// publisher would (`shards::split`). Returns the number of shards.
fn publish(api: &FakeApi, name: &str, policy: &str, set: &str, list: &str) -> usize {
    let pieces = shards::split(list).expect("shards");
    let mut refs = Vec::new();
    for (i, (digest, text)) in pieces.iter().enumerate() {
        let shard = format!("{name}-{set}-{i}");
        api.put(
            SHARDS,
            json!({"metadata": {"name": shard}, "spec": {"set": set, "prefixes": text}}),
        );
        refs.push(json!({"name": shard, "digest": digest}));
    }
    api.put(
        REVISIONS,
        json!({"metadata": {"name": name}, "spec": {
            "policy": policy, "sourceSets": [{"name": set, "shards": refs}]}}),
    );
    pieces.len()
}

fn point(api: &FakeApi, revision: &str, canary: Option<Value>) {
    let mut spec = json!({"nodeSelector": {"matchLabels": {"role": "db"}}, "revision": revision});
    if let Some(canary) = canary {
        spec["canary"] = canary;
    }
    api.put(POLICIES, json!({"metadata": {"name": "db"}, "spec": spec}));
}

/// The node, and revisions r1 (office only) and r2 (office and the strangers),
/// the policy on r1.
fn seed(f: &Fixture, api: &FakeApi) {
    api.put(
        NODES,
        json!({"metadata": {"name": NODE, "labels": {"role": "db"}}}),
    );
    let office = "198.51.100.0/24\n2001:db8:100::/48\n";
    publish(
        api,
        "r1",
        &policy_text(f, &["office"], "", "office"),
        "office",
        office,
    );
    let strangers = "  strangers: [203.0.113.0/24]\n";
    publish(
        api,
        "r2",
        &policy_text(f, &["office"], strangers, "office, strangers"),
        "office",
        office,
    );
    point(api, "r1", None);
}

/// The status the agent last wrote: (revision, mode, source, Enforcing, InSync
/// reason).
fn status(api: &FakeApi) -> Option<(String, String, String, String, String)> {
    let spec = api.get(STATUSES, NODE)?["spec"].clone();
    let condition = |t: &str| -> Option<(String, String)> {
        let c = spec["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == t)?
            .clone();
        Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into()))
    };
    Some((
        spec["revision"].as_str()?.into(),
        spec["mode"].as_str()?.into(),
        spec["source"].as_str()?.into(),
        condition("Enforcing")?.0,
        condition("InSync")?.1,
    ))
}

fn wait_status(api: &FakeApi, agent: &Agent, revision: &str, mode: &str, source: &str) {
    let wanted = Some((
        revision.into(),
        mode.into(),
        source.into(),
        "True".into(),
        "Synced".into(),
    ));
    assert!(
        wait_until(Duration::from_secs(15), || status(api) == wanted),
        "status {:?}, wanted {wanted:?}; log:\n{}",
        status(api),
        agent.log()
    );
}

/// Time until the stranger's connects change from `before` to the other verdict.
fn time_to_verdict(f: &Fixture, before_gets_in: bool, change: impl FnOnce()) -> Duration {
    let started = Instant::now();
    change();
    while f.bed.connects(addr::STRANGER_V4, PORT, PROBE) == before_gets_in {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the verdict never changed"
        );
    }
    started.elapsed()
}

#[test]
fn a_revision_change_reaches_packets_within_a_second() {
    let f = Fixture::new("fle");
    let api = FakeApi::new();
    seed(&f, &api);
    let _server = api.serve_in(&f.bed.server);
    let agent = spawn_agent(&f);
    wait_ready(&f, &agent, Duration::from_secs(15));
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));
    wait_status(&api, &agent, "r1", "enforce", "ApiServer");

    // Forward: the pointer moves to r2, which lets the strangers in.
    let forward = time_to_verdict(&f, false, || point(&api, "r2", None));
    eprintln!("FIGURE revision change to enforcement: {forward:?}");
    assert!(forward < WITHIN, "took {forward:?}; log:\n{}", agent.log());
    wait_status(&api, &agent, "r2", "enforce", "ApiServer");

    // Rollback: the pointer moves back.
    let back = time_to_verdict(&f, true, || point(&api, "r1", None));
    eprintln!("FIGURE rollback to enforcement: {back:?}");
    assert!(back < WITHIN, "took {back:?}; log:\n{}", agent.log());
    assert!(f.gets_in(addr::OFFICE_V4));
    wait_status(&api, &agent, "r1", "enforce", "ApiServer");

    // A canary in monitor mode: r3 would keep the office out, and the node, in the
    // canary (100 %), applies it in monitor mode: nothing is dropped, the status
    // says monitor. The revision's text says `mode: enforce` throughout.
    let office = "198.51.100.0/24\n";
    publish(
        &api,
        "r3",
        &policy_text(
            &f,
            &["office"],
            "  strangers: [203.0.113.0/24]\n",
            "strangers",
        ),
        "office",
        office,
    );
    point(
        &api,
        "r1",
        Some(json!({"revision": "r3", "percent": 100, "monitor": true})),
    );
    wait_status(&api, &agent, "r3", "monitor", "ApiServer");
    assert!(f.gets_in(addr::OFFICE_V4), "monitor mode dropped");
    assert!(f.gets_in(addr::STRANGER_V4));
    // Enforcing on the canary: the same text, now enforced.
    point(
        &api,
        "r1",
        Some(json!({"revision": "r3", "percent": 100, "monitor": false})),
    );
    wait_status(&api, &agent, "r3", "enforce", "ApiServer");
    assert!(f.kept_out(addr::OFFICE_V4));
    assert!(f.gets_in(addr::STRANGER_V4));
    // Dropping the canary is the rollback. The status names r1 only once the
    // kernel enforces it: checked in that order.
    point(&api, "r1", None);
    wait_status(&api, &agent, "r1", "enforce", "ApiServer");
    assert!(f.gets_in(addr::OFFICE_V4), "log:\n{}", agent.log());
    assert!(f.kept_out(addr::STRANGER_V4));
}

/// The revision every status write since write `from` names as in force.
fn claimed_since(api: &FakeApi, from: usize) -> Vec<String> {
    api.applies()
        .iter()
        .skip(from)
        .map(|a| a.body["spec"]["revision"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The status names as in force only what the kernel enforces: a revision the
/// agent rejects is never claimed (the one before it stays, InSync False with
/// the rejection), and a revision whose reload takes a while is claimed only once
/// its verdicts are on the wire.
#[test]
fn the_status_claims_only_the_revision_the_kernel_enforces() {
    let f = Fixture::new("fls");
    let api = FakeApi::new();
    seed(&f, &api);
    let _server = api.serve_in(&f.bed.server);
    let agent = spawn_agent(&f);
    wait_ready(&f, &agent, Duration::from_secs(15));
    wait_status(&api, &agent, "r1", "enforce", "ApiServer");

    // A revision the agent refuses: its rule names a set that does not exist.
    let office = "198.51.100.0/24\n2001:db8:100::/48\n";
    publish(
        &api,
        "bad",
        &policy_text(&f, &["office"], "  strangers: [203.0.113.0/24]\n", "nobody"),
        "office",
        office,
    );
    let before = api.applies().len();
    point(&api, "bad", None);
    assert!(
        wait_until(Duration::from_secs(10), || metric_sum(
            &f,
            "airlock_policy_reload_failures_total"
        ) >= 1.0),
        "the agent did not reject the revision; log:\n{}",
        agent.log()
    );
    // A status write or two after the rejection, whatever they say.
    std::thread::sleep(Duration::from_millis(2500));
    let claimed = claimed_since(&api, before);
    assert!(
        claimed.iter().all(|r| r == "r1"),
        "the status named as in force a revision the kernel never had: {claimed:?}"
    );
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "the rejected revision applied"
    );
    let spec = api.get(STATUSES, NODE).expect("status")["spec"].clone();
    let in_sync = spec["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "InSync"))
        .cloned()
        .expect("InSync");
    assert_eq!(in_sync["status"], "False", "{spec}");
    assert_eq!(in_sync["reason"], "RevisionRejected", "{spec}");
    let message = in_sync["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bad") && message.contains("nobody") && message.contains("r1"),
        "{message}"
    );

    // A revision that lets the strangers in, behind 300,000 more prefixes: its
    // reload takes a while. Whenever the status first names it, its verdict is
    // already on the wire.
    let mut list = prefixes(300_000);
    list.push_str(office);
    publish(
        &api,
        "slow",
        &policy_text(
            &f,
            &["office"],
            "  strangers: [203.0.113.0/24]\n",
            "office, strangers",
        ),
        "office",
        &list,
    );
    point(&api, "slow", None);
    let started = Instant::now();
    while api
        .get(STATUSES, NODE)
        .is_none_or(|s| s["spec"]["revision"] != "slow")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the status never named the new revision; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        f.gets_in(addr::STRANGER_V4),
        "the status named revision slow in force before the kernel enforced it (after {:?}); log:\n{}",
        started.elapsed(),
        agent.log()
    );
    wait_status(&api, &agent, "slow", "enforce", "ApiServer");
}

#[test]
fn enforcement_never_stops_without_the_api_server() {
    let f = Fixture::new("flo");
    let api = FakeApi::new();
    seed(&f, &api);
    let server = api.serve_in(&f.bed.server);
    let mut agent = spawn_agent(&f);
    wait_ready(&f, &agent, Duration::from_secs(15));
    wait_status(&api, &agent, "r1", "enforce", "ApiServer");

    let stop = AtomicBool::new(false);
    /// Stops the prober however the test ends (a panic would leave it running
    /// and the scope waiting for it).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (probes, breaches) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        // Throughout: the stranger never gets in, the office always does.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if f.bed.connects(addr::STRANGER_V4, PORT, PROBE) || !f.gets_in(addr::OFFICE_V4) {
                    breaches.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        });
        let _stop = Stop(&stop);
        // The API server dies: the agent says so, and enforces.
        drop(server);
        assert!(
            wait_until(Duration::from_secs(10), || metric(
                &f,
                "airlock_kubernetes_api_reachable"
            ) == 0.0),
            "log:\n{}",
            agent.log()
        );
        assert_eq!(metric(&f, "airlock_kubernetes_policy_from_cache"), 1.0);
        assert_eq!(metric(&f, "airlock_kubernetes_in_sync"), 0.0);
        // The agent dies too, and comes back with the API server still down: it
        // enforces from its cache.
        agent.child.kill().expect("kill agent");
        let _ = agent.child.wait();
        agent = spawn_agent(&f);
        wait_ready(&f, &agent, Duration::from_secs(15));
        assert!(
            wait_until(Duration::from_secs(5), || metric(
                &f,
                "airlock_policy_reloads_total"
            ) >= 1.0),
            "the restarted agent applied nothing; log:\n{}",
            agent.log()
        );
        assert_eq!(metric(&f, "airlock_kubernetes_api_reachable"), 0.0);
        assert_eq!(metric(&f, "airlock_kubernetes_policy_from_cache"), 1.0);
        std::thread::sleep(Duration::from_secs(2));
        // The API server is back: the agent hears it (its probe), confirms the
        // cache, and says so.
        let _server = api.serve_in(&f.bed.server);
        wait_status(&api, &agent, "r1", "enforce", "ApiServer");
        assert!(
            wait_until(Duration::from_secs(10), || metric(
                &f,
                "airlock_kubernetes_api_reachable"
            ) == 1.0),
            "log:\n{}",
            agent.log()
        );
        assert!(
            wait_until(Duration::from_secs(10), || metric(
                &f,
                "airlock_kubernetes_policy_from_cache"
            ) == 0.0),
            "log:\n{}",
            agent.log()
        );
        stop.store(true, Ordering::Relaxed);
    });
    let probes = probes.load(Ordering::Relaxed);
    assert!(probes > 10, "only {probes} probes");
    assert_eq!(
        breaches.load(Ordering::Relaxed),
        0,
        "enforcement lapsed in {probes} probes; log:\n{}",
        agent.log()
    );
}

/// `n` distinct /32s that no two merge (every other address from 10.0.0.0).
fn prefixes(n: u32) -> String {
    let mut text = String::with_capacity(n as usize * 14);
    for i in 0..n {
        text.push_str(&std::net::Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string());
        text.push_str("/32\n");
    }
    text
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_million_prefixes_in_shards_apply_and_enforce() {
    const N: u32 = 1_000_000;
    let f = Fixture::new("flm");
    let api = FakeApi::new();
    seed(&f, &api);
    point(&api, "r2", None);
    let _server = api.serve_in(&f.bed.server);
    let agent = spawn_agent(&f);
    wait_ready(&f, &agent, Duration::from_secs(15));
    wait_status(&api, &agent, "r2", "enforce", "ApiServer");
    let baseline = memory_kib(agent.child.id(), "VmRSS:");

    // A million /32s, the office's /24 last (in the last shard): the office gets
    // in only if every shard was applied, the strangers no longer do.
    let mut list = prefixes(N);
    list.push_str("198.51.100.0/24\n");
    let bytes = list.len();
    let count = publish(
        &api,
        "big",
        &policy_text(&f, &["big"], "", "big"),
        "big",
        &list,
    );
    eprintln!("FIGURE {N} prefixes: {bytes} bytes of text in {count} shards");
    assert!(count >= 2);
    let took = time_to_verdict(&f, true, || point(&api, "big", None));
    eprintln!("FIGURE revision change to enforcement, {N} prefixes: {took:?}");
    assert!(
        f.gets_in(addr::OFFICE_V4),
        "the last shard's prefix is not in force"
    );
    assert!(f.kept_out(addr::STRANGER_V4));
    assert_eq!(
        metric(&f, "airlock_prefixes_loaded{family=\"ipv4\"}"),
        f64::from(N + 1)
    );
    wait_status(&api, &agent, "big", "enforce", "ApiServer");
    // The counts follow within the status writer's tick.
    assert!(
        wait_until(Duration::from_secs(5), || api
            .get(STATUSES, NODE)
            .is_some_and(|s| s["spec"]["ipv4Prefixes"] == u64::from(N + 1))),
        "status {:?}",
        api.get(STATUSES, NODE)
    );
    let spec = api.get(STATUSES, NODE).expect("status")["spec"].clone();
    let revision = api.get(REVISIONS, "big").expect("revision");
    let spec_typed: airlock_crds::AirlockPolicyRevisionSpec =
        serde_json::from_value(revision["spec"].clone()).expect("spec");
    assert_eq!(spec["digest"], digest::of_revision(&spec_typed));
    let pid = agent.child.id();
    eprintln!(
        "FIGURE agent memory: {} KiB resident before, {} KiB after, {} KiB peak",
        baseline,
        memory_kib(pid, "VmRSS:"),
        memory_kib(pid, "VmHWM:")
    );
}
