//! Policy errors: every problem found in a policy, each with the file, line, column
//! and field it is about, so an operator can fix all of them in one pass.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// What sort of problem a [`Diagnostic`] is, for labels: the `kind` of
/// `-o json`'s diagnostics and of the agent's rejection counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticKind {
    /// Not YAML, or not a mapping at the top.
    Syntax,
    /// A key unknown, missing or of the wrong type (a list where a mapping goes...).
    Structure,
    /// A value malformed or out of range: a CIDR, a port, a name, a duplicate, an
    /// unsupported version.
    Value,
    /// A name that refers to nothing: a set, a region, a provider.
    Reference,
    /// Fields that contradict each other, or leave a rule or set with nothing in it.
    Conflict,
    /// An imported file (`file:`, `snapshot:`) unreadable, too large or with bad lines.
    Import,
    /// More than the kernel maps hold: rules, prefixes.
    Capacity,
}

impl DiagnosticKind {
    pub const ALL: [DiagnosticKind; 7] = [
        DiagnosticKind::Syntax,
        DiagnosticKind::Structure,
        DiagnosticKind::Value,
        DiagnosticKind::Reference,
        DiagnosticKind::Conflict,
        DiagnosticKind::Import,
        DiagnosticKind::Capacity,
    ];

    /// The label, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            DiagnosticKind::Syntax => "syntax",
            DiagnosticKind::Structure => "structure",
            DiagnosticKind::Value => "value",
            DiagnosticKind::Reference => "reference",
            DiagnosticKind::Conflict => "conflict",
            DiagnosticKind::Import => "import",
            DiagnosticKind::Capacity => "capacity",
        }
    }
}

/// One problem in a policy (or in a file it imports).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// What sort of problem it is.
    pub kind: DiagnosticKind,
    /// The file the problem is in, as given (the policy, or an imported range list).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Where in the policy, e.g. `rules[1].from[2]` or `sets.partners.except[0]`;
    /// empty for problems with the document as a whole.
    pub field: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file itself could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The policy was read but is invalid: all problems found, in file order.
    #[error("{}", Lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// What sort of problem, for a label: the kind of the first diagnostic (they
    /// are in file order), `None` when the file could not be read.
    pub fn kind(&self) -> Option<DiagnosticKind> {
        self.diagnostics().first().map(|d| d.kind)
    }

    /// The individual problems (empty for [`PolicyError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid(d) => d,
        }
    }
}

/// Displays diagnostics one per line.
struct Lines<'a>(&'a [Diagnostic]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `word` within a small edit distance, for "did you mean".
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = ((word.chars().count() + 1) / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_hint() {
        let mut d = Diagnostic {
            kind: DiagnosticKind::Value,
            file: "policy.yaml".into(),
            line: 3,
            column: 5,
            field: "rules[0].name".into(),
            value: Some("x y".into()),
            message: "bad".into(),
            hint: None,
        };
        assert_eq!(d.to_string(), "policy.yaml:3:5: rules[0].name: bad");
        d.hint = Some("fix it".into());
        d.field.clear();
        assert_eq!(d.to_string(), "policy.yaml:3:5: bad; fix it");
        let e = PolicyError::Invalid(vec![d.clone(), d]);
        assert_eq!(e.to_string().lines().count(), 2);
    }

    #[test]
    fn kind_names_are_their_json() {
        for kind in DiagnosticKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.name())
            );
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("ofice", ["office", "partners"]),
            Some("office")
        );
        assert_eq!(did_you_mean("xyz", ["office", "partners"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
