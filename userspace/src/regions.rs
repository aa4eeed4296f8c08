//! Built-in source sets ("regions"): provider egress address lists a policy can name
//! in `from`, `management` or `deny` without copying addresses by hand.
//!
//! The lists live in `userspace/data/regions.yaml`, embedded at build time, so they
//! are reviewed as data (with their source and date) rather than buried in code.

use std::sync::OnceLock;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

/// The embedded region file.
pub const REGIONS_YAML: &str = include_str!("../data/regions.yaml");

/// One built-in source set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Region {
    /// Name a policy uses to refer to it, e.g. `airbyte-us`.
    pub name: String,
    /// What the addresses are.
    pub description: String,
    /// Cloud provider the addresses belong to (`gcp`, `aws`, ...).
    pub provider: String,
    /// The provider's region, e.g. `us-west3`.
    pub provider_region: String,
    /// Document and section the list was copied from.
    pub source: String,
    /// Date (YYYY-MM-DD) the list was taken from `source`.
    pub as_of: String,
    /// The addresses, as networks (single addresses are /32 or /128).
    #[serde(serialize_with = "serialize_cidrs")]
    pub cidrs: Vec<IpNet>,
}

fn serialize_cidrs<S: Serializer>(cidrs: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(cidrs.iter().map(ToString::to_string))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    regions: Vec<RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    description: String,
    provider: String,
    provider_region: String,
    source: String,
    as_of: String,
    cidrs: Vec<String>,
}

/// Why the embedded region file did not parse: a programming error (the only file
/// is embedded and checked by a unit test), not a user's.
#[derive(Debug, thiserror::Error)]
pub enum RegionsError {
    #[error("{0}")]
    Yaml(String),
    #[error("region {0} defined twice")]
    Duplicate(String),
    #[error("region {region}: {text:?}: {source}")]
    Cidr {
        region: String,
        text: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("region {region}: {text} has host bits set")]
    HostBits { region: String, text: String },
}

/// Parses a region file.
fn parse(text: &str) -> Result<Vec<Region>, RegionsError> {
    let file: RegionFile =
        marked_yaml::from_yaml(0, text).map_err(|e| RegionsError::Yaml(e.to_string()))?;
    let mut out: Vec<Region> = Vec::with_capacity(file.regions.len());
    for raw in file.regions {
        if out.iter().any(|r| r.name == raw.name) {
            return Err(RegionsError::Duplicate(raw.name));
        }
        let mut cidrs = Vec::with_capacity(raw.cidrs.len());
        for text in &raw.cidrs {
            let net: IpNet = text.parse().map_err(|source| RegionsError::Cidr {
                region: raw.name.clone(),
                text: text.clone(),
                source,
            })?;
            if net.trunc() != net {
                return Err(RegionsError::HostBits {
                    region: raw.name,
                    text: text.clone(),
                });
            }
            cidrs.push(net);
        }
        out.push(Region {
            name: raw.name,
            description: raw.description,
            provider: raw.provider,
            provider_region: raw.provider_region,
            source: raw.source,
            as_of: raw.as_of,
            cidrs,
        });
    }
    Ok(out)
}

/// All built-in regions, or why the embedded file did not parse.
pub fn try_all() -> Result<&'static [Region], &'static RegionsError> {
    static REGIONS: OnceLock<Result<Vec<Region>, RegionsError>> = OnceLock::new();
    match REGIONS.get_or_init(|| parse(REGIONS_YAML)) {
        Ok(v) => Ok(v.as_slice()),
        Err(e) => Err(e),
    }
}

/// All built-in regions, in file order. Empty only if the embedded file is broken,
/// which the unit tests rule out.
pub fn all() -> &'static [Region] {
    try_all().unwrap_or(&[])
}

/// The built-in region called `name`.
pub fn find(name: &str) -> Option<&'static Region> {
    all().iter().find(|r| r.name == name)
}

/// How old `region`'s data is at `now` (from its `as_of` date, midnight UTC);
/// none if the date does not parse or lies ahead.
pub fn age(region: &Region, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let taken = humantime::parse_rfc3339(&format!("{}T00:00:00Z", region.as_of)).ok()?;
    now.duration_since(taken).ok()
}

/// Names of all built-in regions, sorted (for messages).
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = all().iter().map(|r| r.name.as_str()).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_parses() {
        let all = try_all().expect("regions.yaml parses");
        assert_eq!(all.len(), 2);
        let us = find("airbyte-us").unwrap();
        assert_eq!(us.cidrs.len(), 8);
        assert_eq!(us.provider, "gcp");
        assert_eq!(us.provider_region, "us-west3");
        assert_eq!(us.as_of, "2026-11-29");
        assert!(us.cidrs.contains(&"34.106.60.246/32".parse().unwrap()));
        let eu = find("airbyte-eu").unwrap();
        assert_eq!(eu.cidrs.len(), 3);
        assert_eq!(eu.provider_region, "eu-west-3");
        assert!(eu.cidrs.contains(&"35.181.124.238/32".parse().unwrap()));
        assert!(find("airbyte-asia").is_none());
        assert_eq!(names(), vec!["airbyte-eu", "airbyte-us"]);
    }

    #[test]
    fn age_counts_from_the_as_of_date() {
        let us = find("airbyte-us").unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let taken = humantime::parse_rfc3339("2026-11-29T00:00:00Z").unwrap();
        assert_eq!(age(us, taken + 10 * day), Some(10 * day));
        assert_eq!(age(us, taken - day), None);
    }

    #[test]
    fn serializes_cidrs_as_strings() {
        let json = serde_json::to_value(find("airbyte-eu").unwrap()).unwrap();
        assert_eq!(json["cidrs"][0], "13.37.4.46/32");
    }

    #[test]
    fn rejects_bad_data() {
        assert!(parse("regions: [{name: a, description: d, provider: p, provider_region: r, source: s, as_of: x, cidrs: [10.0.0.1/8]}]").is_err());
        assert!(parse("regions: [{name: a}]").is_err());
    }
}
