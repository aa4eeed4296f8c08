//! The fleet source: watches (kube-rs watcher + reflector) of the policies, their
//! revisions and shards and this node's own Node object; puts the resolved revision
//! into the local cache, which the agent enforces like a ConfigMap; writes the
//! node's AirlockNodeStatus with server-side apply.
//!
//! Nothing is resolved until every watch has listed everything once (a half-listed
//! set of policies could pick the wrong one). A failed watch retries with backoff
//! and its store keeps its last full listing; the cache, and so the policy in
//! force, changes only on a complete, digest-checked revision. While the API server
//! is unreachable the agent goes on enforcing the cache and reports
//! InSync=False/ApiServerUnreachable, source LocalCache, once it can write again.

use std::{
    collections::BTreeMap, fmt::Debug, hash::Hash, path::PathBuf, sync::Arc, time::Duration,
};

use airlock_crds::{
    AirlockNodeStatus, AirlockNodeStatusSpec, AirlockPolicy, AirlockPolicyRevision,
    AirlockSourceShard, AirlockSourceShardSpec,
    resolve::{self, Resolution},
    shards,
};
use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{
    cache::Cache,
    status::{self, Observed},
};
use crate::agent::AgentState;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// The local cache, on the host (survives the pod).
    pub cache_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("Kubernetes client configuration: {0}")]
    Client(#[source] kube::Error),
}

/// One watch's latest news: a good event, or an error (it retries by itself).
enum WatchNews {
    Ok,
    Err(String),
}

fn spawn_watch<K>(api: Api<K>, config: watcher::Config, news: mpsc::Sender<WatchNews>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(_) => WatchNews::Ok,
                Err(error) => WatchNews::Err(error.to_string()),
            };
            if news.send(item).await.is_err() {
                break;
            }
        }
    });
    store
}

struct Stores {
    policies: Store<AirlockPolicy>,
    revisions: Store<AirlockPolicyRevision>,
    shards: Store<AirlockSourceShard>,
    node: Store<Node>,
}

impl Stores {
    /// Every watch has completed its first listing.
    fn listed(&self) -> bool {
        self.policies.wait_until_ready().now_or_never().is_some()
            && self.revisions.wait_until_ready().now_or_never().is_some()
            && self.shards.wait_until_ready().now_or_never().is_some()
            && self.node.wait_until_ready().now_or_never().is_some()
    }
}

/// Resolves from the stores and, when a complete revision applies, puts it in the cache.
fn resolve_and_cache(
    config: &FleetConfig,
    stores: &Stores,
    cache: &Cache,
    observed: &mut Observed,
) {
    observed.problem = None;
    observed.digest = None;
    let Some(node) = stores.node.get(&ObjectRef::new(&config.node)) else {
        observed.resolution = None;
        observed.problem = Some((
            "NodeNotFound",
            format!("no Node {} visible to the agent", config.node),
        ));
        return;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let policies: Vec<AirlockPolicy> = stores
        .policies
        .state()
        .iter()
        .map(|p| (**p).clone())
        .collect();
    let resolution = resolve::resolve(&policies, &config.node, &labels);
    observed.resolution = Some(resolution.clone());
    let Resolution::Apply(selected) = resolution else {
        tracing::warn!(reason = resolution.reason(), message = %resolution.message(), "keeping the policy in force");
        return;
    };
    let Some(revision) = stores.revisions.get(&ObjectRef::new(&selected.revision)) else {
        observed.problem = Some((
            "RevisionMissing",
            format!("AirlockPolicyRevision {} does not exist", selected.revision),
        ));
        return;
    };
    let wanted: std::collections::BTreeSet<&str> = revision
        .spec
        .source_sets
        .iter()
        .flat_map(|s| s.shards.iter().map(|r| r.name.as_str()))
        .collect();
    let shard_specs: BTreeMap<String, AirlockSourceShardSpec> = wanted
        .iter()
        .filter_map(|name| {
            let shard = stores.shards.get(&ObjectRef::new(name))?;
            Some((name.to_string(), shard.spec.clone()))
        })
        .collect();
    match shards::assemble(&revision.spec, &shard_specs) {
        Err(errors) => {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(revision = %selected.revision, %message, "revision incomplete; keeping the policy in force");
            observed.problem = Some(("IncompleteRevision", message));
        }
        Ok(assembled) => match cache.store(&assembled, &selected) {
            Ok(changed) => {
                if changed {
                    tracing::info!(
                        policy = %selected.policy,
                        revision = %selected.revision,
                        digest = %assembled.digest,
                        canary = selected.canary,
                        monitor = selected.monitor,
                        "new revision in the cache"
                    );
                }
                observed.from_api = true;
                observed.digest = Some(assembled.digest.clone());
                observed.cache = cache.load().ok().flatten();
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the policy cache");
                observed.problem = Some(("CacheWriteFailed", error.to_string()));
            }
        },
    }
}

/// How long a request may wait for the API server's answer to begin (a watch's
/// answer begins at once; its events come later). kube's own default is no limit,
/// and a server that accepts connections but never answers would then leave the
/// agent reporting InSync long after it last heard anything.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often, while a watch fails, the agent asks the API server whether it answers
/// again: a watch that resumes with nothing new to tell emits no event.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The client from the kubeconfig or the pod's service account, with
/// [`REQUEST_TIMEOUT`].
pub async fn client() -> Result<Client, FleetError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| FleetError::Client(kube::Error::InferConfig(e)))?;
    let builder = kube::client::ClientBuilder::try_from(config).map_err(FleetError::Client)?;
    Ok(builder
        .with_layer(&tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT))
        .build())
}

