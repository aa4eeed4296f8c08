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
                observed.cache = cache.load().ok().flatten();
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the policy cache");
                observed.problem = Some(("CacheWriteFailed", error.to_string()));
            }
        },
    }
}

/// Runs the source for as long as the agent runs.
pub async fn run(config: FleetConfig, state: Arc<AgentState>) -> Result<(), FleetError> {
    let client = Client::try_default().await.map_err(FleetError::Client)?;
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
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            item = news.recv() => match item {
                Some(WatchNews::Ok) => { observed.api_ok = true; dirty = true; }
                Some(WatchNews::Err(error)) => {
                    if observed.api_ok || !observed.listed {
                        tracing::warn!(%error, "Kubernetes API watch failed; enforcing the cached policy");
                    }
                    observed.api_ok = false;
                    observed.from_api = false;
                }
                None => return Ok(()),
            },
            _ = tick.tick() => {}
        }
        // Events come in bursts (a list is one per object): settle first.
        while let Ok(item) = news.try_recv() {
            match item {
                WatchNews::Ok => dirty = true,
                WatchNews::Err(_) => observed.api_ok = false,
            }
        }
        if !observed.listed && stores.listed() {
            observed.listed = true;
            tracing::info!("every watch has listed once; resolving");
        }
        if observed.listed && dirty {
            dirty = false;
            resolve_and_cache(&config, &stores, &cache, &mut observed);
        }
        {
            let inner = state.lock();
            observed.ready = inner.ready;
            observed.in_sync = inner.in_sync;
            observed.rejection = if inner.in_sync {
                None
            } else {
                inner.last_rejection.as_ref().map(|r| r.error.clone())
            };
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
