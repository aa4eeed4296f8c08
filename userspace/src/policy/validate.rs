//! Top-level validation: walks the document, records every problem, and builds the
//! [`Policy`] only if there were none.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoadError, LoaderOptions, Node};

use super::error::{Diagnostic, DiagnosticKind};
use super::raw::{self, Ctx, Pos};
use super::rules::parse_rules;
use super::sets::{self, SetTable};
use super::{DefaultAction, Interfaces, Mode, Policy, SourceGroup, XdpMode};

const TOP_KEYS: &[&str] = &[
    "version",
    "interfaces",
    "mode",
    "default",
    "xdp_mode",
    "management",
    "sets",
    "deny",
    "rules",
];

/// Parses and validates `text`; all problems, or the policy.
pub(crate) fn validate(text: &str, origin: &Path) -> Result<Policy, Vec<Diagnostic>> {
    validate_with(text, origin, std::collections::HashMap::new())
}

/// [`validate`], reading `snapshots` (resolved path to text) instead of those files.
pub(crate) fn validate_with(
    text: &str,
    origin: &Path,
    snapshots: std::collections::HashMap<std::path::PathBuf, String>,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut ctx = Ctx::new(origin);
    ctx.snapshots = snapshots;
    let root = match parse_yaml(text) {
        Ok(n) => n,
        Err((pos, message, hint)) => {
            ctx.error(DiagnosticKind::Syntax, pos, "", None, message, hint);
            return Err(ctx.finish());
        }
    };
    let Some(top) = root.as_mapping() else {
        ctx.error(
            DiagnosticKind::Syntax,
            Pos::of(&root),
            "",
            None,
            "the policy must be a YAML mapping",
            None,
        );
        return Err(ctx.finish());
    };
    raw::check_keys(&mut ctx, top, "", TOP_KEYS);
    check_version(&mut ctx, top);
    let interfaces = parse_interfaces(&mut ctx, top);
    let mode = parse_choice(
        &mut ctx,
        top,
        "mode",
        &[("enforce", Mode::Enforce), ("monitor", Mode::Monitor)],
    );
    let default = parse_choice(
        &mut ctx,
        top,
        "default",
        &[("pass", DefaultAction::Pass), ("drop", DefaultAction::Drop)],
    );
    let xdp_mode = parse_choice(
        &mut ctx,
        top,
        "xdp_mode",
        &[
            ("auto", XdpMode::Auto),
            ("native", XdpMode::Native),
            ("generic", XdpMode::Generic),
        ],
    );
    let table = match present(top, "sets") {
        Some(n) => sets::parse_sets(&mut ctx, n, origin),
        None => SetTable::default(),
    };
    let management = optional_group(&mut ctx, top, "management", &table);
    let deny = optional_group(&mut ctx, top, "deny", &table);
    let rules = parse_rules(&mut ctx, top, &table);

    if !ctx.diags.is_empty() {
        return Err(ctx.finish());
    }
    let (
        Some(interfaces),
        Some(mode),
        Some(default),
        Some(xdp_mode),
        Some(management),
        Some(deny),
        Some(rules),
    ) = (interfaces, mode, default, xdp_mode, management, deny, rules)
    else {
        // Every None above comes with a diagnostic; this is only a safety net.
        ctx.error(
            DiagnosticKind::Structure,
            Pos::of(&root),
            "",
            None,
            "invalid policy",
            None,
        );
        return Err(ctx.finish());
    };
    // Whether it fits the kernel maps is the compiler's to say (the pipeline turns
    // its capacity errors into diagnostics of this file).
    Ok(Policy {
        origin: origin.to_path_buf(),
        interfaces,
        mode,
        default,
        xdp_mode,
        management,
        deny,
        rules,
        sets: table.defined,
        provider_sets: table.providers,
    })
}

