//! How a failure is told: the error and each of its causes once, on stderr; with
//! `-o json`, also as one JSON object on stdout (docs/schemas/error.schema.json), so
//! a program reading stdout gets JSON whatever happened.

use airlock::policy::PolicyError;
use serde_json::{Value, json};

/// The messages of `error`'s chain, each once. Many errors put their source's text
/// in their own message ("creating /x: No such file or directory") and return it
/// as their source as well; a cause whose text was already said is left out.
pub fn causes(error: &anyhow::Error) -> Vec<String> {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || said.iter().any(|s| s.contains(&message)) {
            continue;
        }
        said.push(message);
    }
    said
}

/// The one line (or, for an invalid policy, the lines) printed after `airlock: `.
pub fn text(error: &anyhow::Error) -> String {
    causes(error).join(": ")
}

/// The JSON form: the same text, the causes one by one, the exit code, and an
/// invalid policy's diagnostics (file, line, field) as `validate -o json` gives them.
pub fn json(error: &anyhow::Error, exit_code: u8) -> Value {
    let diagnostics = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<PolicyError>())
        .map(|p| p.diagnostics().to_vec())
        .unwrap_or_default();
    json!({
        "error": {
            "message": text(error),
            "causes": causes(error),
            "exit_code": exit_code,
            "diagnostics": diagnostics,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("creating /sys/fs/bpf/airlock: {source}")]
    struct Creating {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let error = anyhow::Error::new(Creating { source: io }).context("applying");
        assert_eq!(
            text(&error),
            "applying: creating /sys/fs/bpf/airlock: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_kept() {
        let error = anyhow::anyhow!("inner").context("outer");
        assert_eq!(text(&error), "outer: inner");
        assert_eq!(causes(&error), ["outer", "inner"]);
    }
}