/// Runs the source for as long as the agent runs.
pub async fn run(config: FleetConfig, state: Arc<AgentState>) -> Result<(), FleetError> {
    run_with(config, state, client().await?, PROBE_INTERVAL).await
}

/// Runs the source with `client` (tests give it one over a fake API server),
/// probing a failed API server every `probe_interval`.
pub async fn run_with(
    config: FleetConfig,
    state: Arc<AgentState>,
    client: Client,
    probe_interval: Duration,
) -> Result<(), FleetError> {
    let (news_tx, mut news) = mpsc::channel(64);
    let stores = Stores {
        policies: spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            news_tx.clone(),
        ),
        revisions: spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            news_tx.clone(),
        ),
        shards: spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            news_tx.clone(),
        ),
        // Only its own Node: the labels the selectors are matched against.
        node: spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", config.node)),
            news_tx,
        ),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let cache = Cache::new(&config.cache_dir);
    let mut observed = Observed {
        cache: match cache.load() {
            Ok(meta) => meta,
            Err(error) => {
                tracing::error!(%error, "the local policy cache is unusable; waiting for the API server");
                None
            }
        },
        ..Observed::default()
    };
    let status_api: Api<AirlockNodeStatus> = Api::all(client);
    let params = apply_params(&config.node);
    let mut sent: Option<AirlockNodeStatusSpec> = None;
    let mut conditions: Vec<Condition> = Vec::new();
    let mut dirty = true;
    let mut last_probe = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut failed = None;
        tokio::select! {
            item = news.recv() => match item {
                Some(WatchNews::Ok) => { observed.api_ok = true; dirty = true; }
                Some(WatchNews::Err(error)) => failed = Some(error),
                None => return Ok(()),
            },
            _ = tick.tick() => {}
        }
        // Events come in bursts (a list is one per object): settle first.
        while let Ok(item) = news.try_recv() {
            match item {
                WatchNews::Ok => {
                    observed.api_ok = true;
                    dirty = true;
                }
                WatchNews::Err(error) => failed = Some(error),
            }
        }
        if let Some(error) = failed {
            if observed.api_ok || !observed.listed {
                tracing::warn!(%error, "Kubernetes API watch failed; enforcing the cached policy");
            }
            observed.api_ok = false;
            observed.from_api = false;
            last_probe = tokio::time::Instant::now();
        }
        if observed.listed && !observed.api_ok && last_probe.elapsed() >= probe_interval {
            last_probe = tokio::time::Instant::now();
            if nodes.get(&config.node).await.is_ok() {
                tracing::info!("the Kubernetes API server answers again");
                observed.api_ok = true;
                dirty = true;
            }
        }
        if !observed.listed && stores.listed() {
            observed.listed = true;
            tracing::info!("every watch has listed once; resolving");
        }
        if observed.listed && observed.api_ok && dirty {
            dirty = false;
            resolve_and_cache(&config, &stores, &cache, &mut observed);
        }
        {
            let inner = state.lock();
            observed.ready = inner.ready;
            observed.settling = inner.fleet_settling;
            observed.applied = inner.fleet_applied.clone();
            observed.rejected = inner.fleet_rejected.clone();
            observed.prefixes_v4 = inner.prefixes_v4 as u64;
            observed.prefixes_v6 = inner.prefixes_v6 as u64;
            observed.mode = inner.mode.clone();
        }
        let now = Time(jiff_now());
        let spec = status::spec(&observed, &conditions, &now);
        state.lock().fleet = Some(crate::agent::FleetHealth {
            api_reachable: observed.api_ok,
            from_cache: observed.cache.is_some() && !observed.from_api,
            in_sync: spec
                .conditions
                .iter()
                .any(|c| c.type_ == airlock_crds::CONDITION_IN_SYNC && c.status == "True"),
        });
        if sent.as_ref() == Some(&spec) {
            continue;
        }
        match write_status(&status_api, &params, &config.node, spec.clone()).await {
            Ok(_) => {
                conditions = spec.conditions.clone();
                sent = Some(spec);
            }
            Err(error) => tracing::debug!(%error, "cannot write the node status yet"),
        }
    }
}

