//! Parser and validation tests: every feature, and every kind of error with its file,
//! line, field and value.

use super::*;
use std::net::IpAddr;

const FULL: &str = r#"version: 1
interfaces: [eth0, "eth1.100"]
mode: monitor
default: drop
management: [203.0.113.7/32, ops]
sets:
  office: [198.51.100.0/24, "2001:db8:100::/48", 192.0.2.9]
  ops:
    cidrs: [203.0.113.0/28]
  partners:
    cidrs: [192.0.2.0/24, "2001:db8:200::/40"]
    except: [192.0.2.128/25, "2001:db8:200:ff00::/56"]
  bad-actors:
    - 198.51.100.66
deny: [bad-actors]
rules:
  - name: airbyte-to-postgres
    ports: [5432/tcp]
    from: [airbyte-us, airbyte-eu, office]
  - name: webapp
    ports: [8000/tcp, 443, 60000-60100/udp, 53/udp, 8443]
    from: [10.0.0.0/8, partners, "2001:db8::1"]
"#;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    parse_str(text, Path::new("policy.yaml"))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Ok(_) => panic!("policy unexpectedly valid:\n{text}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

/// The single error of `text`, checked to name the file.
fn one_error(text: &str) -> Diagnostic {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got: {e:#?}");
    assert_eq!(e[0].file, Path::new("policy.yaml"));
    e[0].clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const BASE: &str = "version: 1\ninterfaces: [eth0]\n";

#[test]
fn parses_every_feature() {
    let p = parse(FULL).unwrap();
    assert_eq!(p.origin, Path::new("policy.yaml"));
    assert_eq!(
        p.interfaces,
        Interfaces::Named(vec!["eth0".into(), "eth1.100".into()])
    );
    assert_eq!(p.mode, Mode::Monitor);
    assert_eq!(p.default, DefaultAction::Drop);
    assert_eq!(p.management.sets.len(), 2);
    assert_eq!(p.management.sets[0].name, "203.0.113.7/32");
    assert_eq!(
        p.management
            .first_containing(ip("203.0.113.3"))
            .unwrap()
            .name,
        "ops"
    );
    assert_eq!(p.deny.sets[0].name, "bad-actors");
    assert_eq!(p.sets.len(), 4);
    assert_eq!(p.sets["office"].cidrs[2].to_string(), "192.0.2.9/32");
    assert_eq!(p.rules.len(), 2);
    let r0 = &p.rules[0];
    assert_eq!((r0.name.as_str(), r0.line), ("airbyte-to-postgres", 17));
    assert_eq!(r0.from.sets[0].name, "airbyte-us");
    assert_eq!(r0.from.sets[0].cidrs.len(), 8);
    assert_eq!(r0.from.sets[1].cidrs.len(), 3);
    let r1 = &p.rules[1];
    let ports: Vec<String> = r1.ports.iter().map(ToString::to_string).collect();
    assert_eq!(
        ports,
        [
            "8000/tcp",
            "443/tcp",
            "60000-60100/udp",
            "53/udp",
            "8443/tcp"
        ]
    );
    assert!(r1.covers(Proto::Udp, 60000) && !r1.covers(Proto::Tcp, 60000));
    assert_eq!(r1.from.sets[2].cidrs[0].to_string(), "2001:db8::1/128");
    // except semantics
    let partners = &p.sets["partners"];
    assert!(partners.contains(ip("192.0.2.127")));
    assert!(!partners.contains(ip("192.0.2.128")));
    assert!(partners.contains(ip("2001:db8:200::1")));
    assert!(!partners.contains(ip("2001:db8:200:ff00::1")));
    assert!(!partners.contains(ip("10.0.0.1")));
    assert_eq!(p.rule_index("webapp"), Some(1));
}

/// A named set is held once: every reference to it shares the definition, so a set
/// of a million imported prefixes costs its memory once, not once per rule.
#[test]
fn references_share_the_named_set() {
    let text = FULL.replace(
        "    from: [10.0.0.0/8, partners, \"2001:db8::1\"]",
        "    from: [10.0.0.0/8, partners, office]",
    );
    let p = parse(&text).unwrap();
    let office = &p.sets["office"];
    assert!(Arc::ptr_eq(&p.rules[0].from.sets[2], office));
    assert!(Arc::ptr_eq(&p.rules[1].from.sets[2], office));
    assert!(Arc::ptr_eq(&p.management.sets[1], &p.sets["ops"]));
}

#[test]
fn defaults_and_auto() {
    let p = parse("version: 1\ninterfaces: [auto]\n").unwrap();
    assert_eq!(p.interfaces, Interfaces::Auto);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.default, DefaultAction::Pass);
    assert_eq!(p.xdp_mode, XdpMode::Auto);
    assert!(p.rules.is_empty() && p.management.sets.is_empty() && p.deny.sets.is_empty());
    // Block-style lists and integer ports.
    let p = parse(&format!("{BASE}rules:\n  - name: a\n    ports:\n      - 22\n      - 80-81\n    from:\n      - 0.0.0.0/0\n      - ::/0\n")).unwrap();
    assert_eq!(p.rules[0].ports.len(), 2);
    assert_eq!(p.rules[0].from.sets[1].cidrs[0].to_string(), "::/0");
}

#[test]
fn unknown_set_message() {
    let text = format!(
        "{BASE}sets:\n  office: [198.51.100.0/24]\n  partners: [192.0.2.0/24]\nrules:\n  - name: a\n    ports: [22]\n    from: [office]\n  - name: b\n    ports: [22]\n    from: [office, partners, ofice]\n"
    );
    let d = one_error(&text);
    assert_eq!(
        d.to_string(),
        "policy.yaml:12:30: rules[1].from[2]: unknown set or region \"ofice\" (known sets: office, partners; regions: airbyte-eu, airbyte-us); did you mean \"office\"?"
    );
    assert_eq!(d.value.as_deref(), Some("ofice"));
}

#[test]
fn host_bits_message_and_suggestion() {
    let d = one_error(&format!("{BASE}sets:\n  s: [192.0.2.1/24]\n"));
    assert_eq!(
        d.to_string(),
        "policy.yaml:4:7: sets.s[0]: 192.0.2.1/24 has host bits set (0.0.0.1 outside the /24 mask); did you mean 192.0.2.0/24?"
    );
    assert_eq!(d.value.as_deref(), Some("192.0.2.1/24"));
    // Inline in a rule, too.
    let d = one_error(&format!(
        "{BASE}rules: [{{name: a, ports: [22], from: [10.0.0.1/8]}}]\n"
    ));
    assert_eq!(d.field, "rules[0].from[0]");
    assert!(d.message.contains("0.0.0.1 outside the /8 mask"), "{d}");
    assert_eq!(d.hint.as_deref(), Some("did you mean 10.0.0.0/8?"));
}

#[test]
fn unknown_key_wrong_version_and_missing() {
    let d = one_error("version: 1\ninterfaces: [eth0]\nrulez: []\n");
    assert_eq!((d.line, d.column, d.field.as_str()), (3, 1, "rulez"));
    assert!(d.message.contains("unknown key \"rulez\""));
    assert!(
        d.hint
            .as_deref()
            .unwrap()
            .contains("did you mean \"rules\"?")
    );
    let e = errors(&format!(
        "{BASE}rules: [{{name: a, port: [22], from: [office]}}]\n"
    ));
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(
        shown[1].contains("rules[0].port: unknown key \"port\""),
        "{shown:?}"
    );
    assert!(shown[1].contains("did you mean \"ports\"?"), "{shown:?}");
    assert!(
        shown[0].contains("rules[0].ports: missing required key"),
        "{shown:?}"
    );
    assert!(
        shown[2].contains("unknown set or region \"office\""),
        "{shown:?}"
    );

    let d = one_error("version: 2\ninterfaces: [eth0]\n");
    assert_eq!((d.line, d.column, d.field.as_str()), (1, 10, "version"));
    assert_eq!(d.value.as_deref(), Some("2"));
    assert!(d.message.contains("unsupported policy version \"2\""));
    let e = errors("interfaces: [eth0]\n");
    assert!(e[0].message.contains("missing required key \"version\""));
    // `interfaces` may be left out: the command line names them then.
    let p = parse("version: 1\n").unwrap();
    assert_eq!(p.interfaces, Interfaces::Unspecified);
}

#[test]
fn collects_all_errors() {
    let text = format!(
        "{BASE}mode: enforcing\nsets:\n  s: [10.0.0.1/8, bogus]\nrules:\n  - name: a\n    ports: [0]\n    from: []\n  - name: a\n    ports: [99999/tcp]\n    from: [nope]\n"
    );
    let e = errors(&text);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "mode",
            "sets.s[0]",
            "sets.s[1]",
            "rules[0].ports[0]",
            "rules[0].from",
            "rules[1].name",
            "rules[1].ports[0]",
            "rules[1].from[0]",
        ],
        "{e:#?}"
    );
    // A broken set is not reported again as unknown where it is used.
    let e = errors(&format!(
        "{BASE}sets:\n  s: [10.0.0.1/8]\nrules: [{{name: a, ports: [22], from: [s]}}]\n"
    ));
    assert_eq!(e.len(), 1);
}

