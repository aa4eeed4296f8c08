//! `/metrics` (Prometheus/OpenMetrics text from prometheus-client), `/healthz` and
//! `/readyz`. Kernel counters are read from the pinned maps at scrape time, so a
//! scrape always shows what the kernel counted, even for packets judged while no
//! agent was running; the flow tables' occupancy, which takes a walk of the table,
//! comes from flow_census.rs. A scrape costs the same however full the tables are,
//! runs off the async runtime, one at a time: health never waits for it.

use std::{net::SocketAddr, sync::Arc};

use airlock_common::{
    Counter as KernelCounter, Reason, SAMPLES_RATE_LIMITED, SAMPLES_RING_FULL, SAMPLES_SENT,
};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::{
    check_census::CheckCensus,
    flow_census::FlowCensus,
    state::{AgentState, RejectionKind},
};
use crate::loader::{PinRoot, PolicyMaps};

type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct AirlockCollector {
    root: PinRoot,
    state: Arc<AgentState>,
    census: Arc<FlowCensus>,
    check: Arc<CheckCensus>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn encode_family<M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<Labels, M>,
) -> Result<(), std::fmt::Error>
where
    M: prometheus_client::encoding::EncodeMetric + prometheus_client::metrics::TypedMetric,
{
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

/// The verdict label: what happened to the packet.
fn verdict(reason: Reason, monitor: bool) -> &'static str {
    match (reason.passes(), monitor) {
        (true, _) => "passed",
        (false, false) => "dropped",
        (false, true) => "would_drop",
    }
}

