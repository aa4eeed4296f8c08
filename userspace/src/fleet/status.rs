//! The node's AirlockNodeStatus, built from what the agent knows: pure, so the exact
//! server-side apply body is tested without an API server.

use airlock_crds::{
    AirlockNodeStatus, AirlockNodeStatusSpec, CONDITION_ENFORCING, CONDITION_IN_SYNC, Source,
    resolve::Resolution,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::cache::Meta;
use crate::agent::FleetRejection;

/// The field manager of every status write: one per node, so a write by anything
/// else shows in managedFields.
pub fn field_manager(node: &str) -> String {
    format!("airlock-agent/{node}")
}

/// What the status reports.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Every watch has listed everything once.
    pub listed: bool,
    /// No watch has failed since the API server last answered (a watch event,
    /// or the probe the source sends while one fails).
    pub api_ok: bool,
    /// The resolution from the watches' last state (`None` before the first list).
    pub resolution: Option<Resolution>,
    /// Why the resolved revision cannot apply (missing revision, shard errors).
    pub problem: Option<(&'static str, String)>,
    /// The digest of the resolved revision, once it assembled complete.
    pub digest: Option<String>,
    /// The revision in the cache: what the agent is to enforce, not necessarily
    /// what it enforces.
    pub cache: Option<Meta>,
    /// The cache's content was confirmed from the API server by this run.
    pub from_api: bool,
    /// The agent's own view (AgentState): enforced on every selected interface,
    /// the revision its last successful swap put in force, the revision it last
    /// failed to, and the figures of what is in force.
    pub ready: bool,
    /// The swap that put `applied` in force is still being followed up (unselected
    /// interfaces removed, every selected one checked): `ready` is not about it yet.
    pub settling: bool,
    pub applied: Option<Meta>,
    pub rejected: Option<FleetRejection>,
    pub prefixes_v4: u64,
    pub prefixes_v6: u64,
    pub mode: String,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: None,
    }
}

/// The InSync condition's status, reason and message.
fn in_sync(o: &Observed) -> (bool, &'static str, String) {
    if !o.listed {
        return (
            false,
            "WaitingForInitialList",
            "the watches have not listed everything yet".into(),
        );
    }
    if !o.api_ok {
        return (
            false,
            "ApiServerUnreachable",
            "enforcing the last good policy from the local cache".into(),
        );
    }
    let selected = match &o.resolution {
        Some(Resolution::Apply(selected)) => selected,
        Some(other) => return (false, other.reason(), other.message()),
        None => return (false, "WaitingForInitialList", String::new()),
    };
    if let Some((reason, message)) = &o.problem {
        return (false, reason, message.clone());
    }
    // The revision the API server's objects resolve to: this policy's, this
    // revision with this content, in this mode (a canary's monitor stage).
    let wanted = |m: &Meta| {
        m.policy == selected.policy
            && m.revision == selected.revision
            && m.monitor == selected.monitor
            && o.digest.as_ref() == Some(&m.digest)
    };
    let in_force = match &o.applied {
        Some(m) => format!("revision {} stays in force", m.revision),
        None => "no revision applied by this agent is in force".into(),
    };
    if !o.applied.as_ref().is_some_and(wanted) {
        if let Some(rejected) = o.rejected.as_ref().filter(|r| wanted(&r.revision)) {
            return (
                false,
                "RevisionRejected",
                format!(
                    "revision {} not put in force ({}): {}; {in_force}",
                    rejected.revision.revision,
                    rejected.kind.name(),
                    rejected.error
                ),
            );
        }
        return (
            false,
            "Applying",
            format!(
                "putting revision {} in force; {in_force}",
                selected.revision
            ),
        );
    }
    if !o.ready || o.settling {
        return (
            false,
            "Applying",
            format!(
                "revision {} is applied, not yet on every selected interface",
                selected.revision
            ),
        );
    }
    (
        true,
        "Synced",
        Resolution::Apply(selected.clone()).message(),
    )
}

