//! The fleet source's behaviour on the Kubernetes API (issue 23), against the fake
//! API server of `airlock_integration::fake_api` used in-process as the kube
//! client's service (kube-rs's mock-service pattern): the real watchers, reflectors,
//! cache and status writer of `airlock::fleet::source`, the same request timeout
//! as the agent's (shortened), the exchanges scripted by the test. No root needed.
//!
//! - paginated lists are followed to the end;
//! - nothing is applied before every watch has listed once;
//! - `410 Gone` makes the watcher list again, and nothing changes until it has;
//! - 5xx answers and timeouts leave the last good revision in force and say so
//!   (InSync False, source LocalCache), and the agent catches up afterwards;
//! - the status is one exact server-side apply of the node's own object.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use airlock::{
    agent::{AgentState, FleetRejection, RejectionKind},
    fleet::{
        cache::Cache,
        source::{FleetConfig, run_with},
    },
};
use airlock_crds::{AirlockPolicyRevisionSpec, digest};
use airlock_integration::fake_api::{FakeApi, NODES, POLICIES, REVISIONS, SHARDS, STATUSES};
use serde_json::{Value, json};

const NODE: &str = "node-a";
/// Short, so a test sees a hung server as one within a second.
const TIMEOUT: Duration = Duration::from_millis(500);
const PROBE: Duration = Duration::from_millis(300);

fn node() -> Value {
    json!({"metadata": {"name": NODE, "labels": {"role": "db"}}})
}

fn policy(name: &str, role: &str, revision: &str) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"nodeSelector": {"matchLabels": {"role": role}}, "revision": revision}})
}

fn policy_text(block: &str) -> String {
    format!(
        "version: 1\ninterfaces: [eth0]\nsets:\n  block:\n    file: sets/block.txt\n  office: [{block}]\n\
         rules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n"
    )
}

/// A revision whose set `block` is the shards `shards` (name, text), and its spec.
fn revision(
    name: &str,
    office: &str,
    shards: &[(&str, &str)],
) -> (Value, AirlockPolicyRevisionSpec) {
    let value = json!({"metadata": {"name": name}, "spec": {
        "policy": policy_text(office),
        "sourceSets": [{"name": "block", "shards": shards.iter().map(|(n, text)| json!({
            "name": n, "digest": digest::of(text.as_bytes())})).collect::<Vec<_>>()}]}});
    let spec = serde_json::from_value(value["spec"].clone()).expect("a revision spec");
    (value, spec)
}

fn shard(name: &str, text: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"set": "block", "prefixes": text}})
}

/// The API's objects for node-a on policy `db` at revision `db-1`.
fn seed(api: &FakeApi) -> AirlockPolicyRevisionSpec {
    api.put(NODES, node());
    api.put(SHARDS, shard("block-0", "192.0.2.0/25\n"));
    api.put(SHARDS, shard("block-1", "192.0.2.128/25\n"));
    let (value, spec) = revision(
        "db-1",
        "198.51.100.0/24",
        &[
            ("block-0", "192.0.2.0/25\n"),
            ("block-1", "192.0.2.128/25\n"),
        ],
    );
    api.put(REVISIONS, value);
    api.put(POLICIES, policy("db", "db", "db-1"));
    spec
}

struct Agent {
    api: FakeApi,
    state: Arc<AgentState>,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    /// The stand-in for the enforcing side (which needs root and a kernel: the
    /// real one is in fleet_e2e.rs) puts what the cache holds in force, as the
    /// agent's reconciler records it after a swap, while this is set.
    enforcing: Arc<AtomicBool>,
    enforcer: tokio::task::JoinHandle<()>,
}

