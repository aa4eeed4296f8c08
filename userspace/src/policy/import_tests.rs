//! `file:` imports through the whole policy: files that are not range lists, size
//! limits, and rules left with no source by an empty import.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::imports::MAX_PROBLEMS;
use super::*;

const BASE: &str = "version: 1\ninterfaces: [eth0]\n";

/// A policy in a fresh directory importing `import` (written as the set's `file:`,
/// line 5) from set `prov` used by rule `db` (rule's `from:` on line 9).
struct Case {
    dir: tempfile::TempDir,
    policy: PathBuf,
}

impl Case {
    fn new(import: &str, extra: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        let text = format!(
            "{BASE}sets:\n  prov:\n    file: {import}\n{extra}rules:\n  - name: db\n    ports: [5432/tcp]\n    from: [prov]\n"
        );
        std::fs::write(&policy, text).unwrap();
        Case { dir, policy }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn errors(&self) -> Vec<Diagnostic> {
        match load(&self.policy) {
            Ok(_) => panic!("policy unexpectedly valid"),
            Err(e) => e.diagnostics().to_vec(),
        }
    }

    fn one_error(&self) -> Diagnostic {
        let e = self.errors();
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let case = Case::new("feed", "");
    nix::unistd::mkfifo(
        &case.path("feed"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = Instant::now();
    let d = case.one_error();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((d.file.as_path(), d.line), (case.policy.as_path(), 5));
    assert_eq!(d.field, "sets.prov.file");
    assert!(
        d.message
            .contains("is a FIFO (named pipe), not a regular file"),
        "{d}"
    );
}

#[test]
fn devices_and_directories_are_refused() {
    for (import, what) in [
        ("/dev/zero", "a character device"),
        ("/dev/urandom", "a character device"),
        ("/", "a directory"),
    ] {
        let d = Case::new(import, "").one_error();
        assert_eq!((d.line, d.field.as_str()), (5, "sets.prov.file"));
        assert!(
            d.message
                .contains(&format!("{import} is {what}, not a regular file")),
            "{d}"
        );
    }
}

#[test]
fn the_size_limit_is_the_default_or_max_size() {
    // A sparse file just over the default 256 MiB: refused before it is read.
    let case = Case::new("big.txt", "");
    let big = std::fs::File::create(case.path("big.txt")).unwrap();
    big.set_len((256 << 20) + 1).unwrap();
    let d = case.one_error();
    assert!(
        d.message.contains(
            "is 256.0 MiB (268435457 bytes), more than max_size (256 MiB (268435456 bytes))"
        ),
        "{d}"
    );
    assert!(d.hint.as_deref().unwrap().contains("max_size: 1GiB"), "{d}");

    // max_size lowers (or raises) it.
    let case = Case::new("list.txt", "    max_size: 16B\n");
    std::fs::write(case.path("list.txt"), "192.0.2.0/24\n198.51.100.0/24\n").unwrap();
    let d = case.one_error();
    assert!(
        d.message
            .contains("is 29 bytes, more than max_size (16 bytes)"),
        "{d}"
    );
    let case = Case::new("list.txt", "    max_size: 1KiB\n");
    std::fs::write(case.path("list.txt"), "192.0.2.0/24\n198.51.100.0/24\n").unwrap();
    assert_eq!(load(&case.policy).unwrap().sets["prov"].cidrs.len(), 2);

    // A malformed max_size, or one without a file.
    let case = Case::new("list.txt", "    max_size: 1GB\n");
    std::fs::write(case.path("list.txt"), "192.0.2.0/24\n").unwrap();
    let d = case.one_error();
    assert_eq!((d.line, d.field.as_str()), (6, "sets.prov.max_size"));
    assert!(d.message.contains("unknown size unit \"GB\""), "{d}");
    let text = format!("{BASE}sets:\n  s: {{cidrs: [192.0.2.0/24], max_size: 1MiB}}\n");
    let e = parse_str(&text, Path::new("policy.yaml")).unwrap_err();
    assert_eq!(e.diagnostics().len(), 1);
    assert_eq!(e.diagnostics()[0].field, "sets.s.max_size");
}

#[test]
fn a_file_that_is_not_a_range_list_gets_few_errors_and_no_echo() {
    // Secrets of a file the policy should not have named: none of them may reach
    // the error (which goes to the agent's logs).
    let case = Case::new("shadow", "");
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "user{i}:$y$j9T$secretsecret{i}:19000:0:99999:7:::\n"
        ));
    }
    text.push_str(&"x".repeat(100_000));
    std::fs::write(case.path("shadow"), &text).unwrap();
    let e = case.errors();
    assert_eq!(e.len(), MAX_PROBLEMS + 1, "{e:#?}");
    for d in &e {
        assert_eq!(d.file, case.path("shadow"));
        assert_eq!(d.value, None);
        assert!(!d.to_string().contains("secret"), "{d}");
        assert!(d.to_string().len() < 300, "{d}");
    }
    assert_eq!((e[0].line, e[0].column), (1, 1));
    assert!(
        e[0].message.contains(
            "not a CIDR or address: a 45-byte word (not shown: it holds characters no address has)"
        ),
        "{}",
        e[0]
    );
    assert_eq!(e[MAX_PROBLEMS].line, MAX_PROBLEMS + 1);
    assert!(
        e[MAX_PROBLEMS]
            .message
            .contains("stopped after 10 problems")
    );

    // Words that could be a mistyped address are still quoted.
    let case = Case::new("list.txt", "");
    std::fs::write(
        case.path("list.txt"),
        "192.0.2.1/24\n10.0.0.0/8 localhost\n",
    )
    .unwrap();
    let e = case.errors();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(e[0].value.as_deref(), Some("192.0.2.1/24"));
    assert!(e[0].message.contains("192.0.2.1/24 has host bits set"));
    assert_eq!(
        (e[1].line, e[1].column, e[1].value.as_deref()),
        (2, 12, None)
    );
    assert!(!e[1].message.contains("localhost"), "{}", e[1]);
}

#[test]
fn a_binary_file_is_one_error_where_its_first_non_text_byte_is() {
    let case = Case::new("blob", "");
    let mut blob = b"192.0.2.0/24\n".to_vec();
    // Deterministic junk, with newlines and bytes that are not UTF-8.
    let mut x: u32 = 0x1234_5678;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        blob.push(x as u8);
    }
    std::fs::write(case.path("blob"), &blob).unwrap();
    let d = case.one_error();
    assert_eq!(d.file, case.path("blob"));
    assert!(d.line >= 2, "{d}");
    assert_eq!(d.value, None);
    assert!(d.message.starts_with("not a text file"), "{d}");
    assert!(d.to_string().len() < 300, "{d}");
}

