//! `rules:`: each rule's name, ports and sources.

use std::collections::BTreeMap;

use airlock_common::maps::MAX_RULES;
use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::error::DiagnosticKind;
use super::ports::parse_port_range;
use super::raw::{self, Ctx, Pos};
use super::sets::{self, SetTable};
use super::validate::present;
use super::{PortRange, Rule, SourceGroup};

const RULE_KEYS: &[&str] = &["name", "ports", "from"];

/// Parses the `rules:` list (absent or empty: no rules). Rule `i` becomes bit `i`.
pub(crate) fn parse_rules(
    ctx: &mut Ctx,
    top: &MarkedMappingNode,
    table: &SetTable,
) -> Option<Vec<Rule>> {
    let Some(node) = present(top, "rules") else {
        return Some(Vec::new());
    };
    let s = raw::seq(
        ctx,
        node,
        "rules",
        "rules",
        "[{name: db, ports: [5432/tcp], from: [office]}]",
    )?;
    let errors_before = ctx.diags.len();
    if s.len() > MAX_RULES {
        let extra = &s[MAX_RULES];
        ctx.error(
            DiagnosticKind::Capacity,
            Pos::of(extra),
            &format!("rules[{MAX_RULES}]"),
            None,
            format!("too many rules: {} (the limit is {MAX_RULES})", s.len()),
            Some("merge rules that share sources, or ports that share rules".into()),
        );
    }
    let mut rules = Vec::with_capacity(s.len());
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in s.iter().enumerate() {
        let field = format!("rules[{i}]");
        let Some(m) = raw::map(
            ctx,
            item,
            &field,
            "a rule (a mapping with name, ports and from)",
        ) else {
            continue;
        };
        if let Some(rule) = parse_rule(ctx, m, &field, table, &mut first_line) {
            rules.push(rule);
        }
    }
    (ctx.diags.len() == errors_before).then_some(rules)
}

fn parse_rule(
    ctx: &mut Ctx,
    m: &MarkedMappingNode,
    field: &str,
    table: &SetTable,
    first_line: &mut BTreeMap<String, usize>,
) -> Option<Rule> {
    raw::check_keys(ctx, m, field, RULE_KEYS);
    let line = raw::map_pos(m).line;
    let missing = |ctx: &mut Ctx, key: &str| {
        ctx.error(
            DiagnosticKind::Structure,
            raw::map_pos(m),
            &format!("{field}.{key}"),
            None,
            format!("missing required key {key:?}"),
            None,
        );
    };
    let name = match m.get_node("name") {
        None => {
            missing(ctx, "name");
            None
        }
        Some(n) => {
            let f = format!("{field}.name");
            raw::scalar(ctx, n, &f, "a rule name").and_then(|s| {
                let name = s.as_str();
                let pos = Pos::of(n);
                if !sets::valid_name(name) {
                    ctx.error(
                        DiagnosticKind::Value,
                        pos,
                        &f,
                        Some(name),
                        format!("invalid rule name {name:?}"),
                        Some("use 1 to 63 of A-Z a-z 0-9 _ . -".into()),
                    );
                    None
                } else if let Some(first) = first_line.get(name) {
                    ctx.error(
                        DiagnosticKind::Value,
                        pos,
                        &f,
                        Some(name),
                        format!("duplicate rule name {name:?}"),
                        Some(format!("first used at line {first}")),
                    );
                    None
                } else {
                    first_line.insert(name.to_string(), pos.line);
                    Some(name.to_string())
                }
            })
        }
    };
    let ports = match m.get_node("ports") {
        None => {
            missing(ctx, "ports");
            None
        }
        Some(n) => parse_ports(ctx, n, &format!("{field}.ports")),
    };
    let from = match m.get_node("from") {
        None => {
            missing(ctx, "from");
            None
        }
        Some(n) => {
            let f = format!("{field}.from");
            sets::resolve_group(ctx, n, &f, table, true)
                .filter(|group| sources_present(ctx, n, &f, name.as_deref(), group, table))
        }
    };
    Some(Rule {
        name: name?,
        ports: ports?,
        from: from?,
        line,
    })
}

fn parse_ports(ctx: &mut Ctx, node: &Node, field: &str) -> Option<Vec<PortRange>> {
    let s = raw::seq(ctx, node, field, "ports", "[5432/tcp]")?;
    if s.is_empty() {
        ctx.error(
            DiagnosticKind::Conflict,
            Pos::of(node),
            field,
            None,
            "empty list: a rule must cover at least one port",
            Some("e.g. [5432/tcp]".into()),
        );
        return None;
    }
    let errors_before = ctx.diags.len();
    let mut out = Vec::with_capacity(s.len());
    for (i, item) in s.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(sc) = raw::scalar(ctx, item, &f, "a port like 5432/tcp") else {
            continue;
        };
        match parse_port_range(sc.as_str()) {
            Ok(r) => out.push(r),
            Err((message, hint)) => ctx.error(
                DiagnosticKind::Value,
                Pos::of(item),
                &f,
                Some(sc.as_str()),
                message,
                hint,
            ),
        }
    }
    (ctx.diags.len() == errors_before).then_some(out)
}

/// A rule all of whose sources are empty sets would silently close its ports: an
/// error, naming the imports that came back empty (an empty or truncated download
/// does exactly this). `false` if so (reported).
fn sources_present(
    ctx: &mut Ctx,
    node: &Node,
    field: &str,
    rule: Option<&str>,
    group: &SourceGroup,
    table: &SetTable,
) -> bool {
    // A reference to a set that is itself broken resolves to nothing (its own errors
    // say why): whether the rule would have had sources is then unknown.
    let broken = node.as_sequence().map(|s| s.len()) != Some(group.sets.len());
    if broken || group.sets.iter().any(|set| !set.cidrs.is_empty()) {
        return true;
    }
    let rule = rule.map_or_else(|| field.to_string(), |name| format!("rule {name:?}"));
    let empty: Vec<String> = group
        .sets
        .iter()
        .map(|set| match table.imports.get(&set.name) {
            Some(import) => format!(
                "set {:?} imports {:?} (line {}), which holds no address",
                set.name, import.path, import.pos.line
            ),
            None => format!("set {:?} holds no address", set.name),
        })
        .collect();
    ctx.error(
        DiagnosticKind::Conflict,
        Pos::of(node),
        field,
        None,
        format!("{rule} would allow no source: {}", empty.join("; ")),
        Some("its ports would be closed to everyone; check the imported file (an empty or truncated download?), or remove the rule".into()),
    );
    false
}
