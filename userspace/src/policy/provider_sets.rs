//! `sets:` entries taking a provider's published list from a snapshot:
//!
//! ```yaml
//! airbyte-eu-hosts:
//!   provider: aws
//!   snapshot: ranges/aws.json     # written by `airlock ranges fetch aws`
//!   region: eu-west-3             # or a list; gcp: scope; github: service only
//!   service: EC2
//! ```
//!
//! The snapshot is read like a `file:` import (regular file, size limit, not
//! world-writable), its digest and document checked (crate::ranges::snapshot),
//! and every filter value must name something in it: a misspelt region must be an
//! error, not an empty set.

use std::path::Path;

use ipnet::IpNet;
use marked_yaml::{Node, types::MarkedMappingNode};

use super::{
    error::{DiagnosticKind, did_you_mean},
    import_file, imports,
    raw::{self, Ctx, Pos},
    sets::Import,
};
use crate::ranges::{self, FilterKey, Provider, ProviderSource, Selection, snapshot::Snapshot};

/// The keys a set mapping takes besides `provider`.
pub(crate) const KEYS: &[&str] = &["provider", "snapshot", "region", "scope", "service"];

/// The selected ranges of the set mapping `m` (which has `provider:`), and the
/// snapshot as an import; `None` after recording errors.
pub(crate) fn provider_ranges(
    ctx: &mut Ctx,
    m: &MarkedMappingNode,
    field: &str,
    origin: &Path,
    max_size: u64,
) -> Option<(Vec<IpNet>, Import)> {
    let errors_before = ctx.diags.len();
    let provider_node = m.get_node("provider")?;
    let f = format!("{field}.provider");
    let name = raw::scalar(ctx, provider_node, &f, "a provider name")?;
    let Some(provider) = Provider::from_name(name.as_str()) else {
        let names: Vec<&str> = Provider::ALL.iter().map(|p| p.name()).collect();
        ctx.error(
            DiagnosticKind::Reference,
            Pos::of(provider_node),
            &f,
            Some(name.as_str()),
            format!("unknown provider {:?}", name.as_str()),
            Some(format!("one of {}", names.join(", "))),
        );
        return None;
    };
    if let Some(n) = m.get_node("file") {
        ctx.error(
            DiagnosticKind::Conflict,
            Pos::of(n),
            &format!("{field}.file"),
            None,
            "a set takes its ranges from file: or from provider:, not both",
            Some("put the other list in a set of its own and name both in from".into()),
        );
    }
    let mut selection = Selection::default();
    let mut asked: Vec<(FilterKey, String, Pos)> = Vec::new();
    for key in [FilterKey::Region, FilterKey::Scope, FilterKey::Service] {
        let Some(n) = m.get_node(key.name()) else {
            continue;
        };
        let f = format!("{field}.{}", key.name());
        if !provider.filters().contains(&key) {
            let allowed: Vec<&str> = provider.filters().iter().map(|k| k.name()).collect();
            ctx.error(
                DiagnosticKind::Conflict,
                Pos::of(n),
                &f,
                None,
                format!("{provider} lists cannot be filtered by {}", key.name()),
                Some(if allowed.is_empty() {
                    format!("{provider} publishes one list: remove {}", key.name())
                } else {
                    format!("{provider} lists are filtered by {}", allowed.join(" and "))
                }),
            );
            continue;
        }
        for (value, pos) in strings(ctx, n, &f) {
            match key {
                FilterKey::Region | FilterKey::Scope => selection.region.push(value.clone()),
                FilterKey::Service => selection.service.push(value.clone()),
            }
            asked.push((key, value, pos));
        }
    }
    let Some(snapshot_node) = m.get_node("snapshot") else {
        ctx.error(
            DiagnosticKind::Structure,
            raw::map_pos(m),
            field,
            None,
            format!("a {provider} list comes from a snapshot file, and this set names none"),
            Some(format!(
                "add snapshot: PATH, written by `airlock ranges fetch {provider} --out PATH`"
            )),
        );
        return None;
    };
    let f = format!("{field}.snapshot");
    let written = raw::scalar(ctx, snapshot_node, &f, "a file path")?;
    let pos = Pos::of(snapshot_node);
    let path = imports::resolve(origin, written.as_str());
    let read = match ctx.snapshots.get(&path) {
        Some(text) => Ok(text.clone()),
        None => import_file::read(&path, max_size),
    };
    let text = match read {
        Ok(text) => text,
        Err(e) => {
            ctx.error(
                DiagnosticKind::Import,
                pos,
                &f,
                Some(written.as_str()),
                e.message(&path),
                e.hint(),
            );
            return None;
        }
    };
    let (snapshot, parsed) = match Snapshot::from_text(&text, &path) {
        Ok(s) => s,
        Err(e) => {
            ctx.error(
                DiagnosticKind::Import,
                pos,
                &f,
                Some(written.as_str()),
                e.to_string(),
                Some(format!(
                    "fetch it again: airlock ranges fetch {provider} --out {}",
                    written.as_str()
                )),
            );
            return None;
        }
    };
    if snapshot.provider != provider {
        ctx.error(
            DiagnosticKind::Import,
            pos,
            &f,
            Some(written.as_str()),
            format!(
                "{} is a snapshot of {}'s list, not {provider}'s",
                path.display(),
                snapshot.provider
            ),
            None,
        );
        return None;
    }
    for (key, value, at) in &asked {
        // Only plain names are quoted back: the document came from the network.
        let known: Vec<String> = ranges::values(&parsed.entries, *key)
            .into_iter()
            .filter(|v| {
                v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b" ._-/".contains(&b))
            })
            .collect();
        if !parsed.entries.iter().any(|e| match key {
            FilterKey::Region | FilterKey::Scope => e.region == *value,
            FilterKey::Service => e.service == *value || e.system_service == *value,
        }) {
            let suggestion = did_you_mean(value, known.iter().map(String::as_str));
            ctx.error(
                DiagnosticKind::Reference,
                *at,
                &format!("{field}.{}", key.name()),
                Some(value),
                format!(
                    "no range of the {provider} snapshot {} (version {}, fetched {}) has {} {value:?}",
                    path.display(),
                    snapshot.version.as_deref().unwrap_or("unknown"),
                    snapshot.fetched_at,
                    key.name()
                ),
                Some(match suggestion {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("{} values there: {}", key.name(), preview(&known)),
                }),
            );
        }
    }
    if ctx.diags.len() != errors_before {
        return None;
    }
    let nets = selection.select(&parsed.entries);
    let source = ProviderSource {
        provider,
        snapshot: path.clone(),
        selection,
    };
    if nets.is_empty() {
        ctx.error(
            DiagnosticKind::Conflict,
            raw::map_pos(m),
            field,
            None,
            format!("the filters together select no range of {}", path.display()),
            Some("each filter matches something, but no range matches them all".into()),
        );
        return None;
    }
    Some((
        nets,
        Import {
            path: written.as_str().to_owned(),
            pos,
            source: Some(source),
        },
    ))
}

