//! `sets:` definitions and set references (`management`, `deny`, `from`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};

use super::addr::{looks_like_address, parse_cidr};
use super::error::{DiagnosticKind, did_you_mean};
use super::raw::{self, Ctx, Pos};
use super::{AddrSet, SourceGroup, import_file, imports, provider_sets};
use crate::{ranges::ProviderSource, regions};

/// The named sets of a policy.
#[derive(Default)]
pub(crate) struct SetTable {
    /// Sets that validated.
    pub defined: BTreeMap<String, Arc<AddrSet>>,
    /// Every name written under `sets`, valid or not: a reference to a broken set is
    /// not reported again as "unknown".
    pub names: BTreeSet<String>,
    /// The `file:` import of each valid set that has one.
    pub imports: BTreeMap<String, Import>,
    /// The provider list of each valid set that takes one.
    pub providers: BTreeMap<String, ProviderSource>,
}

/// A set's `file:` import, for errors about what it yielded.
pub(crate) struct Import {
    /// The path as written.
    pub path: String,
    /// Where `file:` is written.
    pub pos: Pos,
    /// For a provider set: its snapshot and filter.
    pub source: Option<ProviderSource>,
}

/// Whether `name` is a valid rule or set name: [A-Za-z0-9_.-], 1..=63 bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses the `sets:` mapping.
pub(crate) fn parse_sets(ctx: &mut Ctx, node: &Node, origin: &Path) -> SetTable {
    let mut table = SetTable::default();
    let Some(m) = raw::map(ctx, node, "sets", "a mapping of set names to CIDR lists") else {
        return table;
    };
    for (key, value) in m.iter() {
        let name = key.as_str();
        let field = format!("sets.{name}");
        table.names.insert(name.to_string());
        if !check_set_name(ctx, key, &field) {
            continue;
        }
        let mut import = None;
        if let Some(set) = parse_set(ctx, name, value, &field, origin, &mut import) {
            table.defined.insert(name.to_string(), Arc::new(set));
            if let Some(mut import) = import {
                if let Some(source) = import.source.take() {
                    table.providers.insert(name.to_string(), source);
                }
                table.imports.insert(name.to_string(), import);
            }
        }
    }
    table
}

fn check_set_name(ctx: &mut Ctx, key: &MarkedScalarNode, field: &str) -> bool {
    let name = key.as_str();
    let pos = Pos::of_span(key.span());
    if looks_like_address(name) || name.parse::<std::net::IpAddr>().is_ok() {
        ctx.error(
            DiagnosticKind::Value,
            pos,
            field,
            Some(name),
            format!("set name {name:?} looks like an address"),
            Some(
                "set names must not be addresses, or references to them would be ambiguous".into(),
            ),
        );
        false
    } else if !valid_name(name) {
        ctx.error(
            DiagnosticKind::Value,
            pos,
            field,
            Some(name),
            format!("invalid set name {name:?}"),
            Some("use 1 to 63 of A-Z a-z 0-9 _ . -".into()),
        );
        false
    } else if regions::find(name).is_some() {
        ctx.error(
            DiagnosticKind::Conflict,
            pos,
            field,
            Some(name),
            format!("set name {name:?} shadows the built-in region of the same name"),
            Some("pick another name; reference the region directly to use it".into()),
        );
        false
    } else {
        true
    }
}

/// One set definition: a plain CIDR list, or `{cidrs, except, file, max_size}`, or a
/// provider's list (`provider`, `snapshot`, filters: provider_sets.rs).
/// `import` receives its `file:` import, if it has one.
fn parse_set(
    ctx: &mut Ctx,
    name: &str,
    node: &Node,
    field: &str,
    origin: &Path,
    import: &mut Option<Import>,
) -> Option<AddrSet> {
    let errors_before = ctx.diags.len();
    let mut set = AddrSet {
        name: name.to_string(),
        cidrs: Vec::new(),
        except: Vec::new(),
    };
    match node {
        Node::Sequence(s) => {
            if s.is_empty() {
                empty_set(ctx, Pos::of(node), field, name);
            }
            set.cidrs = cidr_list(ctx, s, field);
        }
        Node::Mapping(m) => *import = parse_set_mapping(ctx, &mut set, m, field, origin),
        Node::Scalar(_) => {
            ctx.error(
                DiagnosticKind::Structure,
                Pos::of(node),
                field,
                node.as_scalar().map(|s| s.as_str()),
                format!(
                    "expected a list of CIDRs or a mapping with cidrs/except/file/max_size or provider/snapshot, found {}",
                    raw::describe(node)
                ),
                Some(format!("write it as {field}: [192.0.2.0/24]")),
            );
        }
    }
    (ctx.diags.len() == errors_before).then_some(set)
}