#[test]
fn a_rule_left_with_no_source_by_an_empty_import_is_an_error() {
    for content in ["", "# ranges as of today\n\n"] {
        let case = Case::new("list.txt", "");
        std::fs::write(case.path("list.txt"), content).unwrap();
        let d = case.one_error();
        assert_eq!(d.file, case.policy);
        assert_eq!((d.line, d.field.as_str()), (9, "rules[0].from"));
        assert_eq!(
            d.message,
            "rule \"db\" would allow no source: set \"prov\" imports \"list.txt\" (line 5), which holds no address"
        );
    }
    // Another source that has addresses keeps the rule valid; so does a set with
    // cidrs besides the empty import.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    let policy = dir.path().join("policy.yaml");
    let text = format!(
        "{BASE}sets:\n  prov: {{file: empty.txt}}\n  both: {{file: empty.txt, cidrs: [192.0.2.0/24]}}\nrules:\n  - {{name: a, ports: [22], from: [prov, 198.51.100.0/24]}}\n  - {{name: b, ports: [23], from: [both]}}\n"
    );
    parse_str(&text, &policy).unwrap();
    // A set with no addresses and no import says so too.
    let text = format!(
        "{BASE}sets:\n  none: {{cidrs: []}}\nrules: [{{name: a, ports: [22], from: [none]}}]\n"
    );
    let e = parse_str(&text, &policy).unwrap_err();
    assert_eq!(
        e.diagnostics()[0].message,
        "rule \"a\" would allow no source: set \"none\" holds no address"
    );
}