/// A scalar or a list of scalars, with their positions.
fn strings(ctx: &mut Ctx, node: &Node, field: &str) -> Vec<(String, Pos)> {
    match node {
        Node::Sequence(s) => s
            .iter()
            .filter_map(|n| {
                raw::scalar(ctx, n, field, "a name").map(|v| (v.as_str().to_owned(), Pos::of(n)))
            })
            .collect(),
        _ => raw::scalar(ctx, node, field, "a name or a list of names")
            .map(|v| vec![(v.as_str().to_owned(), Pos::of(node))])
            .unwrap_or_default(),
    }
}

/// The first few of a long list, for a hint.
fn preview(values: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut text = values
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if values.len() > SHOWN {
        text.push_str(&format!(", ... ({} in all)", values.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crate::policy::{Diagnostic, load};
    use crate::ranges::{Provider, snapshot::Snapshot};

    /// A policy with one provider set (`body`, under `sets.cloud`) next to an AWS
    /// snapshot of the sample document.
    fn policy(body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = Snapshot::new(
            Provider::Aws,
            "https://ip-ranges.amazonaws.com/ip-ranges.json",
            include_str!("../ranges/samples/aws.json").to_owned(),
            None,
            SystemTime::now(),
        )
        .unwrap();
        snapshot.write(&dir.path().join("aws.json")).unwrap();
        let path = dir.path().join("policy.yaml");
        let text = format!(
            "version: 1\nsets:\n  cloud:\n{body}rules:\n  - name: db\n    ports: [5432/tcp]\n    from: [cloud]\n"
        );
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn errors(body: &str) -> Vec<Diagnostic> {
        let (_dir, path) = policy(body);
        match load(&path) {
            Ok(_) => panic!("policy unexpectedly valid"),
            Err(e) => e.diagnostics().to_vec(),
        }
    }

    #[test]
    fn a_provider_set_takes_the_filtered_ranges_of_its_snapshot() {
        let (_dir, path) = policy(
            "    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: [EC2]\n",
        );
        let p = load(&path).expect("valid");
        let cidrs: Vec<String> = p.sets["cloud"]
            .cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["13.37.0.0/16", "15.236.0.0/15", "2a05:d012::/40"]);
        let source = &p.provider_sets["cloud"];
        assert_eq!(source.snapshot, path.parent().unwrap().join("aws.json"));
        assert_eq!(source.selection.region, ["eu-west-3"]);
        assert_eq!(
            crate::policy::imported_files(&std::fs::read_to_string(&path).unwrap(), &path).unwrap(),
            [path.parent().unwrap().join("aws.json")]
        );
    }

    #[test]
    fn a_candidate_snapshot_is_validated_in_place_of_the_file() {
        let (dir, path) = policy(
            "    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: EC2\n",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let candidate = |document: String| {
            let (snapshot, _) = Snapshot::new(
                Provider::Aws,
                "https://ip-ranges.amazonaws.com/ip-ranges.json",
                document,
                None,
                SystemTime::now(),
            )
            .unwrap();
            [(dir.path().join("aws.json"), snapshot.text())]
                .into_iter()
                .collect()
        };
        let sample = include_str!("../ranges/samples/aws.json");
        let grown = sample.replace("15.236.0.0/15", "15.238.0.0/15");
        let p = crate::policy::parse_str_with_snapshots(&text, &path, candidate(grown)).unwrap();
        assert!(
            p.sets["cloud"]
                .cidrs
                .contains(&"15.238.0.0/15".parse().unwrap())
        );
        // eu-west-3 gone from the candidate: the policy is invalid with it.
        let moved = sample.replace("eu-west-3", "eu-west-9");
        let e =
            crate::policy::parse_str_with_snapshots(&text, &path, candidate(moved)).unwrap_err();
        assert!(e.to_string().contains("eu-west-3"), "{e}");
        // The file itself was not read, nor changed.
        assert!(load(&path).is_ok());
    }

    #[test]
    fn misspelt_filters_wrong_keys_and_missing_snapshots_are_errors() {
        let e = errors("    provider: aws\n    snapshot: aws.json\n    region: eu-west-33\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].field.as_str()), (6, "sets.cloud.region"));
        assert!(e[0].message.contains("eu-west-33"), "{e:?}");
        assert_eq!(e[0].hint.as_deref(), Some("did you mean \"eu-west-3\"?"));
        let e = errors("    provider: aws\n    snapshot: aws.json\n    scope: us-west3\n");
        assert!(
            e[0].message.contains("cannot be filtered by scope"),
            "{e:?}"
        );
        let e = errors("    provider: gcp\n    snapshot: aws.json\n");
        assert!(e[0].message.contains("not gcp's"), "{e:?}");
        let e = errors("    provider: azur\n    snapshot: aws.json\n");
        assert!(e[0].message.contains("unknown provider"), "{e:?}");
        let e = errors("    provider: aws\n");
        assert!(e[0].message.contains("names none"), "{e:?}");
        let e = errors("    provider: aws\n    snapshot: missing.json\n");
        assert!(e[0].message.contains("missing.json"), "{e:?}");
        // Each filter matches, together nothing.
        let e = errors(
            "    provider: aws\n    snapshot: aws.json\n    region: us-east-1\n    service: EC2\n",
        );
        assert!(e[0].message.contains("select no range"), "{e:?}");
    }
}