pub fn spec(o: &Observed, previous: &[Condition], now: &Time) -> AirlockNodeStatusSpec {
    let (sync_ok, sync_reason, sync_message) = in_sync(o);
    let enforcing = if o.ready {
        condition(
            CONDITION_ENFORCING,
            true,
            "PolicyEnforced",
            format!("{} on every selected interface", o.mode),
            previous,
            now,
        )
    } else {
        condition(
            CONDITION_ENFORCING,
            false,
            "NotEnforcing",
            "no valid policy is enforced on every selected interface".into(),
            previous,
            now,
        )
    };
    // What the kernel enforces, as the agent's swaps put it there: never the
    // cache's content, which runs ahead of it during a reload and after a rejection.
    let source = match (&o.applied, o.from_api) {
        (None, _) => Source::None,
        (Some(_), true) => Source::ApiServer,
        (Some(_), false) => Source::LocalCache,
    };
    AirlockNodeStatusSpec {
        policy: o.applied.as_ref().map(|m| m.policy.clone()),
        revision: o.applied.as_ref().map(|m| m.revision.clone()),
        digest: o.applied.as_ref().map(|m| m.digest.clone()),
        mode: (!o.mode.is_empty()).then(|| o.mode.clone()),
        canary: o.applied.as_ref().is_some_and(|m| m.canary),
        ipv4_prefixes: o.prefixes_v4,
        ipv6_prefixes: o.prefixes_v6,
        source,
        conditions: vec![
            enforcing,
            condition(
                CONDITION_IN_SYNC,
                sync_ok,
                sync_reason,
                sync_message,
                previous,
                now,
            ),
        ],
    }
}

/// The server-side apply body: the whole object, named after the node.
pub fn object(node: &str, spec: AirlockNodeStatusSpec) -> AirlockNodeStatus {
    AirlockNodeStatus::new(node, spec)
}

#[cfg(test)]
mod tests {
    use airlock_crds::resolve::Selected;

    use super::*;

    fn now() -> Time {
        Time("2026-12-06T15:00:00Z".parse().unwrap())
    }

    fn meta(revision: &str) -> Meta {
        Meta {
            policy: "db".into(),
            revision: revision.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            canary: false,
            monitor: false,
            files: Default::default(),
        }
    }

    fn synced() -> Observed {
        Observed {
            listed: true,
            api_ok: true,
            resolution: Some(Resolution::Apply(Selected {
                policy: "db".into(),
                revision: "db-7".into(),
                canary: false,
                monitor: false,
            })),
            problem: None,
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
            cache: Some(meta("db-7")),
            from_api: true,
            ready: true,
            settling: false,
            applied: Some(meta("db-7")),
            rejected: None,
            prefixes_v4: 3,
            prefixes_v6: 1,
            mode: "enforce".into(),
        }
    }