#[test]
fn malformed_cidr() {
    let d = one_error(&format!("{BASE}management: [10.0.0.0/33]\n"));
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (3, 14, "management[0]")
    );
    assert_eq!(
        d.message,
        "malformed CIDR \"10.0.0.0/33\": prefix length 33 is longer than 32"
    );
    let d = one_error(&format!("{BASE}deny: [300.1.2.3]\n"));
    assert!(d.message.starts_with("malformed CIDR \"300.1.2.3\""), "{d}");
}

#[test]
fn port_errors() {
    let rule = |ports: &str| {
        format!("{BASE}rules:\n  - name: r\n    ports: {ports}\n    from: [10.0.0.0/8]\n")
    };
    let d = one_error(&rule("[54x2/tcp]"));
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (5, 13, "rules[0].ports[0]")
    );
    assert_eq!(d.value.as_deref(), Some("54x2/tcp"));
    assert!(d.message.contains("malformed port \"54x2/tcp\""));
    let d = one_error(&rule("[22, 60100-60000/udp]"));
    assert_eq!(d.field, "rules[0].ports[1]");
    assert!(d.message.contains("reversed"));
    assert_eq!(d.hint.as_deref(), Some("did you mean 60000-60100/udp?"));
    let d = one_error(&rule("[0]"));
    assert!(d.message.contains("port 0"), "{d}");
    let d = one_error(&rule("[65536]"));
    assert!(d.message.contains("out of range"), "{d}");
    let d = one_error(&rule("[22/sctp]"));
    assert!(d.message.contains("unknown protocol \"sctp\""), "{d}");
    let d = one_error(&rule("5432"));
    assert_eq!(d.field, "rules[0].ports");
    assert_eq!(
        d.message,
        "expected a list of ports, found the value \"5432\""
    );
    assert!(
        d.hint
            .as_deref()
            .unwrap()
            .contains("rules[0].ports: [5432/tcp]")
    );
    let d = one_error(&rule("[]"));
    assert!(d.message.contains("at least one port"));
}

