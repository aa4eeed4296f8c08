//! The findings: what an operator should fix, by severity.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use super::{
    Exposure, Finding, Inputs, Kind, NetLink, Severity, Who, exposures::has_traffic, reach,
};
use crate::{loader::AttachMode, policy::Policy};

pub(super) fn findings(inputs: &Inputs<'_>, exposures: &[Exposure]) -> Vec<Finding> {
    let mut out = Vec::new();
    let traffic: Vec<&NetLink> = inputs.links.iter().filter(|l| has_traffic(l)).collect();
    if inputs.filters.is_empty() {
        let names: Vec<&str> = traffic.iter().map(|l| l.name.as_str()).collect();
        out.push(Finding::new(
            Severity::Critical,
            Kind::NoFilter,
            if names.is_empty() {
                "no Airlock filter is attached in this network namespace".into()
            } else {
                format!(
                    "no Airlock filter is attached in this network namespace; traffic arrives on {}",
                    names.join(", ")
                )
            },
        ));
    } else {
        for link in &traffic {
            if !inputs.filters.iter().any(|f| f.iface == link.name) {
                out.push(
                    Finding::new(
                        Severity::High,
                        Kind::UnfilteredInterface,
                        format!(
                            "{} has received {} packets and has no Airlock filter: whatever listens on the host is reachable through it",
                            link.name, link.rx_packets
                        ),
                    )
                    .on(&link.name),
                );
            }
        }
    }
    for filter in inputs.filters {
        if filter.mode == AttachMode::Skb {
            out.push(
                Finding::new(
                    Severity::Medium,
                    Kind::GenericMode,
                    format!(
                        "the filter on {} runs in generic (skb) mode: slower, and behind any native XDP program on the interface",
                        filter.iface
                    ),
                )
                .on(&filter.iface),
            );
        }
        if filter.summary.as_ref().is_some_and(|s| s.mode == "monitor") {
            out.push(
                Finding::new(
                    Severity::High,
                    Kind::MonitorMode,
                    format!(
                        "the policy on {} is in monitor mode: it counts what it would drop and drops nothing",
                        filter.iface
                    ),
                )
                .on(&filter.iface),
            );
        }
    }
    for iface in inputs.differs_on {
        out.push(
            Finding::new(
                Severity::Medium,
                Kind::PolicyDiffers,
                format!(
                    "the policy in force on {iface} is not the policy file checked: what is said of reach follows the file, the kernel probes follow what is in force"
                ),
            )
            .on(iface),
        );
    }
    if let Some(policy) = inputs.policy {
        let everyone = reach::management_is_everyone(policy);
        if !everyone.is_empty() {
            out.push(Finding::new(
                Severity::Critical,
                Kind::ManagementEveryone,
                format!(
                    "management holds {}: every source passes everything",
                    everyone.join(" and ")
                ),
            ));
        }
        out.extend(stale_regions(policy, inputs.region_max_age, inputs.now));
    }
    let mut reported = BTreeSet::new();
    for exposure in exposures.iter().filter(|e| e.who == Who::Everyone) {
        let (proto, port) = (exposure.proto, exposure.port);
        if let Some(name) = exposure.service
            && reported.insert((Kind::ExposedService, proto, port))
        {
            out.push(
                Finding::new(
                    Severity::Critical,
                    Kind::ExposedService,
                    format!(
                        "{port}/{proto} ({name}) is open to everyone over {}: {}",
                        exposure.family.name(),
                        exposure.why
                    ),
                )
                .at(proto, port),
            );
        }
        if exposure.default_pass
            && exposure.unfiltered.is_empty()
            && reported.insert((Kind::DefaultPass, proto, port))
        {
            out.push(
                Finding::new(
                    Severity::Medium,
                    Kind::DefaultPass,
                    format!(
                        "{port}/{proto} is open to everyone only because no rule covers it and default is pass: add a rule, or set default: drop"
                    ),
                )
                .at(proto, port),
            );
        }
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    out
}

/// The built-in regions `policy` uses whose data is older than `max_age`.
fn stale_regions(policy: &Policy, max_age: Duration, now: SystemTime) -> Vec<Finding> {
    let used: BTreeSet<&str> = policy
        .management
        .sets
        .iter()
        .chain(&policy.deny.sets)
        .chain(policy.rules.iter().flat_map(|r| &r.from.sets))
        .map(|s| s.name.as_str())
        .collect();
    crate::regions::all()
        .iter()
        .filter(|r| used.contains(r.name.as_str()))
        .filter_map(|region| {
            let age = crate::regions::age(region, now)?;
            (age > max_age).then(|| {
                Finding::new(
                    Severity::Low,
                    Kind::StaleRegion,
                    format!(
                        "built-in region {} is {} days old (as of {}, threshold {} days): check {} and update Airlock",
                        region.name,
                        age.as_secs() / 86_400,
                        region.as_of,
                        max_age.as_secs() / 86_400,
                        region.source
                    ),
                )
            })
        })
        .collect()
}