    /// The exact body the agent sends with server-side apply.
    #[test]
    fn apply_body_is_exact() {
        let body = serde_json::to_value(object("node-a", spec(&synced(), &[], &now()))).unwrap();
        let expected = serde_json::json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "AirlockNodeStatus",
            "metadata": {"name": "node-a"},
            "spec": {
                "policy": "db",
                "revision": "db-7",
                "digest": format!("sha256:{}", "ab".repeat(32)),
                "mode": "enforce",
                "canary": false,
                "ipv4Prefixes": 3,
                "ipv6Prefixes": 1,
                "source": "ApiServer",
                "conditions": [
                    {"type": "Enforcing", "status": "True", "reason": "PolicyEnforced",
                     "message": "enforce on every selected interface",
                     "lastTransitionTime": "2026-12-06T15:00:00Z"},
                    {"type": "InSync", "status": "True", "reason": "Synced",
                     "message": "policy db revision db-7",
                     "lastTransitionTime": "2026-12-06T15:00:00Z"}
                ]
            }
        });
        assert_eq!(body, expected);
    }

    fn sync_reason(o: &Observed) -> (String, String) {
        let s = spec(o, &[], &now());
        let c = &s.conditions[1];
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn outage_keeps_enforcing_and_says_so() {
        let mut o = synced();
        o.api_ok = false;
        o.from_api = false;
        let s = spec(&o, &[], &now());
        assert_eq!(s.source, Source::LocalCache);
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(
            sync_reason(&o),
            ("False".into(), "ApiServerUnreachable".into())
        );
    }

    #[test]
    fn every_reason_to_be_out_of_sync_is_named() {
        let mut o = synced();
        o.listed = false;
        assert_eq!(sync_reason(&o).1, "WaitingForInitialList");
        let mut o = synced();
        o.resolution = Some(Resolution::Conflict {
            priority: 1,
            policies: vec!["a".into(), "b".into()],
        });
        assert_eq!(sync_reason(&o).1, "PolicyConflict");
        let mut o = synced();
        o.problem = Some(("IncompleteRevision", "shard x is missing".into()));
        assert_eq!(sync_reason(&o).1, "IncompleteRevision");
        let mut o = synced();
        o.applied = Some(meta("db-6"));
        assert_eq!(sync_reason(&o).1, "Applying");
        let mut o = synced();
        o.ready = false;
        assert_eq!(sync_reason(&o).1, "Applying");
    }

    /// The revision in the cache is what the agent is to enforce; the status
    /// names what its last swap put in force, and is in sync only when that is
    /// the revision (and content) the API server's objects resolve to.
    #[test]
    fn only_the_revision_applied_is_in_force() {
        // Cached, not yet applied (a reload in progress).
        let mut o = synced();
        o.applied = Some(meta("db-6"));
        let s = spec(&o, &[], &now());
        assert_eq!(s.revision.as_deref(), Some("db-6"));
        assert_eq!(s.conditions[1].status, "False");
        assert!(
            s.conditions[1].message.contains("db-7")
                && s.conditions[1].message.contains("db-6 stays in force"),
            "{}",
            s.conditions[1].message
        );
        // Nothing applied by this agent yet: nothing named, no source.
        o.applied = None;
        let s = spec(&o, &[], &now());
        assert_eq!((s.revision, s.digest, s.source), (None, None, Source::None));
        // The same name with other content (deleted and made again): not in sync.
        let mut o = synced();
        o.digest = Some(format!("sha256:{}", "cd".repeat(32)));
        assert_eq!(sync_reason(&o), ("False".into(), "Applying".into()));
        // Applied, but as the canary's monitor stage while enforcing is asked.
        let mut o = synced();
        o.applied.as_mut().unwrap().monitor = true;
        assert_eq!(sync_reason(&o), ("False".into(), "Applying".into()));
        // Swapped in, but the reload has not yet removed unselected interfaces and
        // checked the selected ones: `ready` still speaks of the revision before.
        let mut o = synced();
        o.settling = true;
        assert_eq!(sync_reason(&o), ("False".into(), "Applying".into()));
    }

    #[test]
    fn a_rejected_revision_is_named_and_the_one_in_force_stays() {
        let mut o = synced();
        o.applied = Some(meta("db-6"));
        o.rejected = Some(FleetRejection {
            revision: meta("db-7"),
            kind: crate::agent::RejectionKind::Lockout,
            error: "the policy would lock you out".into(),
        });
        let s = spec(&o, &[], &now());
        assert_eq!(s.revision.as_deref(), Some("db-6"));
        let c = &s.conditions[1];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RevisionRejected")
        );
        assert_eq!(
            c.message,
            "revision db-7 not put in force (lockout): the policy would lock you out; revision db-6 stays in force"
        );
        // A rejection of another revision than the one wanted is old news.
        o.rejected.as_mut().unwrap().revision = meta("db-5");
        assert_eq!(sync_reason(&o).1, "Applying");
        // Once the wanted revision is in force, a rejection left over says nothing.
        o.applied = Some(meta("db-7"));
        o.rejected.as_mut().unwrap().revision = meta("db-7");
        assert_eq!(sync_reason(&o), ("True".into(), "Synced".into()));
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = spec(&synced(), &[], &now());
        let later = Time("2026-12-06T16:00:00Z".parse().unwrap());
        let again = spec(&synced(), &first.conditions, &later);
        assert_eq!(again.conditions, first.conditions);
        let mut o = synced();
        o.api_ok = false;
        let changed = spec(&o, &first.conditions, &later);
        assert_eq!(changed.conditions[1].last_transition_time, later);
        assert_eq!(changed.conditions[0].last_transition_time, now().clone());
    }
}
