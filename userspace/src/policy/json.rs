//! The JSON front end: a policy written as JSON (`airlock validate -f policy.json`),
//! or policy text in JSON (a custom resource's, say). Its keys and shapes are read
//! into the serde types (schema.rs), serde_json giving each error its line and
//! column and serde_path_to_error its field; then the text goes through the same
//! validation as YAML, every problem reported with file, line, column and field
//! (JSON is YAML 1.2 flow syntax, so the YAML loader keeps each value's position).

use std::path::Path;

use super::Policy;
use super::error::{Diagnostic, DiagnosticKind};
use super::schema::PolicyDocument;
use super::validate;

/// Which front end reads a policy text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON for a `.json` file, or text that is a JSON object; YAML otherwise.
    pub(crate) fn of(origin: &Path, text: &str) -> Format {
        let by_name = origin
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let by_content = text.trim_start().starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        if by_name || by_content {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Reads `text` as a JSON policy; all problems, or the policy.
pub(crate) fn validate(text: &str, origin: &Path) -> Result<Policy, Vec<Diagnostic>> {
    document(text, origin)?;
    // Valid JSON has no raw tab inside a string, so this changes only whitespace
    // (and no column): YAML refuses tabs where JSON allows them.
    let text = text.replace('\t', " ");
    validate::validate(&text, origin)
}

/// The document's keys and shapes, or the first problem with them (alone).
pub(crate) fn document(text: &str, origin: &Path) -> Result<PolicyDocument, Vec<Diagnostic>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let (error, field) = match serde_path_to_error::deserialize::<_, PolicyDocument>(&mut de) {
        Ok(document) => match de.end() {
            Ok(()) => return Ok(document),
            Err(error) => (error, String::new()),
        },
        Err(error) => {
            let field = field_of(error.path());
            (error.into_inner(), field)
        }
    };
    Err(vec![diagnostic(&error, field, origin)])
}

/// The path as the YAML front end writes it (`rules[0].ports[1]`, `sets.office`);
/// empty at the top.
fn field_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    field
}

fn diagnostic(error: &serde_json::Error, field: String, origin: &Path) -> Diagnostic {
    use serde_json::error::Category;
    // serde_json's message ends with its position, which the diagnostic carries.
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    let message = match error.classify() {
        Category::Syntax | Category::Eof => format!("JSON syntax error: {message}"),
        Category::Data | Category::Io => message.to_owned(),
    };
    // The path ends at the mapping for a key given twice; the field is the key.
    let duplicate = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    let field = match duplicate {
        Some(key) => super::raw::join(&field, key),
        None => field,
    };
    let kind = match error.classify() {
        serde_json::error::Category::Data => DiagnosticKind::Structure,
        _ => DiagnosticKind::Syntax,
    };
    Diagnostic {
        kind,
        file: origin.to_path_buf(),
        line: error.line().max(1),
        column: error.column().max(1),
        field,
        value: None,
        message,
        hint: None,
    }
}