impl Agent {
    fn start(api: &FakeApi) -> Self {
        let client = kube::client::ClientBuilder::new(api.router(), "default")
            .with_layer(&tower::timeout::TimeoutLayer::new(TIMEOUT))
            .build();
        let dir = tempfile::tempdir().expect("temp dir");
        let state = Arc::new(AgentState::default());
        {
            // What the enforcing side reports once it applied the cache (the
            // kernel tests, fleet_e2e.rs, run the real one).
            let mut inner = state.lock();
            inner.ready = true;
            inner.in_sync = true;
            inner.mode = "enforce".into();
            inner.prefixes_v4 = 2;
        }
        let config = FleetConfig {
            node: NODE.into(),
            cache_dir: dir.path().into(),
        };
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                run_with(config, state, client, PROBE)
                    .await
                    .expect("the fleet source runs");
            }
        });
        let enforcing = Arc::new(AtomicBool::new(true));
        let enforcer = tokio::spawn({
            let (state, enforcing) = (Arc::clone(&state), Arc::clone(&enforcing));
            let cache = Cache::new(dir.path());
            async move {
                loop {
                    if enforcing.load(Ordering::Relaxed)
                        && let Ok(Some(meta)) = cache.load()
                    {
                        let mut inner = state.lock();
                        inner.fleet_applied = Some(meta);
                        inner.fleet_rejected = None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self {
            api: api.clone(),
            state,
            dir,
            task,
            enforcing,
            enforcer,
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(self.dir.path())
    }

    /// The revision in the cache, if any.
    fn cached(&self) -> Option<String> {
        self.cache()
            .load()
            .expect("a sound cache")
            .map(|m| m.revision)
    }

    fn set_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sets/block.txt")).unwrap_or_default()
    }

    /// The last status the server received: its InSync condition's status and
    /// reason, and its source.
    fn last_status(&self) -> Option<(String, String, String)> {
        let status = self.api.get(STATUSES, NODE)?;
        let spec = &status["spec"];
        let in_sync = spec["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "InSync")?;
        Some((
            in_sync["status"].as_str()?.into(),
            in_sync["reason"].as_str()?.into(),
            spec["source"].as_str()?.into(),
        ))
    }

    fn fleet_health(&self) -> (bool, bool, bool) {
        let health = self.state.lock().fleet.expect("the source reports");
        (health.api_reachable, health.from_cache, health.in_sync)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
        self.enforcer.abort();
    }
}

/// Waits (in the test's runtime, so the agent's tasks run) until `f` holds.
async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn synced(agent: &Agent) -> bool {
    agent.last_status() == Some(("True".into(), "Synced".into(), "ApiServer".into()))
}

/// The status says the API server is unreachable and the cache is enforced.
fn unreachable(agent: &Agent) -> bool {
    agent.last_status()
        == Some((
            "False".into(),
            "ApiServerUnreachable".into(),
            "LocalCache".into(),
        ))
}

fn lists_of(api: &FakeApi, plural: &str) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| {
            r.starts_with("GET ") && r.contains(&format!("/{plural}?")) && !r.contains("watch=true")
        })
        .collect()
}

#[tokio::test]
async fn nothing_applies_before_every_watch_listed_and_pages_are_followed() {
    let api = FakeApi::new();
    seed(&api);
    // More policies than one page holds (the watcher asks 500 at a time), none for
    // this node; `db` sorts after them, so only a followed page finds it.
    api.delete(POLICIES, "db");
    for n in 0..1100 {
        api.put(POLICIES, policy(&format!("a-web-{n:04}"), "web", "web-1"));
    }
    api.put(POLICIES, policy("db", "db", "db-1"));
    api.hold_lists(SHARDS, true);
    let agent = Agent::start(&api);
    until("the other kinds listed", Duration::from_secs(10), || {
        [POLICIES, REVISIONS, NODES]
            .iter()
            .all(|p| !lists_of(&api, p).is_empty())
    })
    .await;
    // Every page, by continue token, and only then the watch.
    until("every page of policies", Duration::from_secs(10), || {
        lists_of(&api, POLICIES).len() == 3
    })
    .await;
    let pages = lists_of(&api, POLICIES);
    assert!(
        pages[0].contains("limit=500") && !pages[0].contains("continue"),
        "{pages:?}"
    );
    assert!(pages[1].contains("continue=500"), "{pages:?}");
    assert!(pages[2].contains("continue=1000"), "{pages:?}");
    // The shards' list is held: whatever else is known, nothing is applied, and
    // the status says why.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(agent.cached(), None, "applied before every watch listed");
    assert_eq!(
        agent.last_status(),
        Some((
            "False".into(),
            "WaitingForInitialList".into(),
            "None".into()
        ))
    );
    api.hold_lists(SHARDS, false);
    until("db-1 in the cache", Duration::from_secs(5), || {
        agent.cached().as_deref() == Some("db-1")
    })
    .await;
    assert_eq!(agent.set_text(), "192.0.2.0/25\n192.0.2.128/25\n");
    until("InSync True", Duration::from_secs(5), || synced(&agent)).await;
}

#[tokio::test]
async fn gone_relists_and_nothing_changes_until_the_relist_is_complete() {
    let api = FakeApi::new();
    seed(&api);
    let agent = Agent::start(&api);
    until("db-1 in the cache", Duration::from_secs(10), || {
        agent.cached().as_deref() == Some("db-1")
    })
    .await;
    let lists_before = lists_of(&api, POLICIES).len();
    // The history is compacted: every watch gets 410 Gone and must list again.
    // The policies' new list is held, and meanwhile the policy moves to db-2;
    // no watch is open to tell the agent.
    api.hold_lists(POLICIES, true);
    api.expire();
    let (value, _) = revision("db-2", "198.51.100.0/25", &[("block-0", "192.0.2.0/25\n")]);
    api.put(REVISIONS, value);
    api.put(POLICIES, policy("db", "db", "db-2"));
    until("the policies listed again", Duration::from_secs(10), || {
        api.requests()
            .iter()
            .filter(|r| r.contains(&format!("/{POLICIES}?")) && !r.contains("watch=true"))
            .count()
            > lists_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        agent.cached().as_deref(),
        Some("db-1"),
        "changed during an incomplete relist"
    );
    api.hold_lists(POLICIES, false);
    until("db-2 in the cache", Duration::from_secs(10), || {
        agent.cached().as_deref() == Some("db-2")
    })
    .await;
    assert_eq!(agent.set_text(), "192.0.2.0/25\n");
    // Every kind listed again after the 410, not only the held one.
    for plural in [REVISIONS, SHARDS, NODES] {
        assert!(
            lists_of(&api, plural).len() >= 2,
            "{plural}: {:?}",
            api.requests()
        );
    }
}

#[tokio::test]
async fn errors_and_timeouts_keep_the_last_good_revision_and_say_so() {
    let api = FakeApi::new();
    seed(&api);
    let agent = Agent::start(&api);
    until("InSync True", Duration::from_secs(10), || synced(&agent)).await;

    // The API server answers every read 500 (its writes still work: the status
    // can say what happens). A change made meanwhile reaches no watch.
    api.fail(Some(500), true);
    let (value, _) = revision("db-2", "198.51.100.0/25", &[("block-0", "192.0.2.0/25\n")]);
    api.put(REVISIONS, value);
    api.put(POLICIES, policy("db", "db", "db-2"));
    until(
        "ApiServerUnreachable reported",
        Duration::from_secs(10),
        || unreachable(&agent),
    )
    .await;
    assert_eq!(agent.fleet_health(), (false, true, false));
    assert_eq!(
        agent.cached().as_deref(),
        Some("db-1"),
        "the last good stays"
    );

    // Served again: the watches resume, the change made meanwhile applies.
    api.fail(None, false);
    until("db-2 in the cache", Duration::from_secs(10), || {
        agent.cached().as_deref() == Some("db-2")
    })
    .await;
    until("InSync True again", Duration::from_secs(10), || {
        synced(&agent)
    })
    .await;
    assert_eq!(agent.fleet_health(), (true, false, true));

    // No answer at all, to anything: the requests time out (the client's limit),
    // and the status cannot be written either; the metrics' view says it.
    api.hang(true, false);
    until(
        "the API server seen unreachable",
        Duration::from_secs(10),
        || agent.fleet_health() == (false, true, false),
    )
    .await;
    assert_eq!(agent.cached().as_deref(), Some("db-2"));
    // Reads hang, writes work: the status says so.
    api.hang(true, true);
    until(
        "ApiServerUnreachable reported",
        Duration::from_secs(10),
        || unreachable(&agent),
    )
    .await;
    // Answers again, with nothing new: the probe notices, InSync comes back.
    api.hang(false, false);
    until("InSync True again", Duration::from_secs(10), || {
        synced(&agent)
    })
    .await;
    assert_eq!(agent.cached().as_deref(), Some("db-2"));
}

#[tokio::test]
async fn the_status_is_an_exact_server_side_apply_of_the_own_object() {
    let api = FakeApi::new();
    let spec = seed(&api);
    let agent = Agent::start(&api);
    until("InSync True", Duration::from_secs(10), || synced(&agent)).await;
    let applies = api.applies();
    let last = applies.last().expect("a status write");
    assert!(
        last.uri.starts_with(&format!(
            "/apis/airlock.dev/v1alpha1/airlocknodestatuses/{NODE}?"
        )),
        "{}",
        last.uri
    );
    assert!(
        last.uri.contains("fieldManager=airlock-agent%2Fnode-a"),
        "{}",
        last.uri
    );
    assert!(last.uri.contains("force=true"), "{}", last.uri);
    assert_eq!(last.content_type, "application/apply-patch+yaml");
    // Every write is of this node's object, and only of it.
    assert!(
        applies
            .iter()
            .all(|a| a.uri.contains(&format!("/airlocknodestatuses/{NODE}?")))
    );
    let mut body = last.body.clone();
    for condition in body["spec"]["conditions"]
        .as_array_mut()
        .expect("conditions")
    {
        let time = condition["lastTransitionTime"].take();
        assert!(time.as_str().is_some_and(|t| t.ends_with('Z')), "{time}");
    }
    assert_eq!(
        body,
        json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "AirlockNodeStatus",
            "metadata": {"name": NODE},
            "spec": {
                "policy": "db",
                "revision": "db-1",
                "digest": digest::of_revision(&spec),
                "mode": "enforce",
                "canary": false,
                "ipv4Prefixes": 2,
                "ipv6Prefixes": 0,
                "source": "ApiServer",
                "conditions": [
                    {"type": "Enforcing", "status": "True", "reason": "PolicyEnforced",
                     "message": "enforce on every selected interface", "lastTransitionTime": null},
                    {"type": "InSync", "status": "True", "reason": "Synced",
                     "message": "policy db revision db-1", "lastTransitionTime": null}
                ]
            }
        })
    );
    // Written again only when something changed: a quiet second adds nothing.
    let count = api.applies().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api.applies().len(), count);
}