#[test]
fn empty_and_missing_from() {
    let d = one_error(&format!(
        "{BASE}rules:\n  - name: r\n    ports: [22]\n    from: []\n"
    ));
    assert_eq!((d.line, d.field.as_str()), (6, "rules[0].from"));
    assert!(d.message.contains("at least one source"));
    let d = one_error(&format!(
        "{BASE}rules:\n  - name: r\n    ports: [22]\n    from:\n"
    ));
    assert_eq!(d.field, "rules[0].from");
    assert!(d.message.contains("found nothing"), "{d}");
    let d = one_error(&format!("{BASE}rules:\n  - name: r\n    ports: [22]\n"));
    assert_eq!((d.line, d.field.as_str()), (4, "rules[0].from"));
    assert!(d.message.contains("missing required key \"from\""));
}

#[test]
fn duplicate_rule_and_bad_names() {
    let text = format!(
        "{BASE}rules:\n  - name: db\n    ports: [22]\n    from: [10.0.0.0/8]\n  - name: db\n    ports: [23]\n    from: [10.0.0.0/8]\n"
    );
    let d = one_error(&text);
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (7, 11, "rules[1].name")
    );
    assert_eq!(d.message, "duplicate rule name \"db\"");
    assert_eq!(d.hint.as_deref(), Some("first used at line 4"));
    let d = one_error(&format!(
        "{BASE}rules: [{{name: \"a b\", ports: [22], from: [10.0.0.0/8]}}]\n"
    ));
    assert!(d.message.contains("invalid rule name \"a b\""));
    let long = "x".repeat(64);
    let d = one_error(&format!(
        "{BASE}rules: [{{name: {long}, ports: [22], from: [10.0.0.0/8]}}]\n"
    ));
    assert!(d.message.contains("invalid rule name"));
}

