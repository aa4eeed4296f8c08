//! Providers' published range lists (AWS, Google Cloud, Azure, Cloudflare, GitHub):
//! parsed from their own documents (providers.rs), kept as snapshots with
//! provenance (snapshot.rs), fetched over HTTPS (fetch.rs) and compared (diff.rs).
//! A policy's `sets:` entry takes `provider:` and a snapshot, filtered by region,
//! service or scope.

pub mod diff;
pub mod fetch;
pub mod providers;
pub mod refresh;
pub mod snapshot;

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A provider whose published list Airlock reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
    Cloudflare,
    Github,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Aws,
        Provider::Gcp,
        Provider::Azure,
        Provider::Cloudflare,
        Provider::Github,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::Cloudflare => "cloudflare",
            Provider::Github => "github",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Where the provider publishes its list. Azure's weekly file has a new URL
    /// each week (linked from its download page): it has to be given.
    pub const fn url(self) -> Option<&'static str> {
        match self {
            Provider::Aws => Some("https://ip-ranges.amazonaws.com/ip-ranges.json"),
            Provider::Gcp => Some("https://www.gstatic.com/ipranges/cloud.json"),
            Provider::Azure => None,
            Provider::Cloudflare => Some("https://api.cloudflare.com/client/v4/ips"),
            Provider::Github => Some("https://api.github.com/meta"),
        }
    }

    /// The filters a `sets:` entry may use with this provider's list.
    pub const fn filters(self) -> &'static [FilterKey] {
        match self {
            Provider::Aws | Provider::Azure => &[FilterKey::Region, FilterKey::Service],
            Provider::Gcp => &[FilterKey::Scope, FilterKey::Service],
            Provider::Cloudflare => &[],
            Provider::Github => &[FilterKey::Service],
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a `sets:` entry filters a provider's list by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKey {
    /// AWS and Azure region (`eu-west-3`, `westeurope`).
    Region,
    /// Google Cloud scope (`us-west3`, `global`).
    Scope,
    /// AWS service (`EC2`), Google service (`Google Cloud`), Azure tag or system
    /// service (`AzureCloud.westeurope`, `AzureStorage`), GitHub list (`hooks`).
    Service,
}

impl FilterKey {
    pub const fn name(self) -> &'static str {
        match self {
            FilterKey::Region => "region",
            FilterKey::Scope => "scope",
            FilterKey::Service => "service",
        }
    }
}

/// One published range and what it is tagged with (empty where the provider has
/// no such tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub net: IpNet,
    /// AWS/Azure region, Google scope.
    pub region: String,
    pub service: String,
    /// Azure's systemService beside the tag name in `service`.
    pub system_service: String,
}

/// A filter: each key given must match one of its values (exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Region or scope.
    pub region: Vec<String>,
    pub service: Vec<String>,
}

impl Selection {
    pub fn matches(&self, entry: &Entry) -> bool {
        (self.region.is_empty() || self.region.contains(&entry.region))
            && (self.service.is_empty()
                || self.service.contains(&entry.service)
                || (!entry.system_service.is_empty()
                    && self.service.contains(&entry.system_service)))
    }

    /// The ranges of `entries` it selects, sorted, without duplicates.
    pub fn select(&self, entries: &[Entry]) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = entries
            .iter()
            .filter(|e| self.matches(e))
            .map(|e| e.net)
            .collect();
        nets.sort_unstable();
        nets.dedup();
        nets
    }
}

/// Where a policy's `sets:` entry takes a provider's list from: the snapshot file
/// (resolved against the policy's directory) and the filter. Kept in the policy so
/// the agent's refresh and `ranges diff -f` know which lists matter to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSource {
    pub provider: Provider,
    pub snapshot: std::path::PathBuf,
    pub selection: Selection,
}

/// The values `entries` have for `key`, sorted (for "did you mean" in errors).
pub fn values(entries: &[Entry], key: FilterKey) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .flat_map(|e| match key {
            FilterKey::Region | FilterKey::Scope => vec![e.region.clone()],
            FilterKey::Service => vec![e.service.clone(), e.system_service.clone()],
        })
        .filter(|v| !v.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    #[error("not a {provider} range document: {what}")]
    Format { provider: Provider, what: String },
    #[error("{path}: {what}")]
    Snapshot { path: String, what: String },
    #[error("fetching {url}: {what}")]
    Fetch { url: String, what: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests;
