//! Parsing against small documents in each provider's real, documented shape
//! (samples/), the snapshot's digest, and diffs.

use std::{path::Path, time::SystemTime};

use super::{
    Provider, RangesError, Selection, diff,
    providers::parse,
    snapshot::{Snapshot, sha256_hex},
};

const AWS: &str = include_str!("samples/aws.json");
const GCP: &str = include_str!("samples/gcp.json");
const AZURE: &str = include_str!("samples/azure.json");
const CLOUDFLARE: &str = include_str!("samples/cloudflare.json");
const GITHUB: &str = include_str!("samples/github.json");

fn nets(list: &[ipnet::IpNet]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn select(region: &[&str], service: &[&str]) -> Selection {
    Selection {
        region: region.iter().map(|s| (*s).to_owned()).collect(),
        service: service.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn every_sample_parses_with_its_version_stamp() {
    for (provider, text, version, count) in [
        (Provider::Aws, AWS, Some("1765003989"), 6),
        (Provider::Gcp, GCP, Some("1765000200981"), 4),
        (Provider::Azure, AZURE, Some("341"), 6),
        (
            Provider::Cloudflare,
            CLOUDFLARE,
            Some("38f79d050aa027e3be3865e495dcc9bc"),
            6,
        ),
        (Provider::Github, GITHUB, None, 12),
    ] {
        let parsed = parse(provider, text).unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert_eq!(parsed.version.as_deref(), version, "{provider}");
        assert_eq!(parsed.entries.len(), count, "{provider}");
    }
}

#[test]
fn filters_pick_regions_scopes_and_services() {
    let aws = parse(Provider::Aws, AWS).unwrap().entries;
    assert_eq!(
        nets(&select(&["eu-west-3"], &["EC2"]).select(&aws)),
        ["13.37.0.0/16", "15.236.0.0/15", "2a05:d012::/40"]
    );
    assert_eq!(select(&["eu-west-3"], &[]).select(&aws).len(), 4);
    let gcp = parse(Provider::Gcp, GCP).unwrap().entries;
    assert_eq!(
        nets(&select(&["us-west3"], &[]).select(&gcp)),
        ["34.106.0.0/16", "35.217.64.0/18", "2600:1900:4160::/44"]
    );
    let azure = parse(Provider::Azure, AZURE).unwrap().entries;
    // A tag name or its system service.
    assert_eq!(
        nets(&select(&[], &["AzureStorage"]).select(&azure)),
        ["20.38.108.0/23", "20.60.0.0/24"]
    );
    assert_eq!(
        select(&["westeurope"], &["AzureCloud.westeurope"])
            .select(&azure)
            .len(),
        3
    );
    let github = parse(Provider::Github, GITHUB).unwrap().entries;
    assert_eq!(select(&[], &["hooks"]).select(&github).len(), 6);
    // web and hooks share ranges: the union holds each once.
    assert_eq!(select(&[], &["hooks", "web"]).select(&github).len(), 7);
}

#[test]
fn a_malformed_or_changed_document_is_refused_naming_the_field() {
    let bad_cidr = AWS.replace("13.37.0.0/16", "13.37.0.0/33");
    let e = parse(Provider::Aws, &bad_cidr).err().expect("refused");
    assert!(e.to_string().contains("prefixes[1].ip_prefix"), "{e}");
    let host_bits = GCP.replace("34.106.0.0/16", "34.106.0.1/16");
    let e = parse(Provider::Gcp, &host_bits).err().expect("refused");
    assert!(e.to_string().contains("host bits"), "{e}");
    // A schema change: AWS renames its list.
    let renamed = AWS.replace("\"prefixes\"", "\"ipv4_prefixes\"");
    let e = parse(Provider::Aws, &renamed).err().expect("refused");
    assert!(e.to_string().contains("prefixes"), "{e}");
    // GitHub adds a key that is no range list.
    let new_key = GITHUB.replace("\"web\": [", "\"web_flag\": true,\n  \"web\": [");
    let e = parse(Provider::Github, &new_key).err().expect("refused");
    assert!(e.to_string().contains("web_flag"), "{e}");
    // The wrong provider's document, and one truncated on the way.
    assert!(parse(Provider::Gcp, AWS).is_err());
    assert!(parse(Provider::Aws, &AWS[..AWS.len() / 2]).is_err());
    let empty = r#"{"result":{"ipv4_cidrs":[],"ipv6_cidrs":[],"etag":"x"},"success":true}"#;
    let e = parse(Provider::Cloudflare, empty).err().expect("refused");
    assert!(e.to_string().contains("no ranges"), "{e}");
}

#[test]
fn a_snapshot_keeps_its_provenance_and_refuses_an_edited_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aws.json");
    let (snapshot, _) = Snapshot::new(
        Provider::Aws,
        "https://ip-ranges.amazonaws.com/ip-ranges.json",
        AWS.to_owned(),
        Some("\"etag\"".into()),
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    assert_eq!(snapshot.version.as_deref(), Some("1765003989"));
    assert_eq!(snapshot.sha256, sha256_hex(AWS.as_bytes()));
    assert_eq!(snapshot.fetched_at, "1970-01-01T00:00:00Z");
    snapshot.write(&path).unwrap();
    let (read, parsed) = Snapshot::read(&path).unwrap();
    assert_eq!(read, snapshot);
    assert_eq!(parsed.entries.len(), 6);
    let tampered = std::fs::read_to_string(&path)
        .unwrap()
        .replace("13.37.0.0/16", "0.0.0.0/0");
    let e = Snapshot::from_text(&tampered, Path::new("aws.json"))
        .err()
        .expect("refused");
    assert!(
        matches!(e, RangesError::Snapshot { .. }) && e.to_string().contains("SHA-256"),
        "{e}"
    );
    // GitHub's document has no stamp of its own: the ETag stands in.
    let (github, _) = Snapshot::new(
        Provider::Github,
        "https://api.github.com/meta",
        GITHUB.to_owned(),
        Some("W/\"abc\"".into()),
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    assert_eq!(github.version.as_deref(), Some("W/\"abc\""));
}

#[test]
fn a_diff_says_what_each_list_gains_and_loses() {
    let old = parse(Provider::Aws, AWS).unwrap().entries;
    let newer = AWS.replace("15.236.0.0/15", "15.188.0.0/16");
    let new = parse(Provider::Aws, &newer).unwrap().entries;
    let d = diff::diff(&old, &new);
    assert_eq!((d.added, d.removed, d.old_ranges), (1, 1, 6));
    assert_eq!(d.groups.len(), 1);
    assert_eq!(
        (d.groups[0].region.as_str(), d.groups[0].service.as_str()),
        ("eu-west-3", "EC2")
    );
    assert_eq!(nets(&d.groups[0].added), ["15.188.0.0/16"]);
    assert_eq!(nets(&d.groups[0].removed), ["15.236.0.0/15"]);
    assert!((d.removed_share() - 1.0 / 6.0).abs() < 1e-9);
}

#[test]
fn a_refresh_is_guarded_per_list_and_per_set() {
    use super::refresh::{Refusal, Target, check};
    let (old, parsed) = Snapshot::new(
        Provider::Aws,
        "https://example.test/ip-ranges.json",
        AWS.to_owned(),
        None,
        SystemTime::now(),
    )
    .unwrap();
    let target = Target {
        path: "/etc/airlock/aws.json".into(),
        provider: Provider::Aws,
        sets: vec![
            ("paris-ec2".into(), select(&["eu-west-3"], &["EC2"])),
            ("virginia".into(), select(&["us-east-1"], &[])),
        ],
    };
    let run = |document: &str, max: f64| {
        check(
            &target,
            "https://example.test/ip-ranges.json",
            document.to_owned(),
            None,
            (&old, &parsed.entries),
            max,
        )
    };
    // The same document: nothing to do.
    assert!(run(AWS, 0.1).unwrap().is_none());
    // One of six ranges gone (17%) but a third of paris-ec2's: the whole list
    // passes a 20% guard, the set does not.
    let shrunk = AWS.replace("\"15.236.0.0/15\"", "\"13.37.0.0/16\"");
    match run(&shrunk, 0.2) {
        Err(Refusal::Shrink {
            list, removed, old, ..
        }) => {
            assert_eq!((list.as_str(), removed, old), ("set paris-ec2", 1, 3));
        }
        other => panic!("{other:?}"),
    }
    match run(&shrunk, 0.1) {
        Err(Refusal::Shrink { list, .. }) => assert_eq!(list, "/etc/airlock/aws.json"),
        other => panic!("{other:?}"),
    }
    let candidate = run(&shrunk, 0.5).unwrap().expect("a change");
    assert_eq!(candidate.sets[0].removed.len(), 1);
    assert!(candidate.sets[1].removed.is_empty());
    assert_eq!(candidate.replaces, old.sha256);
    assert!(Snapshot::from_text(&candidate.text, Path::new("x")).is_ok());
    // A schema change is a document refusal, whatever the guard allows.
    let changed = AWS.replace("\"prefixes\"", "\"ipv4_prefixes\"");
    assert!(matches!(run(&changed, 1.0), Err(Refusal::Document(_))));
}