#[test]
fn too_many_rules() {
    let mut text = format!("{BASE}rules:\n");
    for i in 0..64 {
        text.push_str(&format!(
            "  - {{name: r{i}, ports: [{}], from: [10.0.0.0/8]}}\n",
            i + 1
        ));
    }
    assert_eq!(parse(&text).unwrap().rules.len(), 64);
    text.push_str("  - {name: r64, ports: [65], from: [10.0.0.0/8]}\n");
    let d = one_error(&text);
    assert_eq!((d.line, d.field.as_str()), (68, "rules[64]"));
    assert_eq!(d.message, "too many rules: 65 (the limit is 64)");
}

#[test]
fn except_outside_cidrs() {
    let text = format!(
        "{BASE}sets:\n  partners:\n    cidrs: [192.0.2.0/24]\n    except: [192.0.2.128/25, 198.51.100.0/25]\n"
    );
    let d = one_error(&text);
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (6, 30, "sets.partners.except[1]")
    );
    assert_eq!(d.value.as_deref(), Some("198.51.100.0/25"));
    assert!(d.message.contains("not inside any of the set's cidrs"));
    // An except equal to a cidr is inside it.
    parse(&format!(
        "{BASE}sets:\n  s: {{cidrs: [10.0.0.0/8], except: [10.0.0.0/8]}}\n"
    ))
    .unwrap();
}

#[test]
fn set_name_rules() {
    let d = one_error(&format!("{BASE}sets:\n  airbyte-us: [10.0.0.0/8]\n"));
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (4, 3, "sets.airbyte-us")
    );
    assert!(d.message.contains("shadows the built-in region"));
    let d = one_error(&format!("{BASE}sets:\n  10.0.0.1: [10.0.0.0/8]\n"));
    assert!(d.message.contains("looks like an address"));
    let d = one_error(&format!("{BASE}sets:\n  s: []\n"));
    assert!(d.message.contains("has no addresses"));
    let e = errors(&format!("{BASE}sets:\n  s: {{cidr: [10.0.0.0/8]}}\n"));
    assert!(e[0].message.contains("unknown key \"cidr\""), "{e:?}");
    assert_eq!(
        e[0].hint.as_deref(),
        Some(
            "did you mean \"cidrs\"? (known keys here: cidrs, except, file, max_size, provider, snapshot, region, scope, service)"
        )
    );
    let e = errors(&format!("{BASE}sets:\n  s: 10.0.0.0/8\n"));
    assert!(
        e[0].message
            .contains("expected a list of CIDRs or a mapping")
    );
}

#[test]
fn interfaces() {
    let d = one_error("version: 1\ninterfaces: [auto, eth0]\n");
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (2, 14, "interfaces[0]")
    );
    assert!(d.message.contains("\"auto\" cannot be combined"));
    let d = one_error("version: 1\ninterfaces: [averyveryverylongname]\n");
    assert!(d.message.contains("invalid interface name"));
    let d = one_error("version: 1\ninterfaces: []\n");
    assert!(d.message.contains("no interfaces"));
    let d = one_error("version: 1\ninterfaces: [eth0, eth0]\n");
    assert!(d.message.contains("listed twice"));
    let d = one_error("version: 1\ninterfaces: eth0\n");
    assert!(d.message.contains("expected a list of interface names"));
}

#[test]
fn yaml_errors() {
    let d = one_error("version: 1\ninterfaces: [eth0]\nversion: 1\n");
    assert_eq!((d.line, d.column), (3, 1));
    assert_eq!(d.message, "duplicate key \"version\"");
    assert_eq!(d.hint.as_deref(), Some("first given at line 1"));
    let d = one_error("version: 1\ninterfaces: [eth0\n");
    assert!(d.message.starts_with("YAML syntax error"), "{d}");
    let d = one_error("- a\n- b\n");
    assert!(d.message.contains("must be a YAML mapping"));
    let d = one_error("version: 1\ninterfaces: &x [eth0]\n");
    assert!(d.message.contains("anchors"));
    let d = one_error("---\nversion: 1\ninterfaces: [eth0]\n---\nversion: 2\n");
    assert_eq!((d.line, d.column), (4, 1));
    assert!(d.message.contains("second YAML document"), "{d}");
    // A leading marker is fine.
    parse("--- # policy\nversion: 1\ninterfaces: [eth0]\n").unwrap();
    // Unquoted IPv6 works in block and flow lists.
    let p = parse("version: 1\ninterfaces: [eth0]\nmanagement: [2001:db8::/32, ::1]\n").unwrap();
    assert_eq!(p.management.sets[1].cidrs[0].to_string(), "::1/128");
    // Empty document: the missing key (version; interfaces may be left out), not a crash.
    assert_eq!(errors("").len(), 1);
}

