//! Walking marked-yaml nodes by hand: every value keeps its line and column, so each
//! diagnostic can point at the exact spot. Helpers here report type errors and
//! unknown keys and return `None`, letting the caller carry on and find more errors.

use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Node, Span};

use super::error::{Diagnostic, DiagnosticKind, did_you_mean};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) fn of_span(span: &Span) -> Pos {
        span.start()
            .map(|m| Pos {
                line: m.line(),
                column: m.column(),
            })
            .unwrap_or(Pos { line: 1, column: 1 })
    }

    pub(crate) fn of(node: &Node) -> Pos {
        Pos::of_span(node.span())
    }
}

/// Collects diagnostics for one policy (and the files it imports).
pub(crate) struct Ctx {
    /// The policy file, as given.
    pub file: PathBuf,
    pub diags: Vec<Diagnostic>,
    /// For each diagnostic, the position in the policy file it belongs to (for an
    /// imported file: where the import is written), so they can be put in file order.
    anchors: Vec<Pos>,
    /// Snapshot texts to read instead of the files at these (resolved) paths: a
    /// refreshed list is validated with the policy before it is written.
    pub snapshots: std::collections::HashMap<PathBuf, String>,
}

impl Ctx {
    pub(crate) fn new(file: &Path) -> Ctx {
        Ctx {
            file: file.to_path_buf(),
            diags: Vec::new(),
            anchors: Vec::new(),
            snapshots: std::collections::HashMap::new(),
        }
    }

    /// The diagnostics in policy-file order (the walk visits some keys out of order,
    /// e.g. `version` after unknown keys); ties keep the order they were found in.
    pub(crate) fn finish(self) -> Vec<Diagnostic> {
        let mut pairs: Vec<(Pos, Diagnostic)> = self.anchors.into_iter().zip(self.diags).collect();
        pairs.sort_by_key(|(p, _)| (p.line, p.column));
        pairs.into_iter().map(|(_, d)| d).collect()
    }

    /// Records a problem in the policy file itself.
    pub(crate) fn error(
        &mut self,
        kind: DiagnosticKind,
        pos: Pos,
        field: &str,
        value: Option<&str>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let file = self.file.clone();
        self.error_in(kind, pos, file, pos, field, value, message, hint);
    }

    /// Records a problem in another file (an imported range list) imported at
    /// `anchor` of the policy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn error_in(
        &mut self,
        kind: DiagnosticKind,
        anchor: Pos,
        file: PathBuf,
        pos: Pos,
        field: &str,
        value: Option<&str>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.anchors.push(anchor);
        self.diags.push(Diagnostic {
            kind,
            file,
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            value: value.map(str::to_string),
            message: message.into(),
            hint,
        });
    }
}

/// YAML's spellings of "no value" (only when unquoted).
pub(crate) fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// How a node looks, for "expected X, found Y" messages.
pub(crate) fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) if is_null(s) => "nothing".to_string(),
        Node::Scalar(s) => format!("the value {:?}", s.as_str()),
        Node::Sequence(_) => "a list".to_string(),
        Node::Mapping(_) => "a mapping".to_string(),
    }
}

fn node_value(node: &Node) -> Option<String> {
    match node {
        Node::Scalar(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The node as a list, or an error naming what was expected.
pub(crate) fn seq<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    field: &str,
    what: &str,
    example: &str,
) -> Option<&'n MarkedSequenceNode> {
    match node {
        Node::Sequence(s) => Some(s),
        _ => {
            let value = node_value(node);
            ctx.error(
                DiagnosticKind::Structure,
                Pos::of(node),
                field,
                value.as_deref(),
                format!("expected a list of {what}, found {}", describe(node)),
                Some(format!("write it as a list, e.g. {field}: {example}")),
            );
            None
        }
    }
}

/// The node as a mapping, or an error.
pub(crate) fn map<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    field: &str,
    what: &str,
) -> Option<&'n MarkedMappingNode> {
    match node {
        Node::Mapping(m) => Some(m),
        _ => {
            let value = node_value(node);
            ctx.error(
                DiagnosticKind::Structure,
                Pos::of(node),
                field,
                value.as_deref(),
                format!("expected {what}, found {}", describe(node)),
                None,
            );
            None
        }
    }
}

/// The node as a non-null scalar, or an error.
pub(crate) fn scalar<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    field: &str,
    what: &str,
) -> Option<&'n MarkedScalarNode> {
    match node {
        Node::Scalar(s) if !is_null(s) => Some(s),
        _ => {
            let value = node_value(node);
            ctx.error(
                DiagnosticKind::Structure,
                Pos::of(node),
                field,
                value.as_deref(),
                format!("expected {what}, found {}", describe(node)),
                None,
            );
            None
        }
    }
}

/// Reports every key of `m` not in `allowed`, suggesting the nearest known key.
pub(crate) fn check_keys(ctx: &mut Ctx, m: &MarkedMappingNode, prefix: &str, allowed: &[&str]) {
    for key in m.keys() {
        let k = key.as_str();
        if allowed.contains(&k) {
            continue;
        }
        let field = join(prefix, k);
        let mut hint = format!("known keys here: {}", allowed.join(", "));
        if let Some(s) = did_you_mean(k, allowed.iter().copied()) {
            hint = format!("did you mean {s:?}? ({hint})");
        }
        ctx.error(
            DiagnosticKind::Structure,
            Pos::of_span(key.span()),
            &field,
            Some(k),
            format!("unknown key {k:?}"),
            Some(hint),
        );
    }
}

/// Where a mapping starts, for "missing key" errors: its first key (the mapping's
/// own start mark can point past it).
pub(crate) fn map_pos(m: &MarkedMappingNode) -> Pos {
    m.keys()
        .next()
        .map(|k| Pos::of_span(k.span()))
        .unwrap_or_else(|| Pos::of_span(m.span()))
}

/// `prefix.key`, or just `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