fn empty_set(ctx: &mut Ctx, pos: Pos, field: &str, name: &str) {
    ctx.error(
        DiagnosticKind::Conflict,
        pos,
        field,
        None,
        format!("set {name:?} has no addresses"),
        Some("list at least one CIDR, or import a file with `file:`".into()),
    );
}

fn parse_set_mapping(
    ctx: &mut Ctx,
    set: &mut AddrSet,
    m: &MarkedMappingNode,
    field: &str,
    origin: &Path,
) -> Option<Import> {
    let mut keys = vec!["cidrs", "except", "file", "max_size"];
    keys.extend_from_slice(provider_sets::KEYS);
    raw::check_keys(ctx, m, field, &keys);
    let errors_before = ctx.diags.len();
    let cidrs_node = m.get_node("cidrs");
    let file_node = m.get_node("file");
    let provider_node = m.get_node("provider");
    let mut import = None;
    if let Some(n) = cidrs_node {
        let f = format!("{field}.cidrs");
        if let Some(s) = raw::seq(ctx, n, &f, "CIDRs", "[192.0.2.0/24]") {
            set.cidrs = cidr_list(ctx, s, &f);
        }
    }
    let max_size = parse_max_size(
        ctx,
        m,
        field,
        file_node.is_some() || provider_node.is_some(),
    );
    if provider_node.is_some() {
        if let Some(max_size) = max_size
            && let Some((nets, snapshot)) =
                provider_sets::provider_ranges(ctx, m, field, origin, max_size)
        {
            set.cidrs.extend(nets);
            import = Some(snapshot);
        }
    } else if let (Some(n), Some(max_size)) = (file_node, max_size) {
        let f = format!("{field}.file");
        if let Some(s) = raw::scalar(ctx, n, &f, "a file path") {
            let imported = imports::import(ctx, origin, s.as_str(), Pos::of(n), &f, max_size);
            import = Some(Import {
                path: s.as_str().to_string(),
                pos: Pos::of(n),
                source: None,
            });
            // Taken as is when it is the whole list: a million-line import is not
            // copied again.
            if set.cidrs.is_empty() {
                set.cidrs = imported;
            } else {
                set.cidrs.extend(imported);
            }
        }
    }
    if cidrs_node.is_none() && file_node.is_none() && provider_node.is_none() {
        empty_set(ctx, raw::map_pos(m), field, &set.name);
    }
    if let Some(n) = m.get_node("except") {
        let f = format!("{field}.except");
        if let Some(s) = raw::seq(ctx, n, &f, "CIDRs", "[192.0.2.128/25]") {
            let except = cidr_list(ctx, s, &f);
            // Containment is only meaningful once the cidrs themselves are sound.
            if ctx.diags.len() == errors_before {
                check_except_inside(ctx, s, &f, &set.cidrs, &except);
            }
            set.except = except;
        }
    }
    import
}

/// `max_size:` (the import's size limit), or the default; `None` if it is invalid.
fn parse_max_size(
    ctx: &mut Ctx,
    m: &MarkedMappingNode,
    field: &str,
    has_file: bool,
) -> Option<u64> {
    let Some(n) = m.get_node("max_size") else {
        return Some(import_file::DEFAULT_MAX_SIZE);
    };
    let f = format!("{field}.max_size");
    let s = raw::scalar(ctx, n, &f, "a size such as 512MiB")?;
    if !has_file {
        ctx.error(
            DiagnosticKind::Conflict,
            Pos::of(n),
            &f,
            Some(s.as_str()),
            "max_size limits a `file:` import, and this set has none",
            Some("remove max_size, or add file:".into()),
        );
        return None;
    }
    match import_file::parse_size(s.as_str()) {
        Ok(size) => Some(size),
        Err((message, hint)) => {
            ctx.error(
                DiagnosticKind::Value,
                Pos::of(n),
                &f,
                Some(s.as_str()),
                message,
                hint,
            );
            None
        }
    }
}

