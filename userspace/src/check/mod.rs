//! `airlock check`, the security self-check: for every socket that takes traffic
//! from the network, who can reach it under the policy in force, and findings (with
//! a severity) for what an operator should fix. Pure logic over facts gathered by
//! the caller (facts.rs, `sockets::listeners`), so the agent and the CLI share it;
//! the kernel cross-check of each answer is verify.rs.

pub mod facts;
pub mod reach;
pub mod verify;

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

use serde::Serialize;

pub use facts::{Filter, NetLink};
pub use reach::{Family, Reach, Who};

use crate::{
    policy::{Policy, Proto},
    sockets::Listener,
};

/// How bad a finding is, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The classes of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No Airlock filter on any interface of this namespace.
    NoFilter,
    /// An interface that receives traffic has no filter.
    UnfilteredInterface,
    /// A well-known database or admin port is open to everyone.
    ExposedService,
    /// A port is open only because no rule covers it and `default` is `pass`.
    DefaultPass,
    /// `mode: monitor` is in force: nothing is dropped.
    MonitorMode,
    /// `management` holds 0.0.0.0/0 or ::/0: everyone is management.
    ManagementEveryone,
    /// A built-in region used by the policy is older than the threshold.
    StaleRegion,
    /// A filter runs in generic (skb) mode.
    GenericMode,
    /// The attached program decided a probe differently from the model.
    KernelDisagrees,
    /// The policy given is not the one in force.
    PolicyDiffers,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::NoFilter => "no_filter",
            Kind::UnfilteredInterface => "unfiltered_interface",
            Kind::ExposedService => "exposed_service",
            Kind::DefaultPass => "default_pass",
            Kind::MonitorMode => "monitor_mode",
            Kind::ManagementEveryone => "management_everyone",
            Kind::StaleRegion => "stale_region",
            Kind::GenericMode => "generic_mode",
            Kind::KernelDisagrees => "kernel_disagrees",
            Kind::PolicyDiffers => "policy_differs",
        }
    }
}

/// One thing to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    pub message: String,
}

impl Finding {
    fn new(severity: Severity, kind: Kind, message: String) -> Self {
        Self {
            severity,
            kind,
            iface: None,
            port: None,
            proto: None,
            message,
        }
    }

    fn on(mut self, iface: &str) -> Self {
        self.iface = Some(iface.to_owned());
        self
    }

    fn at(mut self, proto: Proto, port: u16) -> Self {
        self.proto = Some(proto);
        self.port = Some(port);
        self
    }
}

/// One probe of the attached program for an exposure (verify.rs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub iface: String,
    pub src: String,
    /// The model's verdict: `pass` or `drop`.
    pub model: &'static str,
    /// The kernel's, or none when the probe could not run (`error` says why).
    pub kernel: Option<&'static str>,
    pub agree: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Who can reach one listening socket over one address family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exposure {
    pub proto: Proto,
    pub port: u16,
    pub family: Family,
    /// The bound address (`0.0.0.0`, `::` for every address).
    pub address: String,
    /// The process holding the socket, when it could be told.
    pub process: Option<String>,
    pub who: Who,
    pub sets: Vec<String>,
    pub rules: Vec<String>,
    pub why: String,
    /// Open only because no rule covers it and `default` is `pass`.
    pub default_pass: bool,
    /// Interfaces it is reachable through whose filter decides.
    pub filtered: Vec<String>,
    /// Interfaces with traffic it is reachable through with no filter at all.
    pub unfiltered: Vec<String>,
    /// The well-known service on this port, if any.
    pub service: Option<&'static str>,
    pub probes: Vec<Probe>,
}

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub exposures: Vec<Exposure>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// The most severe finding.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Databases and admin interfaces that should never be open to everyone (TCP).
pub const WELL_KNOWN: &[(u16, &str)] = &[
    (8000, "Airbyte web app/API"),
    (5432, "PostgreSQL"),
    (3306, "MySQL"),
    (6379, "Redis"),
    (9200, "Elasticsearch"),
    (27017, "MongoDB"),
    (2375, "Docker API (plain)"),
    (2376, "Docker API (TLS)"),
    (10250, "kubelet"),
    (2379, "etcd"),
];

/// The well-known service on `port`/`proto`.
pub fn service(proto: Proto, port: u16) -> Option<&'static str> {
    (proto == Proto::Tcp)
        .then(|| WELL_KNOWN.iter().find(|(p, _)| *p == port).map(|(_, n)| *n))
        .flatten()
}

