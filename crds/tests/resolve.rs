//! Which policy and revision apply to a node: selection, priority, conflicts,
//! invalid selectors, canary membership and monitor staging.

use std::collections::BTreeMap;

use airlock_crds::{
    AirlockPolicy, AirlockPolicySpec, Canary,
    resolve::{Resolution, Selected, canary_bucket, in_canary, resolve},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn select(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn policy(name: &str, selector: LabelSelector, priority: i32, revision: &str) -> AirlockPolicy {
    AirlockPolicy::new(
        name,
        AirlockPolicySpec {
            node_selector: selector,
            priority,
            revision: revision.into(),
            canary: None,
        },
    )
}

fn apply(policy: &str, revision: &str) -> Resolution {
    Resolution::Apply(Selected {
        policy: policy.into(),
        revision: revision.into(),
        canary: false,
        monitor: false,
    })
}

#[test]
fn database_and_web_nodes_get_their_own_policies() {
    let policies = [
        policy("db", select(&[("role", "db")]), 0, "db-1"),
        policy("web", select(&[("role", "web")]), 0, "web-1"),
    ];
    assert_eq!(
        resolve(&policies, "n1", &labels(&[("role", "db")])),
        apply("db", "db-1")
    );
    assert_eq!(
        resolve(&policies, "n2", &labels(&[("role", "web")])),
        apply("web", "web-1")
    );
    assert_eq!(
        resolve(&policies, "n3", &labels(&[("role", "cache")])),
        Resolution::NoPolicy
    );
    assert_eq!(resolve(&[], "n3", &labels(&[])), Resolution::NoPolicy);
}

#[test]
fn higher_priority_wins_an_overlap() {
    let policies = [
        policy("base", LabelSelector::default(), 0, "base-1"),
        policy("db", select(&[("role", "db")]), 10, "db-1"),
    ];
    assert_eq!(
        resolve(&policies, "n1", &labels(&[("role", "db")])),
        apply("db", "db-1")
    );
    assert_eq!(
        resolve(&policies, "n2", &labels(&[("role", "web")])),
        apply("base", "base-1")
    );
}

#[test]
fn a_tie_at_the_top_is_a_conflict_whatever_the_order() {
    let a = policy("a", select(&[("zone", "x")]), 5, "a-1");
    let b = policy("b", select(&[("role", "db")]), 5, "b-1");
    let low = policy("low", LabelSelector::default(), 1, "low-1");
    let node = labels(&[("zone", "x"), ("role", "db")]);
    let expected = Resolution::Conflict {
        priority: 5,
        policies: vec!["a".into(), "b".into()],
    };
    assert_eq!(
        resolve(&[a.clone(), b.clone(), low.clone()], "n", &node),
        expected
    );
    assert_eq!(resolve(&[low, b, a], "n", &node), expected);
    assert_eq!(expected.reason(), "PolicyConflict");
    assert!(expected.message().contains("a, b"));
}

#[test]
fn a_tie_below_the_winner_is_no_conflict() {
    let policies = [
        policy("a", LabelSelector::default(), 1, "a-1"),
        policy("b", LabelSelector::default(), 1, "b-1"),
        policy("top", LabelSelector::default(), 2, "top-1"),
    ];
    assert_eq!(resolve(&policies, "n", &labels(&[])), apply("top", "top-1"));
}

#[test]
fn match_expressions_are_honoured() {
    let selector = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "role".into(),
                operator: "In".into(),
                values: Some(vec!["db".into(), "web".into()]),
            },
            LabelSelectorRequirement {
                key: "airlock.dev/exempt".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    };
    let policies = [policy("p", selector, 0, "p-1")];
    assert_eq!(
        resolve(&policies, "n", &labels(&[("role", "web")])),
        apply("p", "p-1")
    );
    assert_eq!(
        resolve(
            &policies,
            "n",
            &labels(&[("role", "web"), ("airlock.dev/exempt", "")])
        ),
        Resolution::NoPolicy
    );
}

#[test]
fn an_invalid_selector_stops_resolution_instead_of_falling_through() {
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "role".into(),
            operator: "Matches".into(),
            values: None,
        }]),
    };
    let policies = [
        policy("base", LabelSelector::default(), 0, "base-1"),
        policy("broken", bad, 10, "x"),
    ];
    let got = resolve(&policies, "n", &labels(&[("role", "db")]));
    assert!(
        matches!(&got, Resolution::InvalidSelector { policy, .. } if policy == "broken"),
        "{got:?}"
    );
}

fn with_canary(canary: Canary) -> AirlockPolicy {
    let mut p = policy("fleet", LabelSelector::default(), 0, "stable");
    p.spec.canary = Some(canary);
    p
}

#[test]
fn canary_by_selector_and_monitor_stage() {
    let p = with_canary(Canary {
        revision: "next".into(),
        node_selector: Some(select(&[("canary", "yes")])),
        percent: None,
        monitor: true,
    });
    assert_eq!(
        resolve(
            std::slice::from_ref(&p),
            "n1",
            &labels(&[("canary", "yes")])
        ),
        Resolution::Apply(Selected {
            policy: "fleet".into(),
            revision: "next".into(),
            canary: true,
            monitor: true,
        })
    );
    assert_eq!(resolve(&[p], "n2", &labels(&[])), apply("fleet", "stable"));
}

#[test]
fn canary_percentages_are_about_right_and_zero_and_hundred_are_exact() {
    let nodes: Vec<String> = (0..10_000).map(|i| format!("node-{i}")).collect();
    let count = |pct| nodes.iter().filter(|n| in_canary("fleet", n, pct)).count();
    assert_eq!(count(0), 0);
    assert_eq!(count(100), nodes.len());
    let ten = count(10);
    assert!((800..1200).contains(&ten), "10 % gave {ten} of 10,000");
    // The canary is a property of the node, not of the order the agent saw things in.
    let p = with_canary(Canary {
        revision: "next".into(),
        node_selector: None,
        percent: Some(10),
        monitor: false,
    });
    for n in nodes.iter().take(200) {
        let got = resolve(std::slice::from_ref(&p), n, &labels(&[]));
        let Resolution::Apply(s) = got else { panic!() };
        assert_eq!(s.canary, in_canary("fleet", n, 10));
        assert_eq!(s.revision, if s.canary { "next" } else { "stable" });
    }
}

proptest! {
    /// A node in the canary at some percentage is in it at every larger one.
    #[test]
    fn canary_membership_grows_monotonically(node in "[a-z0-9.-]{1,40}", lo in 0u8..=100, hi in 0u8..=100) {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        if in_canary("fleet", &node, lo) {
            prop_assert!(in_canary("fleet", &node, hi));
        }
        prop_assert_eq!(canary_bucket("fleet", &node), canary_bucket("fleet", &node));
    }
}