/// One server-side apply of the node's status object.
pub async fn write_status(
    api: &Api<AirlockNodeStatus>,
    params: &PatchParams,
    node: &str,
    spec: AirlockNodeStatusSpec,
) -> Result<AirlockNodeStatus, kube::Error> {
    let body = status::object(node, spec);
    api.patch(node, params, &Patch::Apply(&body)).await
}

/// The apply parameters: this node's field manager, forcing ownership of the fields
/// (the agent is their only writer; the admission policy sees to that).
pub fn apply_params(node: &str) -> PatchParams {
    PatchParams::apply(&status::field_manager(node)).force()
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    use super::*;

    /// The exact request of a status write, against kube-rs's mock service: a
    /// server-side apply (PATCH, apply-patch content type) of the object named
    /// after the node, with the node's field manager, forced.
    #[tokio::test]
    async fn status_write_is_a_server_side_apply_of_the_own_object() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<AirlockNodeStatus> = Api::all(Client::new(service, "default"));
        let spec = AirlockNodeStatusSpec {
            revision: Some("db-7".into()),
            ..AirlockNodeStatusSpec::default()
        };
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("one request");
            assert_eq!(request.method(), http::Method::PATCH);
            let uri = request.uri().to_string();
            assert!(
                uri.starts_with("/apis/airlock.dev/v1alpha1/airlocknodestatuses/node-a?"),
                "{uri}"
            );
            assert!(uri.contains("fieldManager=airlock-agent%2Fnode-a"), "{uri}");
            assert!(uri.contains("force=true"), "{uri}");
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({
                    "apiVersion": "airlock.dev/v1alpha1",
                    "kind": "AirlockNodeStatus",
                    "metadata": {"name": "node-a"},
                    "spec": {"revision": "db-7", "canary": false, "ipv4Prefixes": 0,
                             "ipv6Prefixes": 0, "source": "None", "conditions": []}
                })
            );
            let reply = serde_json::to_vec(&body).unwrap();
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(reply))
                    .unwrap(),
            );
        });
        let written = write_status(&api, &apply_params("node-a"), "node-a", spec)
            .await
            .unwrap();
        assert_eq!(written.spec.revision.as_deref(), Some("db-7"));
        server.await.unwrap();
    }

    /// A 5xx from the API server is an error the caller logs and retries (the
    /// status is then not remembered as sent).
    #[tokio::test]
    async fn status_write_reports_server_errors() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<AirlockNodeStatus> = Api::all(Client::new(service, "default"));
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("one request");
            let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "message": "etcdserver: request timed out",
                "reason": "InternalError", "code": 500});
            send.send_response(
                Response::builder()
                    .status(500)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        });
        let error = write_status(&api, &apply_params("node-a"), "node-a", Default::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("request timed out"), "{error}");
        server.await.unwrap();
    }
}