/// Everything `assess` looks at.
pub struct Inputs<'a> {
    /// The policy the filters enforce (none: no filter, and none given).
    pub policy: Option<&'a Policy>,
    pub links: &'a [NetLink],
    pub filters: &'a [Filter],
    pub listeners: &'a [Listener],
    /// Process names by socket inode.
    pub owners: &'a HashMap<u32, String>,
    /// Built-in region data older than this is stale.
    pub region_max_age: Duration,
    pub now: SystemTime,
    /// Interfaces whose policy in force is not `policy`.
    pub differs_on: &'a [String],
}

/// Who reaches each listener, and the findings (probes are verify.rs's, after).
pub fn assess(inputs: &Inputs<'_>) -> Report {
    let mut report = Report {
        exposures: exposures(inputs),
        findings: Vec::new(),
    };
    report.findings = findings(inputs, &report.exposures);
    report
}

/// The self-check of this namespace by the model alone (no probe, no process
/// names): what the agent exports in `/metrics`. None when the kernel could not be
/// asked.
pub fn model_only(
    root: &crate::loader::PinRoot,
    policy: Option<&Policy>,
    region_max_age: Duration,
) -> Option<Report> {
    let links = facts::links().ok()?;
    let filters = facts::filters_here(root, &links).ok()?;
    let listeners = crate::sockets::listeners().ok()?;
    Some(assess(&Inputs {
        policy,
        links: &links,
        filters: &filters,
        listeners: &listeners,
        owners: &HashMap::new(),
        region_max_age,
        now: SystemTime::now(),
        differs_on: &[],
    }))
}

/// Built-in region data older than this is stale, unless told otherwise.
pub const DEFAULT_REGION_MAX_AGE: Duration = Duration::from_secs(90 * 86_400);

/// Up, not loopback, and has received packets: traffic arrives there.
fn has_traffic(link: &NetLink) -> bool {
    link.up && !link.loopback && link.rx_packets > 0
}

fn exposures(inputs: &Inputs<'_>) -> Vec<Exposure> {
    let filtered_names: BTreeSet<&str> = inputs.filters.iter().map(|f| f.iface.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for listener in inputs.listeners {
        if listener.loopback_only() {
            continue;
        }
        // A socket bound to a device takes traffic from that device only; any
        // other socket takes it from every interface (Linux accepts a packet for any
        // of the host's addresses on any interface).
        let paths: Vec<&NetLink> = inputs
            .links
            .iter()
            .filter(|l| l.up && !l.loopback)
            .filter(|l| listener.bound_ifindex == 0 || l.ifindex == listener.bound_ifindex)
            .collect();
        if listener.bound_ifindex != 0 && paths.is_empty() {
            continue; // bound to loopback, or to a device that is down
        }
        let filtered: Vec<String> = paths
            .iter()
            .filter(|l| filtered_names.contains(l.name.as_str()))
            .map(|l| l.name.clone())
            .collect();
        let unfiltered: Vec<String> = paths
            .iter()
            .filter(|l| !filtered_names.contains(l.name.as_str()) && has_traffic(l))
            .map(|l| l.name.clone())
            .collect();
        let families = [
            (Family::Ipv4, listener.takes_ipv4()),
            (Family::Ipv6, listener.takes_ipv6()),
        ];
        for (family, takes) in families {
            let key = (listener.proto, listener.port, family, listener.local);
            if !takes || !seen.insert(key) {
                continue;
            }
            let reach = match (inputs.policy, filtered.is_empty(), unfiltered.is_empty()) {
                (_, _, false) => Reach {
                    who: Who::Everyone,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: format!("no filter on {}", unfiltered.join(", ")),
                    default_pass: false,
                },
                (Some(policy), false, true) => {
                    reach::reach(policy, listener.proto, listener.port, family)
                }
                _ if paths.is_empty() => Reach {
                    who: Who::Nobody,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: "no interface is up".into(),
                    default_pass: false,
                },
                _ => Reach {
                    who: Who::Everyone,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: "no Airlock filter is attached".into(),
                    default_pass: false,
                },
            };
            out.push(Exposure {
                proto: listener.proto,
                port: listener.port,
                family,
                address: listener.local.to_string(),
                process: inputs.owners.get(&listener.inode).cloned(),
                who: reach.who,
                sets: reach.sets,
                rules: reach.rules,
                why: reach.why,
                default_pass: reach.default_pass,
                filtered: filtered.clone(),
                unfiltered: unfiltered.clone(),
                service: service(listener.proto, listener.port),
                probes: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| {
        (a.proto, a.port, a.family, &a.address).cmp(&(b.proto, b.port, b.family, &b.address))
    });
    out
}

fn findings(inputs: &Inputs<'_>, exposures: &[Exposure]) -> Vec<Finding> {
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
        if filter.mode == "generic" {
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