#[test]
fn imports() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.txt"),
        "# ranges\n10.0.0.0/8\n\n2001:db8::/32  # v6\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.txt"),
        "10.0.0.0/8\n# c\n  10.1.2.3/16\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    let text = format!("{BASE}sets:\n  prov:\n    file: good.txt\n    except: [10.1.0.0/16]\n");
    std::fs::write(&policy, &text).unwrap();
    let p = load(&policy).unwrap();
    assert_eq!(p.sets["prov"].cidrs.len(), 2);
    assert!(!p.sets["prov"].contains(ip("10.1.0.1")));

    let text = format!("{BASE}sets:\n  prov: {{file: bad.txt}}\n  gone: {{file: missing.txt}}\n");
    let e = parse_str(&text, &policy).unwrap_err();
    let d = e.diagnostics();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].file, dir.path().join("bad.txt"));
    assert_eq!(
        (d[0].line, d[0].column, d[0].field.as_str()),
        (3, 3, "sets.prov.file")
    );
    assert!(d[0].message.contains("10.1.2.3/16 has host bits set"));
    assert_eq!(d[1].file, policy);
    assert_eq!((d[1].line, d[1].field.as_str()), (5, "sets.gone.file"));
    assert!(d[1].message.contains("cannot read imported file"));
}

#[test]
fn read_error() {
    let e = load(Path::new("/nonexistent/airlock.yaml")).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/airlock.yaml"));
}

#[test]
fn xdp_mode() {
    for (name, mode) in [
        ("auto", XdpMode::Auto),
        ("native", XdpMode::Native),
        ("generic", XdpMode::Generic),
    ] {
        let p = parse(&format!("{BASE}xdp_mode: {name}\n")).unwrap();
        assert_eq!(p.xdp_mode, mode);
        assert_eq!(XdpMode::from_name(name), Some(mode));
    }
    let d = one_error(&format!("{BASE}xdp_mode: skb\n"));
    assert_eq!((d.line, d.column, d.field.as_str()), (3, 11, "xdp_mode"));
    assert!(
        d.message
            .contains("invalid xdp_mode \"skb\" (expected auto or native or generic)"),
        "{}",
        d.message
    );
}

#[test]
fn every_diagnostic_has_its_kind() {
    let rule = "rules: [{name: a, ports: [22], from: [192.0.2.0/24]}]\n";
    for (text, kind) in [
        ("version: 1\n  bad: [\n".to_owned(), DiagnosticKind::Syntax),
        ("- a list\n".to_owned(), DiagnosticKind::Syntax),
        (
            format!("{BASE}colour: blue\n{rule}"),
            DiagnosticKind::Structure,
        ),
        (
            format!("{BASE}rules: {{name: a}}\n"),
            DiagnosticKind::Structure,
        ),
        (
            format!("{BASE}rules: [{{name: a, ports: [22]}}]\n"),
            DiagnosticKind::Structure,
        ),
        (
            format!("{BASE}rules: [{{name: a, ports: [22], from: [10.1.2.3/16]}}]\n"),
            DiagnosticKind::Value,
        ),
        (
            format!("{BASE}rules: [{{name: a, ports: [70000], from: [192.0.2.0/24]}}]\n"),
            DiagnosticKind::Value,
        ),
        (
            format!("{BASE}rules: [{{name: a, ports: [22], from: [nowhere]}}]\n"),
            DiagnosticKind::Reference,
        ),
        (
            format!("{BASE}rules: [{{name: a, ports: [], from: [192.0.2.0/24]}}]\n"),
            DiagnosticKind::Conflict,
        ),
        (
            format!(
                "{BASE}sets:\n  s: {{file: /nonexistent/list.txt}}\n{}",
                rule.replace("192.0.2.0/24", "s")
            ),
            DiagnosticKind::Import,
        ),
    ] {
        let d = one_error(&text);
        assert_eq!(d.kind, kind, "{text}\n{d}");
        assert_eq!(parse(&text).unwrap_err().kind(), Some(kind));
    }
    let too_many: String = (0..65)
        .map(|i| format!("  - {{name: r{i}, ports: [22], from: [192.0.2.0/24]}}\n"))
        .collect();
    let d = one_error(&format!("{BASE}rules:\n{too_many}"));
    assert_eq!(d.kind, DiagnosticKind::Capacity);
}
