//! `file:` imports: a provider's range list, one CIDR or address per line, `#`
//! comments and blank lines allowed. Errors name the imported file and its line,
//! because that is the file the operator has to fix.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::addr::parse_cidr;
use super::raw::{Ctx, Pos};

/// Where an imported path is resolved from: the policy file's directory.
pub(crate) fn resolve(origin: &Path, relative: &str) -> PathBuf {
    match origin.parent() {
        Some(dir) => dir.join(relative),
        None => PathBuf::from(relative),
    }
}

/// Reads and parses the list `relative` (as written at `pos` of field `field`).
/// Problems are recorded in `ctx`; the good lines are returned either way so later
/// checks (e.g. `except` containment) don't produce follow-on noise.
pub(crate) fn import(
    ctx: &mut Ctx,
    origin: &Path,
    relative: &str,
    pos: Pos,
    field: &str,
) -> Vec<IpNet> {
    let path = resolve(origin, relative);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                pos,
                field,
                Some(relative),
                format!("cannot read imported file {}: {e}", path.display()),
                Some("the path is relative to the policy file's directory".to_string()),
            );
            return Vec::new();
        }
    };
    parse_list(ctx, pos, &path, &text, field)
}

/// Parses the text of a range list read from `path`.
pub(crate) fn parse_list(
    ctx: &mut Ctx,
    anchor: Pos,
    path: &Path,
    text: &str,
    field: &str,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let mut words = content.split_whitespace();
        let Some(word) = words.next() else { continue };
        let column = |w: &str| {
            // Byte offset of the word inside the line (it is a subslice of it).
            w.as_ptr() as usize - line.as_ptr() as usize + 1
        };
        let pos = Pos {
            line: index + 1,
            column: column(word),
        };
        if let Some(extra) = words.next() {
            ctx.error_in(
                anchor,
                path.to_path_buf(),
                Pos {
                    line: index + 1,
                    column: column(extra),
                },
                field,
                Some(extra),
                format!("unexpected {extra:?} after {word:?}: one CIDR or address per line"),
                None,
            );
            continue;
        }
        match parse_cidr(word) {
            Ok(net) => out.push(net),
            Err(p) => ctx.error_in(
                anchor,
                path.to_path_buf(),
                pos,
                field,
                Some(word),
                p.message,
                p.hint,
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blank_lines_and_reports_positions() {
        let mut ctx = Ctx::new(Path::new("p.yaml"));
        let text = "# provider ranges\n\n10.0.0.0/8   # main\n  192.0.2.1/24\n2001:db8::/32\n1.2.3.4 5.6.7.8\n";
        let nets = parse_list(
            &mut ctx,
            Pos::default(),
            Path::new("ranges.txt"),
            text,
            "sets.p.file",
        );
        assert_eq!(nets.len(), 2);
        assert_eq!(ctx.diags.len(), 2);
        let d = &ctx.diags[0];
        assert_eq!(
            d.to_string(),
            "ranges.txt:4:3: sets.p.file: 192.0.2.1/24 has host bits set (0.0.0.1 outside the /24 mask); did you mean 192.0.2.0/24?"
        );
        assert_eq!((ctx.diags[1].line, ctx.diags[1].column), (6, 9));
    }

    #[test]
    fn resolves_relative_to_policy_dir() {
        assert_eq!(
            resolve(Path::new("/etc/airlock/policy.yaml"), "r.txt"),
            PathBuf::from("/etc/airlock/r.txt")
        );
        assert_eq!(
            resolve(Path::new("policy.yaml"), "r.txt"),
            PathBuf::from("r.txt")
        );
        assert_eq!(
            resolve(Path::new("a/p.yaml"), "/abs.txt"),
            PathBuf::from("/abs.txt")
        );
    }
}