/// YAML syntax problems stop everything: there is no tree to walk.
pub(crate) fn parse_yaml(text: &str) -> Result<Node, (Pos, String, Option<String>)> {
    if let Some(line) = second_document(text) {
        // The loader reads only the first document; a second one would be ignored
        // silently, which is never what the author meant.
        return Err((
            Pos { line, column: 1 },
            "a second YAML document starts here; a policy file holds exactly one".into(),
            Some("remove the `---` separator and merge the documents".into()),
        ));
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    // marked-yaml has `unreachable!()`s on some odd inputs; a policy typo must never
    // take down the agent, so treat a panic as a syntax error (and keep its message,
    // which would read like a crash of airlock, off stderr).
    let result = quietly(|| {
        std::panic::catch_unwind(|| marked_yaml::parse_yaml_with_options(0, text, options))
    });
    let pos = |m: &marked_yaml::Marker| Pos {
        line: m.line(),
        column: m.column(),
    };
    match result {
        Ok(Ok(node)) => Ok(node),
        Err(_) => Err((Pos { line: 1, column: 1 }, "unparseable YAML".into(), None)),
        Ok(Err(e)) => Err(match e {
            LoadError::ScanError(m, se) => {
                (pos(&m), format!("YAML syntax error: {}", se.info()), None)
            }
            LoadError::DuplicateKey(inner) => {
                let first = Pos::of_span(inner.prev_key.span());
                (
                    Pos::of_span(inner.key.span()),
                    format!("duplicate key {:?}", inner.key.as_str()),
                    Some(format!("first given at line {}", first.line)),
                )
            }
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
                pos(&m),
                "the policy must be a YAML mapping (version: 1, interfaces: ..., rules: ...)"
                    .into(),
                None,
            ),
            LoadError::UnexpectedAnchor(m) => (
                pos(&m),
                "YAML anchors and aliases are not supported".into(),
                None,
            ),
            LoadError::MappingKeyMustBeScalar(m) => {
                (pos(&m), "mapping keys must be plain strings".into(), None)
            }
            LoadError::UnexpectedTag(m) => (pos(&m), "YAML tags are not supported".into(), None),
        }),
    }
}

static YAML_PANICS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's panic messages logged at debug level instead of
/// printed, and counted ([`yaml_panics_caught`]). The hook is the process's, but
/// the quiet is per thread: other threads' panics print as ever.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                YAML_PANICS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%info, "the YAML library panicked: reported as unparseable YAML");
            } else {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let out = f();
    QUIET.with(|q| q.set(false));
    out
}

/// How many panics of the YAML library were turned into syntax errors (for the
/// fuzzer, which must see them although nothing is printed).
#[doc(hidden)]
pub fn yaml_panics_caught() -> u64 {
    YAML_PANICS.load(Ordering::Relaxed)
}

/// The line of a `---` (or `...`) marker that follows content, if any.
fn second_document(text: &str) -> Option<usize> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker =
            line == "---" || line.starts_with("--- ") || line == "..." || line.starts_with("... ");
        if is_marker && seen_content {
            return Some(i + 1);
        }
        let t = line.trim();
        if !is_marker && !t.is_empty() && !t.starts_with('#') {
            seen_content = true;
        }
    }
    None
}

/// An optional key's value; a key with no value (`rules:` with everything below it
/// commented out) counts as absent.
pub(crate) fn present<'n>(top: &'n MarkedMappingNode, key: &str) -> Option<&'n Node> {
    top.get_node(key)
        .filter(|n| !matches!(n, Node::Scalar(s) if raw::is_null(s)))
}

fn check_version(ctx: &mut Ctx, top: &MarkedMappingNode) {
    let Some(node) = top.get_node("version") else {
        ctx.error(
            DiagnosticKind::Structure,
            raw::map_pos(top),
            "version",
            None,
            "missing required key \"version\"",
            Some("start the policy with `version: 1`".into()),
        );
        return;
    };
    if let Some(s) = raw::scalar(ctx, node, "version", "a version number")
        && s.as_str() != "1"
    {
        ctx.error(
            DiagnosticKind::Value,
            Pos::of(node),
            "version",
            Some(s.as_str()),
            format!("unsupported policy version {:?}", s.as_str()),
            Some("this airlock understands version 1".into()),
        );
    }
}