#[cfg(test)]
mod store_tests {
    use airlock_crds::{AirlockPolicyRevisionSpec, AirlockPolicySpec, ShardRef, SourceSet, digest};
    use kube::runtime::reflector::store::Writer;

    use super::*;

    fn list<K>(writer: &mut Writer<K>, objects: Vec<K>)
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    fn node(name: &str, role: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels = Some([("role".to_string(), role.to_string())].into());
        node
    }

    fn revision(name: &str, shard_text: &str) -> AirlockPolicyRevision {
        AirlockPolicyRevision::new(
            name,
            AirlockPolicyRevisionSpec {
                policy: "version: 1\nsets:\n  block:\n    file: sets/block.txt\n".into(),
                source_sets: vec![SourceSet {
                    name: "block".into(),
                    shards: vec![ShardRef {
                        name: "block-0".into(),
                        digest: digest::of(shard_text.as_bytes()),
                    }],
                }],
            },
        )
    }

    fn shard(text: &str) -> AirlockSourceShard {
        AirlockSourceShard::new(
            "block-0",
            AirlockSourceShardSpec {
                set: "block".into(),
                prefixes: text.into(),
            },
        )
    }

    /// Nothing resolves before every watch listed once; a complete revision lands
    /// in the cache; an incomplete one leaves the cache as it was; a relist in
    /// progress does not change what the stores show.
    #[test]
    fn stores_gate_and_feed_the_cache() {
        let (policies, mut policies_w) = reflector::store::<AirlockPolicy>();
        let (revisions, mut revisions_w) = reflector::store::<AirlockPolicyRevision>();
        let (shards, mut shards_w) = reflector::store::<AirlockSourceShard>();
        let (nodes, mut nodes_w) = reflector::store::<Node>();
        let stores = Stores {
            policies,
            revisions,
            shards,
            node: nodes,
        };
        assert!(!stores.listed());
        let policy = AirlockPolicy::new(
            "db",
            AirlockPolicySpec {
                node_selector: Default::default(),
                priority: 0,
                revision: "db-1".into(),
                canary: None,
            },
        );
        list(&mut policies_w, vec![policy]);
        list(&mut revisions_w, vec![revision("db-1", "192.0.2.0/24\n")]);
        list(&mut nodes_w, vec![node("node-a", "db")]);
        assert!(!stores.listed(), "the shard watch has not listed yet");
        list(&mut shards_w, vec![shard("192.0.2.0/24\n")]);
        assert!(stores.listed());

        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let config = FleetConfig {
            node: "node-a".into(),
            cache_dir: dir.path().into(),
        };
        let mut observed = Observed::default();
        resolve_and_cache(&config, &stores, &cache, &mut observed);
        assert_eq!(observed.problem, None);
        assert!(observed.from_api);
        let meta = observed.cache.clone().unwrap();
        assert_eq!(meta.revision, "db-1");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sets/block.txt")).unwrap(),
            "192.0.2.0/24\n"
        );

        // A relist that has begun but not finished changes nothing yet.
        revisions_w.apply_watcher_event(&watcher::Event::Init);
        assert_eq!(stores.revisions.state().len(), 1);

        // The shard's content changed under the same name: the digest no longer
        // matches, nothing new applies, the cache keeps db-1.
        list(&mut shards_w, vec![shard("0.0.0.0/0\n")]);
        resolve_and_cache(&config, &stores, &cache, &mut observed);
        assert_eq!(
            observed.problem.as_ref().map(|p| p.0),
            Some("IncompleteRevision")
        );
        assert_eq!(cache.load().unwrap().unwrap().digest, meta.digest);

        // Another node, no Node object visible: reported, nothing applied.
        let other = FleetConfig {
            node: "node-b".into(),
            cache_dir: dir.path().into(),
        };
        resolve_and_cache(&other, &stores, &cache, &mut observed);
        assert_eq!(observed.problem.as_ref().map(|p| p.0), Some("NodeNotFound"));
    }
}