impl Collector for AirlockCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let rule_packets = Family::<Labels, Counter>::default();
        let rule_bytes = Family::<Labels, Counter>::default();
        let samples = Family::<Labels, Counter>::default();
        let serial = Family::<Labels, Gauge>::default();
        let flows = Family::<Labels, Gauge>::default();
        let state = self.state.lock().clone();
        for iface in self.root.interfaces().unwrap_or_default() {
            let Ok(maps) = PolicyMaps::open_pinned(&self.root.interface_dir(&iface)) else {
                continue;
            };
            let Ok(counters) = maps.counters() else {
                continue;
            };
            for reason in Reason::ALL {
                let all = counters.reason(reason);
                let monitored = counters
                    .reasons_in_monitor
                    .get(reason as usize)
                    .copied()
                    .unwrap_or_default();
                for (monitor, count) in [
                    (
                        false,
                        KernelCounter {
                            packets: all.packets - monitored.packets,
                            bytes: all.bytes - monitored.bytes,
                        },
                    ),
                    (true, monitored),
                ] {
                    if count.packets == 0 && monitor {
                        continue;
                    }
                    let l = labels(&[
                        ("interface", &iface),
                        ("reason", reason.name()),
                        ("verdict", verdict(reason, monitor)),
                    ]);
                    packets.get_or_create(&l).inc_by(count.packets);
                    bytes.get_or_create(&l).inc_by(count.bytes);
                }
            }
            // The rules' names from the copy their counters were read from.
            let summary = maps.generation_summary(counters.generation).ok().flatten();
            let names: Vec<String> = summary
                .as_ref()
                .map(|s| s.rules.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default();
            for (name, (allowed, refused)) in names.iter().zip(&counters.rules) {
                for (is_allowed, count) in [(true, allowed), (false, refused)] {
                    let carried = state
                        .carried
                        .get(&(iface.clone(), name.clone(), is_allowed))
                        .copied()
                        .unwrap_or_default();
                    let l = labels(&[
                        ("interface", &iface),
                        ("rule", name),
                        ("verdict", if is_allowed { "allowed" } else { "refused" }),
                    ]);
                    rule_packets
                        .get_or_create(&l)
                        .inc_by(count.packets + carried.packets);
                    rule_bytes
                        .get_or_create(&l)
                        .inc_by(count.bytes + carried.bytes);
                }
            }
            for (slot, outcome) in [
                (SAMPLES_SENT, "sent"),
                (SAMPLES_RATE_LIMITED, "rate_limited"),
                (SAMPLES_RING_FULL, "ring_full"),
            ] {
                samples
                    .get_or_create(&labels(&[("interface", &iface), ("outcome", outcome)]))
                    .inc_by(counters.samples[slot as usize]);
            }
            // Counted at most once per flow_census::MAX_AGE: a walk of the table
            // costs what it holds.
            if let Some(occupancy) = self.census.get(&iface) {
                for (kind, value) in [
                    ("live", occupancy.live),
                    ("present", occupancy.present),
                    ("capacity", occupancy.capacity),
                ] {
                    flows
                        .get_or_create(&labels(&[("interface", &iface), ("kind", kind)]))
                        .set(i64::from(value));
                }
            }
            if let Some(summary) = summary {
                serial
                    .get_or_create(&labels(&[("interface", &iface)]))
                    .set(i64::try_from(summary.serial).unwrap_or(i64::MAX));
            }
        }
        encode_family(
            &mut encoder,
            "airlock_packets",
            "Packets judged, by interface, verdict reason and outcome.",
            &packets,
        )?;
        encode_family(
            &mut encoder,
            "airlock_bytes",
            "Bytes judged, by interface, verdict reason and outcome.",
            &bytes,
        )?;
        encode_family(
            &mut encoder,
            "airlock_rule_packets",
            "Packets a rule decided, by interface, rule and verdict.",
            &rule_packets,
        )?;
        encode_family(
            &mut encoder,
            "airlock_rule_bytes",
            "Bytes a rule decided, by interface, rule and verdict.",
            &rule_bytes,
        )?;
        encode_family(
            &mut encoder,
            "airlock_drop_samples",
            "Drop samples by outcome (sent to user space, held back by the in-kernel rate limit, lost to a full ring).",
            &samples,
        )?;
        encode_family(
            &mut encoder,
            "airlock_return_flows",
            "Return-traffic flow table: flows opened by the host still in their timeout (live), entries present, and the table's size (capacity); counted at most every 10 s.",
            &flows,
        )?;
        encode_family(
            &mut encoder,
            "airlock_policy_generation",
            "Apply serial of the policy in force on the interface.",
            &serial,
        )?;

        let failures = Family::<Labels, Counter>::default();
        for kind in RejectionKind::all() {
            let count = state.reload_failures.get(&kind).copied().unwrap_or(0);
            failures
                .get_or_create(&labels(&[("kind", kind.name())]))
                .inc_by(count);
        }
        encode_family(
            &mut encoder,
            "airlock_policy_reload_failures",
            "Policy reloads rejected, by kind: unreadable, the first problem of an invalid policy (syntax, structure, value, reference, conflict, import, capacity), lockout, apply (the host or kernel failed it); the previous policy stayed in force.",
            &failures,
        )?;
        let simple: [(&str, &str, u64); 2] = [
            (
                "airlock_policy_reloads",
                "Successful policy reloads.",
                state.reloads,
            ),
            (
                "airlock_attach_repairs",
                "Interfaces re-attached or re-synced after drifting from the policy.",
                state.repairs,
            ),
        ];
        for (name, help, value) in simple {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let last_rejection = state
            .last_rejection
            .as_ref()
            .map_or(0.0, |r| r.at_unix as f64);
        let gauges: [(&str, &str, f64); 5] = [
            (
                "airlock_policy_last_reload_timestamp_seconds",
                "Unix time of the last successful reload.",
                state.last_reload,
            ),
            (
                "airlock_ready",
                "1 when a valid policy is enforced on every selected interface.",
                f64::from(u8::from(state.ready)),
            ),
            (
                "airlock_mode_monitor",
                "1 when the policy in force is in monitor mode.",
                f64::from(u8::from(state.mode == "monitor")),
            ),
            (
                "airlock_policy_in_sync",
                "1 when the policy in force is the policy file as it is now; 0 after the file was rejected, until a version of it is applied.",
                f64::from(u8::from(state.in_sync)),
            ),
            (
                "airlock_policy_last_rejection_timestamp_seconds",
                "Unix time the policy file was last rejected (0: never).",
                last_rejection,
            ),
        ];
        let fleet: Vec<(&str, &str, f64)> = state
            .fleet
            .map(|f| {
                vec![
                    (
                        "airlock_kubernetes_api_reachable",
                        "1 while the Kubernetes API server answers the agent's watches (0 from a failed watch until it answers again).",
                        f64::from(u8::from(f.api_reachable)),
                    ),
                    (
                        "airlock_kubernetes_policy_from_cache",
                        "1 while the policy in force comes from the local cache, not confirmed from the API server.",
                        f64::from(u8::from(f.from_cache)),
                    ),
                    (
                        "airlock_kubernetes_in_sync",
                        "1 when the node enforces what its AirlockPolicy resolves to (the InSync condition).",
                        f64::from(u8::from(f.in_sync)),
                    ),
                ]
            })
            .unwrap_or_default();
        for (name, help, value) in gauges.into_iter().chain(fleet) {
            let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            gauge.set(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let prefixes = Family::<Labels, Gauge>::default();
        for (family, count) in [("ipv4", state.prefixes_v4), ("ipv6", state.prefixes_v6)] {
            prefixes
                .get_or_create(&labels(&[("family", family)]))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        encode_family(
            &mut encoder,
            "airlock_prefixes_loaded",
            "Source prefixes in the compiled policy, by address family.",
            &prefixes,
        )?;
        encode_family(
            &mut encoder,
            "airlock_check_findings",
            "Findings of the security self-check (airlock check, by the model, without probes) in the agent's network namespace, by severity, kind and port (empty when the finding has none); at most 10 s old.",
            &check_findings(&self.check.get(state.policy.as_ref())),
        )?;
        encode_ranges(&mut encoder, &state.ranges)?;
        let info = Info::new(labels(&[("version", env!("CARGO_PKG_VERSION"))]));
        info.encode(encoder.encode_descriptor(
            "airlock_build",
            "Build information.",
            None,
            info.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `airlock check`'s findings in this namespace (check_census.rs), counted by
/// severity, kind and port.
fn check_findings(findings: &[crate::check::Finding]) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for finding in findings {
        let port = finding.port.map(|p| p.to_string()).unwrap_or_default();
        family
            .get_or_create(&labels(&[
                ("severity", finding.severity.name()),
                ("kind", finding.kind.name()),
                ("port", &port),
            ]))
            .inc();
    }
    family
}

/// The scheduled refresh of provider lists (`--refresh-ranges`), per snapshot.
fn encode_ranges(
    encoder: &mut DescriptorEncoder,
    ranges: &std::collections::BTreeMap<std::path::PathBuf, super::state::RangesStatus>,
) -> Result<(), std::fmt::Error> {
    type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;
    let attempt = Family::<Labels, F64Gauge>::default();
    let success = Family::<Labels, F64Gauge>::default();
    let last = Family::<Labels, Gauge>::default();
    let results = Family::<Labels, Counter>::default();
    let shrinks = Family::<Labels, Counter>::default();
    let count = Family::<Labels, Gauge>::default();
    for (path, status) in ranges {
        let path = path.display().to_string();
        let l = labels(&[("snapshot", &path), ("provider", status.provider)]);
        attempt.get_or_create(&l).set(status.last_attempt);
        success.get_or_create(&l).set(status.last_success);
        let mut with_result = l.clone();
        with_result.push(("result".into(), status.last_result.into()));
        last.get_or_create(&with_result).set(1);
        for (result, n) in &status.results {
            let mut with_result = l.clone();
            with_result.push(("result".into(), (*result).into()));
            results.get_or_create(&with_result).inc_by(*n);
        }
        shrinks
            .get_or_create(&l)
            .inc_by(status.results.get("refused_shrink").copied().unwrap_or(0));
        if status.ranges > 0 {
            count
                .get_or_create(&l)
                .set(i64::try_from(status.ranges).unwrap_or(i64::MAX));
        }
    }
    encode_family(
        encoder,
        "airlock_ranges_refresh_last_attempt_timestamp_seconds",
        "Unix time of the last scheduled refresh of a provider snapshot.",
        &attempt,
    )?;
    encode_family(
        encoder,
        "airlock_ranges_refresh_last_success_timestamp_seconds",
        "Unix time a refresh last found the provider list current (updated or unchanged); 0: never.",
        &success,
    )?;
    encode_family(
        encoder,
        "airlock_ranges_refresh_last_result",
        "1 for the result of the last refresh of a provider snapshot (updated, unchanged, refused_shrink, invalid_document, fetch_failed, policy_rejected, snapshot_unreadable, superseded).",
        &last,
    )?;
    encode_family(
        encoder,
        "airlock_ranges_refreshes",
        "Scheduled refreshes of a provider snapshot, by result.",
        &results,
    )?;
    encode_family(
        encoder,
        "airlock_ranges_refresh_refused_shrink",
        "Refreshes refused because the new list lacked more than --ranges-max-removed of the list's or a set's ranges; the snapshot in use stayed in force.",
        &shrinks,
    )?;
    encode_family(
        encoder,
        "airlock_ranges_snapshot_ranges",
        "Distinct ranges of the provider list a refresh last put in force.",
        &count,
    )
}

#[derive(Clone)]
struct Http {
    registry: Arc<Registry>,
    state: Arc<AgentState>,
    /// One scrape reads the maps at a time; the others wait their turn without a
    /// thread each.
    scraping: Arc<tokio::sync::Semaphore>,
}

async fn metrics(State(http): State<Http>) -> impl IntoResponse {
    // Reading the maps is system calls: off the runtime, so health never waits.
    let encoded = match http.scraping.acquire().await {
        Ok(_turn) => {
            let registry = Arc::clone(&http.registry);
            tokio::task::spawn_blocking(move || {
                let mut body = String::new();
                prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
            })
            .await
            .ok()
            .and_then(Result::ok)
        }
        Err(_) => None,
    };
    match encoded {
        Some(body) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            "encoding metrics failed\n".to_owned(),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<Http>) -> (StatusCode, &'static str) {
    if http.state.lock().ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no valid policy is enforced on every selected interface\n",
        )
    }
}

/// Binds `addr` now (so a port clash fails start-up) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    root: PinRoot,
    state: Arc<AgentState>,
) -> std::io::Result<SocketAddr> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AirlockCollector {
        census: FlowCensus::new(root.clone()),
        check: CheckCensus::new(root.clone()),
        root,
        state: Arc::clone(&state),
    }));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Http {
            registry: Arc::new(registry),
            state,
            scraping: Arc::new(tokio::sync::Semaphore::new(1)),
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(bound)
}
