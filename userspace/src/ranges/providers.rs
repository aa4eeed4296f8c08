//! Each provider's published document, in its own documented shape, checked and
//! turned into ranges tagged with what a policy filters on. Anything out of shape
//! is an error naming the field: a schema change must stop a refresh, not quietly
//! yield an allowlist of nothing (or of everything).

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::{Entry, Provider, RangesError};

/// What a document says.
pub struct Parsed {
    /// The provider's own version stamp (AWS/GCP syncToken, Azure changeNumber,
    /// Cloudflare etag); GitHub's document has none.
    pub version: Option<String>,
    pub entries: Vec<Entry>,
}

fn bad(provider: Provider, what: impl Into<String>) -> RangesError {
    RangesError::Format {
        provider,
        what: what.into(),
    }
}

fn net(provider: Provider, text: &str, at: &str) -> Result<IpNet, RangesError> {
    let net: IpNet = text
        .parse()
        .map_err(|_| bad(provider, format!("{at}: {text:?} is not a CIDR")))?;
    if net.trunc() != net {
        return Err(bad(provider, format!("{at}: {text} has host bits set")));
    }
    Ok(net)
}

fn entry(net: IpNet, region: &str, service: &str) -> Entry {
    Entry {
        net,
        region: region.to_owned(),
        service: service.to_owned(),
        system_service: String::new(),
    }
}

pub fn parse(provider: Provider, text: &str) -> Result<Parsed, RangesError> {
    let parsed = match provider {
        Provider::Aws => aws(text),
        Provider::Gcp => gcp(text),
        Provider::Azure => azure(text),
        Provider::Cloudflare => cloudflare(text),
        Provider::Github => github(text),
    }?;
    if parsed.entries.is_empty() {
        return Err(bad(provider, "the document lists no ranges"));
    }
    Ok(parsed)
}

fn json<'a, T: Deserialize<'a>>(provider: Provider, text: &'a str) -> Result<T, RangesError> {
    serde_json::from_str(text).map_err(|e| bad(provider, e.to_string()))
}

/// `ip-ranges.json`: https://docs.aws.amazon.com/vpc/latest/userguide/aws-ip-syntax.html
fn aws(text: &str) -> Result<Parsed, RangesError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        sync_token: String,
        #[allow(dead_code)]
        create_date: String,
        prefixes: Vec<V4>,
        #[serde(rename = "ipv6_prefixes")]
        ipv6_prefixes: Vec<V6>,
    }
    #[derive(Deserialize)]
    struct V4 {
        ip_prefix: String,
        region: String,
        service: String,
    }
    #[derive(Deserialize)]
    struct V6 {
        ipv6_prefix: String,
        region: String,
        service: String,
    }
    let p = Provider::Aws;
    let doc: Doc = json(p, text)?;
    let mut entries = Vec::with_capacity(doc.prefixes.len() + doc.ipv6_prefixes.len());
    for (i, x) in doc.prefixes.iter().enumerate() {
        let n = net(p, &x.ip_prefix, &format!("prefixes[{i}].ip_prefix"))?;
        entries.push(entry(n, &x.region, &x.service));
    }
    for (i, x) in doc.ipv6_prefixes.iter().enumerate() {
        let n = net(
            p,
            &x.ipv6_prefix,
            &format!("ipv6_prefixes[{i}].ipv6_prefix"),
        )?;
        entries.push(entry(n, &x.region, &x.service));
    }
    Ok(Parsed {
        version: Some(doc.sync_token),
        entries,
    })
}

/// `cloud.json`: https://cloud.google.com/compute/docs/faq#find_ip_range; the
/// scope (a region such as `us-west3`, or `global`) is the entry's region.
fn gcp(text: &str) -> Result<Parsed, RangesError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        sync_token: String,
        #[allow(dead_code)]
        creation_time: String,
        prefixes: Vec<Prefix>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Prefix {
        ipv4_prefix: Option<String>,
        ipv6_prefix: Option<String>,
        service: String,
        scope: String,
    }
    let p = Provider::Gcp;
    let doc: Doc = json(p, text)?;
    let mut entries = Vec::with_capacity(doc.prefixes.len());
    for (i, x) in doc.prefixes.iter().enumerate() {
        let text = match (&x.ipv4_prefix, &x.ipv6_prefix) {
            (Some(v4), None) => v4,
            (None, Some(v6)) => v6,
            _ => {
                return Err(bad(
                    p,
                    format!("prefixes[{i}]: expected one of ipv4Prefix or ipv6Prefix"),
                ));
            }
        };
        let n = net(p, text, &format!("prefixes[{i}]"))?;
        entries.push(entry(n, &x.scope, &x.service));
    }
    Ok(Parsed {
        version: Some(doc.sync_token),
        entries,
    })
}

