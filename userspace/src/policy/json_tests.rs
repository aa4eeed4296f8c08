//! The JSON front end and the serde types: the same policy as YAML and as JSON
//! compiles to the same tables, and a JSON policy's errors name file, line, column
//! and field.

use std::path::Path;

use super::schema::PolicyDocument;
use super::*;
use crate::compile::compile;

/// A policy using every kind of key, sets in every shape.
const YAML: &str = r#"version: 1
interfaces: [eth0, "eth1.100"]
mode: monitor
default: drop
xdp_mode: generic
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
    from: [airbyte-us, office]
  - name: webapp
    ports: [8000/tcp, 443, 60000-60100/udp]
    from: [10.0.0.0/8, partners, "2001:db8::1"]
"#;

/// The same policy, written by hand as JSON (numbers where YAML had plain scalars).
const JSON: &str = r#"{
	"version": 1,
	"interfaces": ["eth0", "eth1.100"],
	"mode": "monitor",
	"default": "drop",
	"xdp_mode": "generic",
	"management": ["203.0.113.7/32", "ops"],
	"sets": {
		"office": ["198.51.100.0/24", "2001:db8:100::/48", "192.0.2.9"],
		"ops": {"cidrs": ["203.0.113.0/28"]},
		"partners": {
			"cidrs": ["192.0.2.0/24", "2001:db8:200::/40"],
			"except": ["192.0.2.128/25", "2001:db8:200:ff00::/56"]
		},
		"bad-actors": ["198.51.100.66"]
	},
	"deny": ["bad-actors"],
	"rules": [
		{"name": "airbyte-to-postgres", "ports": ["5432/tcp"], "from": ["airbyte-us", "office"]},
		{"name": "webapp", "ports": ["8000/tcp", 443, "60000-60100/udp"],
		 "from": ["10.0.0.0/8", "partners", "2001:db8::1"]}
	]
}
"#;

fn json_errors(text: &str) -> Vec<Diagnostic> {
    match parse_str(text, Path::new("policy.json")) {
        Ok(_) => panic!("policy unexpectedly valid:\n{text}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

fn one_json_error(text: &str) -> Diagnostic {
    let e = json_errors(text);
    assert_eq!(e.len(), 1, "expected one error, got: {e:#?}");
    assert_eq!(e[0].file, Path::new("policy.json"));
    e[0].clone()
}

/// Everything but where it came from.
fn same_policy(a: &Policy, b: &Policy) {
    assert_eq!(
        (&a.interfaces, a.mode, a.default, a.xdp_mode),
        (&b.interfaces, b.mode, b.default, b.xdp_mode)
    );
    assert_eq!(
        (&a.management, &a.deny, &a.sets),
        (&b.management, &b.deny, &b.sets)
    );
    let names = |p: &Policy| {
        p.rules
            .iter()
            .map(|r| (r.name.clone(), r.ports.clone(), r.from.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(a), names(b));
    assert_eq!(
        compile(a).unwrap(),
        compile(b).unwrap(),
        "compiled tables differ"
    );
}

#[test]
fn the_same_policy_as_yaml_and_as_json_compiles_to_identical_tables() {
    let yaml = parse_str(YAML, Path::new("policy.yaml")).unwrap();
    let json = parse_str(JSON, Path::new("policy.json")).unwrap();
    same_policy(&yaml, &json);
    // JSON text is recognised without the extension too (a custom resource's text).
    let sniffed = parse_str(JSON, Path::new("policy.yaml")).unwrap();
    same_policy(&yaml, &sniffed);
}

#[test]
fn a_yaml_policy_reads_into_the_serde_types_and_back_out_as_json() {
    // The YAML front end's document goes through the same types: read with
    // marked-yaml's serde support, written as JSON, validated again.
    let node = validate::parse_yaml(YAML).unwrap();
    let document: PolicyDocument = marked_yaml::from_node(&node).unwrap();
    let from_json: PolicyDocument = serde_json::from_str(JSON).unwrap();
    assert_eq!(document, from_json);
    let text = serde_json::to_string_pretty(&document).unwrap();
    let again = parse_str(&text, Path::new("again.json")).unwrap();
    same_policy(&parse_str(YAML, Path::new("policy.yaml")).unwrap(), &again);
}

#[test]
fn an_unknown_key_in_json_names_file_line_column_and_field() {
    let text = r#"{
  "version": 1,
  "rules": [
    {"name": "db", "ports": ["5432/tcp"], "form": ["192.0.2.0/24"]}
  ]
}"#;
    let d = one_json_error(text);
    assert_eq!((d.line, d.column), (4, 48), "{d}");
    assert_eq!(d.field, "rules[0].form", "{d}");
    assert!(
        d.message
            .starts_with("unknown field `form`, expected one of"),
        "{d}"
    );
    assert!(
        d.to_string()
            .starts_with("policy.json:4:48: rules[0].form: unknown field `form`"),
        "{d}"
    );
}

#[test]
fn a_wrong_shape_in_json_names_its_field() {
    let text = "{\"version\": 1,\n \"rules\": [{\"name\": \"db\", \"ports\": \"5432/tcp\", \"from\": [\"office\"]}]}";
    let d = one_json_error(text);
    assert_eq!(d.field, "rules[0].ports", "{d}");
    assert_eq!(d.line, 2, "{d}");
    assert!(d.message.contains("expected a sequence"), "{d}");
}

#[test]
fn a_bad_value_in_json_gets_the_yaml_front_ends_diagnostic_at_its_position() {
    let text = r#"{
  "version": 1,
  "sets": {
    "office": ["198.51.100.0/24", "192.0.2.1/24"]
  },
  "rules": [{"name": "db", "ports": ["5432/tcp"], "from": ["office", "ofice"]}]
}"#;
    let e = json_errors(text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].line, e[0].column), (4, 35), "{}", e[0]);
    assert_eq!(e[0].field, "sets.office[1]");
    assert_eq!(e[0].value.as_deref(), Some("192.0.2.1/24"));
    assert!(e[0].message.contains("host bits"), "{}", e[0]);
    assert_eq!(e[1].line, 6);
    assert_eq!(e[1].field, "rules[0].from[1]");
    assert!(
        e[1].hint.as_deref().unwrap_or("").contains("office"),
        "{}",
        e[1]
    );
}

#[test]
fn json_syntax_errors_name_line_and_column() {
    let d = one_json_error("{\n  \"version\": 1,\n  \"rules\": [],\n}\n");
    assert_eq!((d.line, d.column), (4, 1), "{d}");
    assert!(
        d.message.starts_with("JSON syntax error: trailing comma"),
        "{d}"
    );
    let d = one_json_error("{\"version\": 1} {}");
    assert!(d.message.contains("trailing characters"), "{d}");
}

#[test]
fn json_duplicate_keys_are_refused() {
    let d = one_json_error("{\"version\": 1, \"mode\": \"monitor\", \"mode\": \"enforce\"}");
    assert!(d.message.contains("duplicate field `mode`"), "{d}");
    assert_eq!(d.field, "mode");
}