/// Kubernetes ipBlock semantics: every `except` must lie inside one of the `cidrs`;
/// anything else is almost certainly a mistake (it would carve nothing).
fn check_except_inside(
    ctx: &mut Ctx,
    nodes: &MarkedSequenceNode,
    field: &str,
    cidrs: &[IpNet],
    except: &[IpNet],
) {
    // Hash the cidrs and probe each supernet of an except: O(128) per except, so a
    // million imported cidrs cost nothing extra per except.
    let cidr_set: HashSet<IpNet> = cidrs.iter().copied().collect();
    let inside = |e: &IpNet| {
        (0..=e.prefix_len()).any(|len| {
            IpNet::new(e.addr(), len)
                .map(|n| cidr_set.contains(&n.trunc()))
                .unwrap_or(false)
        })
    };
    for (i, (e, node)) in except.iter().zip(nodes.iter()).enumerate() {
        if !inside(e) {
            let text = node.as_scalar().map(|s| s.as_str().to_string());
            ctx.error(
                DiagnosticKind::Conflict,
                Pos::of(node),
                &format!("{field}[{i}]"),
                text.as_deref(),
                format!("except entry {e} is not inside any of the set's cidrs"),
                Some("an except carves a hole in a cidr of the same set (Kubernetes ipBlock semantics)".into()),
            );
        }
    }
}

/// A list of CIDRs; bad entries are reported and skipped.
fn cidr_list(ctx: &mut Ctx, s: &MarkedSequenceNode, field: &str) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(s.len());
    for (i, item) in s.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(sc) = raw::scalar(ctx, item, &f, "a CIDR or address") else {
            continue;
        };
        match parse_cidr(sc.as_str()) {
            Ok(net) => out.push(net),
            Err(p) => ctx.error(
                DiagnosticKind::Value,
                Pos::of(item),
                &f,
                Some(sc.as_str()),
                p.message,
                p.hint,
            ),
        }
    }
    out
}

/// Resolves a list of set references (`management`, `deny`, `rules[i].from`).
/// Returns `None` if anything in it was wrong (already reported).
pub(crate) fn resolve_group(
    ctx: &mut Ctx,
    node: &Node,
    field: &str,
    table: &SetTable,
    require_non_empty: bool,
) -> Option<SourceGroup> {
    let s = raw::seq(
        ctx,
        node,
        field,
        "sets, regions or CIDRs",
        "[office, airbyte-us]",
    )?;
    if require_non_empty && s.is_empty() {
        ctx.error(
            DiagnosticKind::Conflict,
            Pos::of(node),
            field,
            None,
            "empty list: a rule must allow at least one source",
            Some("name a set, a region or a CIDR, or delete the rule".into()),
        );
        return None;
    }
    let errors_before = ctx.diags.len();
    let mut group = SourceGroup::default();
    for (i, item) in s.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(sc) = raw::scalar(ctx, item, &f, "a set name, region or CIDR") else {
            continue;
        };
        if let Some(set) = resolve_ref(ctx, sc, &f, table) {
            group.sets.push(set);
        }
    }
    (ctx.diags.len() == errors_before).then_some(group)
}

fn resolve_ref(
    ctx: &mut Ctx,
    sc: &MarkedScalarNode,
    field: &str,
    table: &SetTable,
) -> Option<Arc<AddrSet>> {
    let text = sc.as_str();
    let pos = Pos::of_span(sc.span());
    if let Some(set) = table.defined.get(text) {
        return Some(Arc::clone(set));
    }
    if table.names.contains(text) {
        // Defined but invalid: its own errors say why.
        return None;
    }
    if let Some(region) = regions::find(text) {
        return Some(Arc::new(AddrSet {
            name: region.name.clone(),
            cidrs: region.cidrs.clone(),
            except: Vec::new(),
        }));
    }
    if looks_like_address(text) {
        return match parse_cidr(text) {
            Ok(net) => Some(Arc::new(AddrSet {
                name: text.to_string(),
                cidrs: vec![net],
                except: Vec::new(),
            })),
            Err(p) => {
                ctx.error(
                    DiagnosticKind::Value,
                    pos,
                    field,
                    Some(text),
                    p.message,
                    p.hint,
                );
                None
            }
        };
    }
    let known: Vec<&str> = table.names.iter().map(String::as_str).collect();
    let region_names = regions::names();
    let sets_text = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    let hint = did_you_mean(
        text,
        known.iter().copied().chain(region_names.iter().copied()),
    )
    .map(|s| format!("did you mean {s:?}?"));
    ctx.error(
        DiagnosticKind::Reference,
        pos,
        field,
        Some(text),
        format!(
            "unknown set or region {text:?} (known sets: {sets_text}; regions: {})",
            region_names.join(", ")
        ),
        hint,
    );
    None
}