/// Service tags (`ServiceTags_Public_*.json`): https://learn.microsoft.com/azure/virtual-network/service-tags-overview.
/// An entry's service is its tag name (`AzureCloud.westeurope`, `Storage`); its
/// systemService (`AzureStorage`) matches a `service:` filter too (see `matches`).
fn azure(text: &str) -> Result<Parsed, RangesError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        change_number: u64,
        #[allow(dead_code)]
        cloud: String,
        values: Vec<Tag>,
    }
    #[derive(Deserialize)]
    struct Tag {
        name: String,
        properties: Properties,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Properties {
        #[serde(default)]
        region: String,
        #[serde(default)]
        system_service: String,
        address_prefixes: Vec<String>,
    }
    let p = Provider::Azure;
    let doc: Doc = json(p, text)?;
    let mut entries = Vec::new();
    for (i, tag) in doc.values.iter().enumerate() {
        for (j, text) in tag.properties.address_prefixes.iter().enumerate() {
            let n = net(
                p,
                text,
                &format!("values[{i}] ({}).properties.addressPrefixes[{j}]", tag.name),
            )?;
            let mut e = entry(n, &tag.properties.region, &tag.name);
            e.system_service.clone_from(&tag.properties.system_service);
            entries.push(e);
        }
    }
    Ok(Parsed {
        version: Some(doc.change_number.to_string()),
        entries,
    })
}

/// The API's `/client/v4/ips`: https://developers.cloudflare.com/api/resources/ips/
fn cloudflare(text: &str) -> Result<Parsed, RangesError> {
    #[derive(Deserialize)]
    struct Doc {
        success: bool,
        result: Result_,
    }
    #[derive(Deserialize)]
    struct Result_ {
        ipv4_cidrs: Vec<String>,
        ipv6_cidrs: Vec<String>,
        etag: String,
    }
    let p = Provider::Cloudflare;
    let doc: Doc = json(p, text)?;
    if !doc.success {
        return Err(bad(p, "success is false"));
    }
    let mut entries = Vec::new();
    for (field, list) in [
        ("ipv4_cidrs", &doc.result.ipv4_cidrs),
        ("ipv6_cidrs", &doc.result.ipv6_cidrs),
    ] {
        for (i, text) in list.iter().enumerate() {
            entries.push(entry(
                net(p, text, &format!("result.{field}[{i}]"))?,
                "",
                "",
            ));
        }
    }
    Ok(Parsed {
        version: Some(doc.result.etag),
        entries,
    })
}

/// Keys of GitHub's meta document that are not range lists.
const GITHUB_NOT_RANGES: &[&str] = &[
    "verifiable_password_authentication",
    "ssh_key_fingerprints",
    "ssh_keys",
    "domains",
];

/// `api.github.com/meta`: https://docs.github.com/rest/meta/meta; each list's key
/// (`hooks`, `actions`, `web`...) is its entries' service.
fn github(text: &str) -> Result<Parsed, RangesError> {
    let p = Provider::Github;
    let doc: serde_json::Map<String, Value> = json(p, text)?;
    let mut entries = Vec::new();
    for (key, value) in &doc {
        if GITHUB_NOT_RANGES.contains(&key.as_str()) {
            continue;
        }
        let Some(list) = value.as_array() else {
            return Err(bad(
                p,
                format!("{key}: expected a list of CIDRs (a key this version does not know)"),
            ));
        };
        for (i, item) in list.iter().enumerate() {
            let text = item
                .as_str()
                .ok_or_else(|| bad(p, format!("{key}[{i}]: expected a string")))?;
            entries.push(entry(net(p, text, &format!("{key}[{i}]"))?, "", key));
        }
    }
    Ok(Parsed {
        version: None,
        entries,
    })
}
