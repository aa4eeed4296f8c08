//! Data-driven policy tests. Every `fixtures/valid/*.yaml` (and every example under
//! `deploy/examples/`) must load; every `fixtures/invalid/*.yaml` must fail with
//! exactly the diagnostics listed in its `# expect:` file, one per line, with the
//! fixture directory stripped from paths.

use std::path::{Path, PathBuf};

use airlock::compile::compile;
use airlock::policy::load;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn valid_fixtures_and_examples_load_and_compile() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let files: Vec<PathBuf> = yaml_files(&fixtures().join("valid"))
        .into_iter()
        .chain(yaml_files(&examples))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let policy = load(&f).unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
        compile(&policy).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn invalid_fixtures_give_exactly_the_expected_diagnostics() {
    let dir = fixtures().join("invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 6);
    let prefix = format!("{}/", dir.display());
    let mut failures = Vec::new();
    for f in files {
        let expect_path = f.with_extension("expect");
        let expected = std::fs::read_to_string(&expect_path).unwrap_or_default();
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        let err = match load(&f) {
            Ok(_) => {
                failures.push(format!("{}: unexpectedly valid", f.display()));
                continue;
            }
            Err(e) => e,
        };
        let actual: Vec<String> = err
            .diagnostics()
            .iter()
            .map(|d| d.to_string().replace(&prefix, ""))
            .collect();
        // Every diagnostic names a file, a line, a column and (except for YAML
        // syntax problems) a field.
        for d in err.diagnostics() {
            assert!(d.line >= 1 && d.column >= 1, "{d}");
        }
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{}",
                f.display(),
                expected.join("\n"),
                actual.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