/// The status names the revision the enforcing side put in force, never the one
/// the cache already holds: while the enforcing side has not applied the new
/// revision, every status write names the old one with InSync False; when it
/// refuses it, InSync False says why; when it applies it, Synced.
#[tokio::test]
async fn the_status_names_what_is_in_force_not_what_is_cached() {
    let api = FakeApi::new();
    seed(&api);
    let agent = Agent::start(&api);
    until("InSync True", Duration::from_secs(10), || synced(&agent)).await;
    // A reload that takes its time: the enforcing side has not applied db-2 yet.
    agent.enforcing.store(false, Ordering::Relaxed);
    let before = api.applies().len();
    let (value, _) = revision("db-2", "198.51.100.0/25", &[("block-0", "192.0.2.0/25\n")]);
    api.put(REVISIONS, value);
    api.put(POLICIES, policy("db", "db", "db-2"));
    until("db-2 in the cache", Duration::from_secs(10), || {
        agent.cached().as_deref() == Some("db-2")
    })
    .await;
    until("InSync False, Applying", Duration::from_secs(5), || {
        agent.last_status() == Some(("False".into(), "Applying".into(), "ApiServer".into()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let named = |from: usize| -> Vec<(String, String)> {
        api.applies()
            .iter()
            .skip(from)
            .map(|a| {
                let spec = &a.body["spec"];
                let in_sync = spec["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "InSync"))
                    .map_or(String::new(), |c| c["status"].as_str().unwrap_or("").into());
                (spec["revision"].as_str().unwrap_or("").into(), in_sync)
            })
            .collect()
    };
    let written = named(before);
    assert!(!written.is_empty());
    assert!(
        written
            .iter()
            .all(|w| *w == ("db-1".into(), "False".into())),
        "{written:?}"
    );
    // The enforcing side refuses db-2: the status says so, db-1 stays named.
    let cached = agent.cache().load().unwrap().unwrap();
    agent.state.lock().fleet_rejected = Some(FleetRejection {
        revision: cached,
        kind: RejectionKind::Lockout,
        error: "the policy would lock you out: cuts your SSH session".into(),
    });
    until("RevisionRejected", Duration::from_secs(5), || {
        agent.last_status()
            == Some((
                "False".into(),
                "RevisionRejected".into(),
                "ApiServer".into(),
            ))
    })
    .await;
    let status = api.get(STATUSES, NODE).expect("status");
    assert_eq!(status["spec"]["revision"], "db-1");
    let message = status["spec"]["conditions"][1]["message"]
        .as_str()
        .unwrap_or("");
    assert_eq!(
        message,
        "revision db-2 not put in force (lockout): the policy would lock you out: cuts your SSH session; revision db-1 stays in force"
    );
    // Applied at last: named, and in sync.
    agent.enforcing.store(true, Ordering::Relaxed);
    until("InSync True", Duration::from_secs(5), || synced(&agent)).await;
    assert_eq!(
        api.get(STATUSES, NODE).expect("status")["spec"]["revision"],
        "db-2"
    );
}