/// Linux `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

fn parse_interfaces(ctx: &mut Ctx, top: &MarkedMappingNode) -> Option<Interfaces> {
    // The command line's --iface overrides the list, so it may be left out; applying
    // such a policy without --iface is refused then (`interfaces::resolve`).
    let Some(node) = top.get_node("interfaces") else {
        return Some(Interfaces::Unspecified);
    };
    let s = raw::seq(ctx, node, "interfaces", "interface names", "[eth0]")?;
    if s.is_empty() {
        ctx.error(
            DiagnosticKind::Value,
            Pos::of(node),
            "interfaces",
            None,
            "no interfaces listed",
            Some("e.g. [eth0], or [auto]".into()),
        );
        return None;
    }
    let errors_before = ctx.diags.len();
    let mut names: Vec<String> = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, item) in s.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        let Some(sc) = raw::scalar(ctx, item, &f, "an interface name") else {
            continue;
        };
        let name = sc.as_str();
        let pos = Pos::of(item);
        if name == "auto" && s.len() > 1 {
            ctx.error(
                DiagnosticKind::Conflict,
                pos,
                &f,
                Some(name),
                "\"auto\" cannot be combined with interface names",
                Some("use either [auto] or a list of names".into()),
            );
        } else if !valid_ifname(name) {
            ctx.error(
                DiagnosticKind::Value,
                pos,
                &f,
                Some(name),
                format!("invalid interface name {name:?}"),
                Some("Linux interface names are 1-15 bytes without '/', ':' or spaces".into()),
            );
        } else if let Some(line) = first_line.get(name) {
            ctx.error(
                DiagnosticKind::Value,
                pos,
                &f,
                Some(name),
                format!("interface {name:?} listed twice"),
                Some(format!("first at line {line}")),
            );
        } else {
            first_line.insert(name.to_string(), pos.line);
            names.push(name.to_string());
        }
    }
    if ctx.diags.len() != errors_before {
        None
    } else if names == ["auto"] {
        Some(Interfaces::Auto)
    } else {
        Some(Interfaces::Named(names))
    }
}

fn parse_choice<T: Copy + Default>(
    ctx: &mut Ctx,
    top: &MarkedMappingNode,
    key: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let Some(node) = top.get_node(key) else {
        return Some(T::default());
    };
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let s = raw::scalar(ctx, node, key, &format!("one of {}", names.join(", ")))?;
    match choices.iter().find(|(n, _)| *n == s.as_str()) {
        Some((_, v)) => Some(*v),
        None => {
            ctx.error(
                DiagnosticKind::Value,
                Pos::of(node),
                key,
                Some(s.as_str()),
                format!(
                    "invalid {key} {:?} (expected {})",
                    s.as_str(),
                    names.join(" or ")
                ),
                None,
            );
            None
        }
    }
}

fn optional_group(
    ctx: &mut Ctx,
    top: &MarkedMappingNode,
    key: &str,
    table: &SetTable,
) -> Option<SourceGroup> {
    match present(top, key) {
        None => Some(SourceGroup::default()),
        Some(n) => sets::resolve_group(ctx, n, key, table, false),
    }
}

#[cfg(test)]
mod quiet_tests {
    use super::*;

    #[test]
    fn a_panic_while_quiet_is_counted_and_caught() {
        let before = yaml_panics_caught();
        let caught = quietly(|| std::panic::catch_unwind(|| panic!("a YAML library bug")));
        assert!(caught.is_err());
        assert_eq!(yaml_panics_caught(), before + 1);
        // Quiet ends with the call.
        assert!(!QUIET.with(Cell::get));
    }
}
