//! `airlock check`, the security self-check: for every socket that takes traffic
//! from the network, who can reach it under the policy in force, and findings (with
//! a severity) for what an operator should fix. Pure logic over facts gathered by
//! the caller (facts.rs, `sockets::listeners`), so the agent and the CLI share it;
//! the kernel cross-check of each answer is verify.rs.

mod exposures;
pub mod facts;
mod findings;
pub mod reach;
#[cfg(test)]
mod tests;
pub mod verify;

use std::{
    collections::HashMap,
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
        exposures: exposures::exposures(inputs),
        findings: Vec::new(),
    };
    report.findings = findings::findings(inputs, &report.exposures);
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
    let mut listeners = crate::sockets::listeners().ok()?;
    listeners.extend(crate::sockets::dnat::published().unwrap_or_default());
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
