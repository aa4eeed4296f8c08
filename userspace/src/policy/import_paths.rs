//! Which files a policy imports, read from its text even when the policy is
//! invalid: the agent watches them, so fixing a broken import is noticed.

use std::path::{Path, PathBuf};

use marked_yaml::Node;

/// The `file:` of every set, resolved as the import itself resolves it (relative to
/// the policy's directory), in order, without duplicates. `None` when the text is
/// not YAML at all.
pub fn imported_files(text: &str, origin: &Path) -> Option<Vec<PathBuf>> {
    let root = super::validate::parse_yaml(text).ok()?;
    let mut files: Vec<PathBuf> = Vec::new();
    let sets = root.as_mapping().and_then(|top| top.get_mapping("sets"));
    for (_, set) in sets.into_iter().flat_map(|sets| sets.iter()) {
        // A provider set's snapshot is watched like a `file:` import.
        let file = match set {
            Node::Mapping(m) => m.get_scalar("file").or_else(|| m.get_scalar("snapshot")),
            _ => None,
        };
        if let Some(file) = file {
            let path = super::imports::resolve(origin, file.as_str());
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    Some(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_found_even_in_an_invalid_policy() {
        let text = "version: 7\nsets:\n  a: {file: ranges/a.txt}\n  b: [192.0.2.0/24]\n  c:\n    file: /abs/c.txt\n    except: [nonsense]\n  d: {file: ranges/a.txt}\nrules: oops\n";
        assert_eq!(
            imported_files(text, Path::new("/etc/airlock/policy.yaml")).unwrap(),
            [
                PathBuf::from("/etc/airlock/ranges/a.txt"),
                PathBuf::from("/abs/c.txt")
            ]
        );
        assert_eq!(
            imported_files("version: 1\n", Path::new("p.yaml")).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(imported_files("a: [\n", Path::new("p.yaml")), None);
    }
}
