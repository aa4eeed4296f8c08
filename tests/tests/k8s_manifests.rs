//! The Helm chart (deploy/helm/airlock), the plain manifests rendered from it
//! (deploy/kubernetes) and the container image definition (deploy/container),
//! checked offline: `helm lint --strict`, `helm template` for several Kubernetes
//! versions, `kubernetes-validate --strict` on every object (counted here, since
//! the validator passes an empty file), the values schema, the chart's policy
//! through `airlock validate`, and the settings an XDP agent's DaemonSet depends on.
//!
//! helm and kubernetes-validate come from target/k8s-tools/, where
//! `cargo xtask setup` installs them. No root, no cluster, no container engine.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use airlock_integration::cli::{airlock, airlock_bin};
use serde_norway::Value;

/// Kubernetes versions the chart is rendered for and validated against (the
/// validator bundles schemas for 1.25 to 1.37).
const KUBE_VERSIONS: &[&str] = &["1.28.0", "1.33.0", "1.37.0"];
/// The kinds a default install consists of (with the namespace rendered).
const DEFAULT_KINDS: &[&str] = &["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"];
const POLICY_DIR: &str = "/etc/airlock";

// ---------------------------------------------------------------------------
// Tools and rendering

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn chart() -> PathBuf {
    root().join("deploy/helm/airlock")
}

struct Tools {
    helm: PathBuf,
    validator: PathBuf,
}

/// The tools `cargo xtask setup` installs. Missing tools fail the test: it never
/// skips.
fn tools() -> Tools {
    let dir = root().join("target/k8s-tools");
    let tools = Tools {
        helm: dir.join("bin/helm"),
        validator: dir.join("venv/bin/kubernetes-validate"),
    };
    for tool in [&tools.helm, &tools.validator] {
        assert!(
            tool.exists(),
            "{} is missing: run `cargo xtask setup` (or `cargo xtask k8s-check`), which installs \
             helm and kubernetes-validate into target/k8s-tools/",
            tool.display()
        );
    }
    tools
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn helm(args: &[&str]) -> Output {
    run(Command::new(tools().helm).args(args))
}

/// `helm template` of the chart; `extra` are more helm arguments (--set, -f).
fn try_render(kube_version: &str, extra: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "airlock",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "airlock-system",
        "--kube-version",
        kube_version,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

fn render(kube_version: &str, extra: &[&str]) -> String {
    let out = try_render(kube_version, extra);
    assert!(
        out.status.success(),
        "helm template {extra:?} for {kube_version} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The objects in a multi-document YAML stream (empty documents dropped).
fn parse_objects(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("a document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_norway::from_str::<Value>(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| s(at(o, "kind")).to_owned())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// `v` at a dotted path; panics naming the path if it is missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur
            .get(key)
            .unwrap_or_else(|| panic!("{path}: no {key:?} in {cur:?}"));
    }
    cur
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
}

fn strings(v: &Value) -> Vec<&str> {
    seq(v).iter().map(s).collect()
}

/// The element of a list of objects whose `name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list)
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no element named {name:?} in {list:?}"))
}

/// Runs kubernetes-validate --strict on `files` and checks it passed each of the
/// `expected` objects by name; `unknown` is how many objects of kinds it has no
/// schema for (custom resources) it may only warn about.
fn validate(kube_version: &str, files: &[&Path], expected: usize, unknown: usize) {
    let out = run(Command::new(tools().validator)
        .args(["--strict", "-k", kube_version])
        .args(files));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict -k {kube_version} failed:\n{stdout}{stderr}"
    );
    let passed = stdout.matches(" passed for resource ").count();
    assert_eq!(
        passed, expected,
        "kubernetes-validate passed {passed} objects, expected {expected}:\n{stdout}{stderr}"
    );
    let warned = format!("{stdout}{stderr}")
        .matches("Couldn't find schema")
        .count();
    assert_eq!(
        warned, unknown,
        "kubernetes-validate had no schema for {warned} objects, expected {unknown}:\n{stdout}{stderr}"
    );
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).expect("writing a temporary file");
    path
}

/// Writes every file of a ConfigMap into `dir` (as the kubelet would) and runs
/// `airlock validate` on its policy.yaml.
fn validate_configmap_policy(configmap: &Value, what: &str) -> Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = at(configmap, "data")
        .as_mapping()
        .expect("ConfigMap data is a map");
    for (name, content) in data {
        write(dir.path(), s(name), s(content));
    }
    let policy = dir.path().join("policy.yaml");
    assert!(policy.exists(), "{what}: the ConfigMap has no policy.yaml");
    let result = airlock(&["validate", "-f", policy.to_str().expect("utf-8 path")]);
    assert_eq!(
        result.code,
        0,
        "{what}: airlock validate rejected the policy:\n{}{}\n--- policy.yaml ---\n{}",
        result.stdout,
        result.stderr,
        s(&data[&Value::from("policy.yaml")])
    );
    serde_norway::from_str(&fs::read_to_string(&policy).expect("reading policy.yaml"))
        .expect("policy.yaml parses")
}

fn pod_spec(daemonset: &Value) -> &Value {
    at(daemonset, "spec.template.spec")
}

fn agent(daemonset: &Value) -> &Value {
    named(at(pod_spec(daemonset), "containers"), "agent")
}

fn args(daemonset: &Value) -> Vec<&str> {
    strings(at(agent(daemonset), "args"))
}

/// The value after `flag` in the agent's arguments (every occurrence).
fn flag_values<'a>(args: &[&'a str], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1])
        .collect()
}

// ---------------------------------------------------------------------------
// Lint, render, validate

#[test]
fn helm_lint_strict_passes() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    for extra in [
        &[][..],
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "ifacePattern=ens*",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint --strict {extra:?} failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn default_install_renders_and_validates_for_each_kubernetes_version() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for version in KUBE_VERSIONS {
        let yaml = render(version, &["--set", "namespace.create=true"]);
        let objects = parse_objects(&yaml);
        assert_eq!(
            kinds(&objects),
            DEFAULT_KINDS,
            "objects rendered for {version}"
        );
        for o in &objects {
            assert_eq!(
                at(o, "metadata.name")
                    .as_str()
                    .map(|n| n.starts_with("airlock")),
                Some(true)
            );
        }
        let file = write(dir.path(), &format!("rendered-{version}.yaml"), &yaml);
        validate(version, &[&file], DEFAULT_KINDS.len(), 0);
    }
}

#[test]
fn every_optional_object_renders_and_validates() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let values = write(
        dir.path(),
        "values.yaml",
        r#"
namespace: {create: true}
ifacePattern: ["eth*", "bond0"]
metrics:
  port: 9500
  listen: podIPv6
  serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
securityContext: {extraCapabilities: [SYS_RESOURCE]}
imagePullSecrets: [{name: regcred}]
image: {repository: registry.example/airlock, tag: "1.2.3", pullPolicy: Always}
podAnnotations: {team: platform}
podLabels: {tier: node}
detachOnExit: true
policyFiles:
  partners.txt: |
    # partner ranges
    192.0.2.0/24
policy:
  version: 1
  mode: monitor
  default: drop
  management: [203.0.113.7/32]
  sets:
    partners: {file: partners.txt}
  deny: [192.0.2.66/32]
  rules:
    - name: postgres
      ports: [5432/tcp, 6432]
      from: [airbyte-eu, partners]
"#,
    );
    let values = values.to_str().expect("utf-8 path");
    for version in KUBE_VERSIONS {
        let yaml = render(version, &["-f", values]);
        let objects = parse_objects(&yaml);
        assert_eq!(
            kinds(&objects),
            [
                "Namespace",
                "ServiceAccount",
                "ConfigMap",
                "Service",
                "DaemonSet",
                "ServiceMonitor"
            ],
            "objects rendered for {version}"
        );
        let file = write(dir.path(), &format!("everything-{version}.yaml"), &yaml);
        // The ServiceMonitor is a custom resource: the validator has no schema for it.
        validate(version, &[&file], 5, 1);

        let ds = find(&objects, "DaemonSet");
        let args = args(ds);
        assert_eq!(flag_values(&args, "--iface"), ["eth*", "bond0"]);
        assert_eq!(flag_values(&args, "--metrics-addr"), ["[$(POD_IP)]:9500"]);
        assert!(args.contains(&"--detach-on-exit"));
        assert_eq!(
            strings(at(agent(ds), "securityContext.capabilities.add")),
            ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
        );
        assert_eq!(s(at(agent(ds), "image")), "registry.example/airlock:1.2.3");
        let service = find(&objects, "Service");
        assert_eq!(s(at(service, "spec.clusterIP")), "None");
        assert_eq!(
            at(service, "spec.selector"),
            at(ds, "spec.selector.matchLabels")
        );
        let monitor = find(&objects, "ServiceMonitor");
        assert_eq!(
            s(at(&seq(at(monitor, "spec.endpoints"))[0], "port")),
            "metrics"
        );
        let policy = validate_configmap_policy(find(&objects, "ConfigMap"), "everything");
        assert_eq!(s(at(&policy, "mode")), "monitor");
    }
}

#[test]
fn kubernetes_before_1_25_is_refused() {
    let out = try_render("1.24.0", &[]);
    assert!(
        !out.status.success(),
        "the chart rendered for Kubernetes 1.24"
    );
    assert!(
        text(&out.stderr).contains("kubeVersion"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// values.schema.json

#[test]
fn schema_rejects_bad_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "interfaces=oops"], "/interfaces"),
        (&["--set", "interfaces={}"], "/interfaces"),
        (&["--set", "interfaces={eth0/1}"], "/interfaces/0"),
        (&["--set", "ifacePattern={}"], "/ifacePattern"),
        (&["--set", "policy.mode=turbo"], "/policy/mode"),
        (&["--set", "policy.default=reject"], "/policy/default"),
        (&["--set", "policy.version=2"], "/policy/version"),
        (&["--set", "policy.interfaces={eth0}"], "interfaces"),
        (&["--set", "policy.rulez={}"], "rulez"),
        (&["--set", "metrics.listen=everywhere"], "/metrics/listen"),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (
            &["--set-json", "metrics.allowFrom=[7]"],
            "/metrics/allowFrom",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "updateStrategy.maxUnavailable=0"],
            "/updateStrategy",
        ),
        (
            &["--set", "securityContext.extraCapabilities={SYS_MODULE}"],
            "extraCapabilities",
        ),
        (
            &["--set", "securityContext.seccompProfile=Localhost"],
            "seccompProfile",
        ),
        (&["--set", "pinRoot=/var/lib/airlock"], "/pinRoot"),
        (&["--set", "log.format=xml"], "/log/format"),
        (&["--set", "tolerations=oops"], "/tolerations"),
        (&["--set", "hostNetwork=false"], "hostNetwork"),
        (&["--set", "policyFiles.policy\\.yaml=x"], "policy.yaml"),
    ];
    for (args, mentions) in cases {
        let out = try_render("1.33.0", args);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "helm template {args:?} was accepted; the schema should refuse it"
        );
        assert!(
            stderr.contains("schema") && stderr.contains(mentions),
            "helm template {args:?} failed without a schema error naming {mentions:?}:\n{stderr}"
        );
    }
}

#[test]
fn schema_accepts_the_documented_overrides() {
    let cases: &[&[&str]] = &[
        &["--set", "interfaces={eth0,eth1}"],
        &["--set", "ifacePattern=ens*"],
        &["--set", "ifacePattern={eth*,bond0}"],
        &["--set", "metrics.listen=loopback"],
        &["--set", "metrics.listen=any"],
        &[
            "--set",
            "policy.mode=monitor",
            "--set",
            "policy.default=drop",
        ],
        &["--set", "updateStrategy.maxUnavailable=10%"],
        &["--set", "securityContext.extraCapabilities={SYS_ADMIN}"],
        &["--set", "securityContext.privileged=true"],
        &["--set", "priorityClassName="],
    ];
    for args in cases {
        render("1.33.0", args);
    }
}

// ---------------------------------------------------------------------------
// deploy/kubernetes

fn plain_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn plain_manifests_match_a_fresh_render() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = run(Command::new("bash")
        .arg(root().join("deploy/kubernetes/render.sh"))
        .arg(dir.path())
        .env("HELM", tools().helm));
    assert!(
        out.status.success(),
        "render.sh failed:\n{}",
        text(&out.stderr)
    );
    let read = |files: Vec<PathBuf>| -> BTreeMap<String, String> {
        files
            .into_iter()
            .map(|p| {
                let name = p.file_name().expect("file name").to_string_lossy().into();
                (name, fs::read_to_string(&p).expect("reading a manifest"))
            })
            .collect()
    };
    let mut fresh: Vec<PathBuf> = fs::read_dir(dir.path())
        .expect("render output")
        .map(|e| e.expect("dir entry").path())
        .collect();
    fresh.sort();
    let (committed, fresh) = (read(plain_manifests()), read(fresh));
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>(),
        "deploy/kubernetes holds other files than render.sh writes"
    );
    for (name, content) in &fresh {
        assert!(
            committed[name] == *content,
            "deploy/kubernetes/{name} differs from a fresh render of the chart: run deploy/kubernetes/render.sh"
        );
    }
}

#[test]
fn plain_manifests_validate_strictly() {
    let files = plain_manifests();
    let mut all = Vec::new();
    for file in &files {
        let objects = parse_objects(&fs::read_to_string(file).expect("reading a manifest"));
        assert_eq!(objects.len(), 1, "{} holds one object", file.display());
        all.extend(objects);
    }
    assert_eq!(kinds(&all), DEFAULT_KINDS);
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    for version in KUBE_VERSIONS {
        validate(version, &files, DEFAULT_KINDS.len(), 0);
    }
    let policy = validate_configmap_policy(find(&all, "ConfigMap"), "deploy/kubernetes");
    assert_eq!(strings(at(&policy, "interfaces")), ["auto"]);
}

/// The chart's CRDs (generated from crds/src/ by `cargo xtask crds`; the crds crate's
/// own test checks they match the types) are valid CustomResourceDefinitions for every
/// Kubernetes version the chart supports. kubernetes-validate checks the CRD objects
/// against the API's schema; it does not compile the CEL rules or check that the
/// schemas are structural, which only an API server does.
#[test]
fn chart_crds_validate_strictly() {
    let file = chart().join("crds/airlock.dev.yaml");
    let objects = parse_objects(&fs::read_to_string(&file).expect("reading the CRDs"));
    let names: Vec<&str> = objects.iter().map(|o| s(at(o, "metadata.name"))).collect();
    assert_eq!(
        names,
        [
            "airlockpolicies.airlock.dev",
            "airlockpolicyrevisions.airlock.dev",
            "airlocksourceshards.airlock.dev",
            "airlocknodestatuses.airlock.dev",
        ]
    );
    for version in KUBE_VERSIONS {
        validate(version, &[file.as_path()], names.len(), 0);
    }
}

/// `source: kubernetes`: the agent takes AirlockPolicy resources, with RBAC as
/// narrow as RBAC can be and the admission policy that keeps each agent to its own
/// node's status object; no ConfigMap. Refused before 1.30 (no
/// ValidatingAdmissionPolicy v1, no node name in service account tokens).
#[test]
fn kubernetes_source_renders_rbac_and_admission_policy() {
    for version in ["1.33.0", "1.37.0"] {
        let yaml = render(version, &["--set", "source=kubernetes"]);
        let objects = parse_objects(&yaml);
        assert_eq!(
            kinds(&objects),
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding"
            ]
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = write(dir.path(), "rendered.yaml", &yaml);
        validate(version, &[file.as_path()], objects.len(), 0);

        let daemonset = find(&objects, "DaemonSet");
        let args = args(daemonset);
        assert_eq!(flag_values(&args, "--kubernetes-node"), ["$(NODE_NAME)"]);
        assert_eq!(
            flag_values(&args, "--cache-dir"),
            ["/var/lib/airlock/fleet"]
        );
        assert!(flag_values(&args, "-f").is_empty(), "{args:?}");
        assert_eq!(
            at(pod_spec(daemonset), "automountServiceAccountToken"),
            &Value::Bool(true)
        );

        // Read the policy resources and nodes; write only node statuses, never delete.
        let rules = seq(at(find(&objects, "ClusterRole"), "rules"));
        for rule in rules {
            let verbs = strings(at(rule, "verbs"));
            let resources = strings(at(rule, "resources"));
            if resources == ["airlocknodestatuses"] {
                assert_eq!(verbs, ["get", "create", "patch"]);
            } else {
                assert_eq!(verbs, ["get", "list", "watch"], "{resources:?}");
            }
        }
        let vap = find(&objects, "ValidatingAdmissionPolicy");
        assert_eq!(s(at(vap, "spec.failurePolicy")), "Fail");
        let check = s(at(&seq(at(vap, "spec.validations"))[0], "expression"));
        assert!(
            check.contains("request.name == request.userInfo.extra['authentication.kubernetes.io/node-name'][0]"),
            "{check}"
        );
        let binding = find(&objects, "ValidatingAdmissionPolicyBinding");
        assert_eq!(strings(at(binding, "spec.validationActions")), ["Deny"]);
    }
    let old = try_render("1.28.0", &["--set", "source=kubernetes"]);
    assert!(!old.status.success());
    assert!(
        text(&old.stderr).contains("needs Kubernetes 1.30"),
        "{}",
        text(&old.stderr)
    );
}

// ---------------------------------------------------------------------------
// The policy

#[test]
fn default_policy_passes_airlock_validate_and_cannot_lock_anyone_out() {
    let objects = parse_objects(&render("1.33.0", &[]));
    let policy = validate_configmap_policy(find(&objects, "ConfigMap"), "default values");
    assert_eq!(at(&policy, "version").as_u64(), Some(1));
    assert_eq!(strings(at(&policy, "interfaces")), ["auto"]);
    assert_eq!(s(at(&policy, "default")), "pass");
    assert_eq!(s(at(&policy, "mode")), "enforce");
    let rule = named(at(&policy, "rules"), "airbyte-to-postgres");
    assert_eq!(strings(at(rule, "ports")), ["5432/tcp"]);
    assert!(strings(at(rule, "from")).contains(&"airbyte-eu"));
    assert!(strings(at(rule, "from")).contains(&"office"));
    // Documentation ranges only, for the office.
    for cidr in strings(at(&policy, "sets.office")) {
        assert!(
            cidr.starts_with("198.51.100.")
                || cidr.starts_with("203.0.113.")
                || cidr.starts_with("192.0.2.")
                || cidr.starts_with("2001:db8:"),
            "office set {cidr} is not a documentation range"
        );
    }
}

/// The verdict (`pass`/`drop`) `airlock explain` gives for `src` to `port` under
/// the ConfigMap's policy.
fn explain_configmap(configmap: &Value, src: &str, port: &str) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, content) in at(configmap, "data").as_mapping().expect("data") {
        write(dir.path(), s(name), s(content));
    }
    let policy = dir.path().join("policy.yaml");
    let policy = policy.to_str().expect("utf-8 path");
    let run = airlock(&[
        "explain", "-f", policy, "--src", src, "--port", port, "-o", "json",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).expect("explain JSON");
    answer["verdict"].as_str().expect("verdict").to_owned()
}

#[test]
fn the_metrics_port_is_open_only_to_metrics_allow_from_through_the_policy() {
    let metrics_rule = |extra: &[&str]| {
        let objects = parse_objects(&render("1.33.0", extra));
        let configmap = find(&objects, "ConfigMap").clone();
        let policy = validate_configmap_policy(&configmap, &format!("{extra:?}"));
        let rule = seq(at(&policy, "rules"))
            .iter()
            .find(|r| s(at(r, "name")) == "airlock-metrics")
            .cloned();
        (configmap, rule)
    };
    // On by default: the private ranges a cluster's Prometheus scrapes from.
    let (configmap, rule) = metrics_rule(&[]);
    let rule = rule.expect("a rule for the metrics port by default");
    assert_eq!(strings(at(&rule, "ports")), ["9477/tcp"]);
    assert_eq!(
        strings(at(&rule, "from")),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
    );
    assert_eq!(
        explain_configmap(&configmap, "10.244.1.7", "9477/tcp"),
        "pass"
    );
    assert_eq!(explain_configmap(&configmap, "fd00::7", "9477/tcp"), "pass");
    assert_eq!(
        explain_configmap(&configmap, "203.0.113.10", "9477/tcp"),
        "drop"
    );
    assert_eq!(
        explain_configmap(&configmap, "203.0.113.10", "22/tcp"),
        "pass"
    );

    // It follows the port and the list.
    let (configmap, rule) = metrics_rule(&[
        "--set",
        "metrics.port=9500",
        "--set-json",
        r#"metrics.allowFrom=["10.244.0.0/16", "office"]"#,
    ]);
    let rule = rule.expect("metrics rule");
    assert_eq!(strings(at(&rule, "ports")), ["9500/tcp"]);
    assert_eq!(strings(at(&rule, "from")), ["10.244.0.0/16", "office"]);
    assert_eq!(
        explain_configmap(&configmap, "10.1.0.1", "9500/tcp"),
        "drop"
    );
    assert_eq!(
        explain_configmap(&configmap, "198.51.100.9", "9500/tcp"),
        "pass"
    );

    // No rule when asked for none, or when nothing off the node can connect.
    assert!(
        metrics_rule(&["--set-json", "metrics.allowFrom=[]"])
            .1
            .is_none()
    );
    assert!(
        metrics_rule(&["--set", "metrics.listen=loopback"])
            .1
            .is_none()
    );
}

#[test]
fn interface_values_reach_the_policy_and_the_agent() {
    let objects = parse_objects(&render("1.33.0", &["--set", "interfaces={eth0,eth1}"]));
    let policy = validate_configmap_policy(find(&objects, "ConfigMap"), "interfaces={eth0,eth1}");
    assert_eq!(strings(at(&policy, "interfaces")), ["eth0", "eth1"]);
    assert!(flag_values(&args(find(&objects, "DaemonSet")), "--iface").is_empty());

    let objects = parse_objects(&render("1.33.0", &["--set", "ifacePattern=ens*"]));
    assert_eq!(
        flag_values(&args(find(&objects, "DaemonSet")), "--iface"),
        ["ens*"]
    );
}

// ---------------------------------------------------------------------------
// What the DaemonSet must get right

#[test]
fn daemonset_is_shaped_for_an_xdp_agent() {
    let objects = parse_objects(&render("1.33.0", &[]));
    for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(
            !kinds(&objects).iter().any(|k| k == kind),
            "no RBAC: {kind}"
        );
    }
    let sa = find(&objects, "ServiceAccount");
    assert_eq!(
        at(sa, "automountServiceAccountToken").as_bool(),
        Some(false)
    );
    let configmap = find(&objects, "ConfigMap");
    let ds = find(&objects, "DaemonSet");
    let pod = pod_spec(ds);

    // Pod level.
    assert_eq!(at(pod, "hostNetwork").as_bool(), Some(true));
    assert_eq!(s(at(pod, "dnsPolicy")), "ClusterFirstWithHostNet");
    assert_eq!(
        at(pod, "automountServiceAccountToken").as_bool(),
        Some(false)
    );
    assert_eq!(s(at(pod, "serviceAccountName")), s(at(sa, "metadata.name")));
    assert_eq!(s(at(pod, "priorityClassName")), "system-node-critical");
    assert_eq!(seq(at(pod, "tolerations")).len(), 1);
    assert_eq!(s(at(&seq(at(pod, "tolerations"))[0], "operator")), "Exists");
    assert!(at(pod, "terminationGracePeriodSeconds").as_u64().unwrap() <= 30);
    assert_eq!(
        s(at(pod, "securityContext.seccompProfile.type")),
        "RuntimeDefault"
    );
    for key in ["hostPID", "hostIPC"] {
        assert!(pod.get(key).is_none(), "{key} is not needed");
    }

    // Rolling update: one node at a time, never two agents on a node.
    assert_eq!(s(at(ds, "spec.updateStrategy.type")), "RollingUpdate");
    assert_eq!(
        at(ds, "spec.updateStrategy.rollingUpdate.maxUnavailable").as_u64(),
        Some(1)
    );
    assert_eq!(
        at(ds, "spec.updateStrategy.rollingUpdate.maxSurge").as_u64(),
        Some(0)
    );

    // The agent reloads the policy itself: no restart-on-change annotation.
    let annotations = at(ds, "spec.template.metadata.annotations");
    assert!(
        annotations
            .as_mapping()
            .unwrap()
            .keys()
            .all(|k| !s(k).starts_with("checksum/")),
        "a checksum annotation would restart every agent on a policy change"
    );
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9477"));

    // Volumes.
    let volumes = at(pod, "volumes");
    assert_eq!(
        s(at(named(volumes, "bpffs"), "hostPath.path")),
        "/sys/fs/bpf"
    );
    assert_eq!(
        s(at(named(volumes, "state"), "hostPath.path")),
        "/run/airlock"
    );
    assert_eq!(
        s(at(named(volumes, "policy"), "configMap.name")),
        s(at(configmap, "metadata.name"))
    );

    // The init step: privileged, only to mount bpffs and propagate it to the host.
    let inits = seq(at(pod, "initContainers"));
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(at(init, "securityContext.privileged").as_bool(), Some(true));
    let script = strings(at(init, "command")).join(" ");
    assert!(
        script.contains("mount -t bpf -o mode=0700 bpf /sys/fs/bpf"),
        "{script}"
    );
    let mount = named(at(init, "volumeMounts"), "bpffs");
    assert_eq!(s(at(mount, "mountPath")), "/sys/fs/bpf");
    assert_eq!(s(at(mount, "mountPropagation")), "Bidirectional");
    assert!(init.get("resources").is_some());

    // The agent: not privileged, every capability dropped but BPF, NET_ADMIN and
    // PERFMON.
    let agent = agent(ds);
    let sc = at(agent, "securityContext");
    assert_eq!(at(sc, "privileged").as_bool(), Some(false));
    assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(strings(at(sc, "capabilities.drop")), ["ALL"]);
    // PERFMON: measured, see docs/kubernetes.md ("Capabilities, and why").
    assert_eq!(
        strings(at(sc, "capabilities.add")),
        ["BPF", "NET_ADMIN", "PERFMON"]
    );
    assert_eq!(
        at(&init["securityContext"], "readOnlyRootFilesystem").as_bool(),
        Some(true)
    );
    for container in [agent, init] {
        assert!(at(container, "resources.requests").is_mapping());
        assert!(at(container, "resources.limits.memory").as_str().is_some());
    }

    // Mounts: host bpffs (HostToContainer), the lock directory, the ConfigMap as a
    // directory. No subPath anywhere: a subPath mount never sees an update.
    let mounts = at(agent, "volumeMounts");
    let bpffs = named(mounts, "bpffs");
    assert_eq!(s(at(bpffs, "mountPath")), "/sys/fs/bpf");
    assert_eq!(s(at(bpffs, "mountPropagation")), "HostToContainer");
    assert_eq!(s(at(named(mounts, "state"), "mountPath")), "/run/airlock");
    let policy = named(mounts, "policy");
    assert_eq!(s(at(policy, "mountPath")), POLICY_DIR);
    assert_eq!(at(policy, "readOnly").as_bool(), Some(true));
    for container in [agent, init] {
        for m in seq(at(container, "volumeMounts")) {
            assert!(
                m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
                "{m:?}"
            );
        }
    }

    // Arguments agree with the mounts.
    let args = args(ds);
    assert_eq!(args[..3], ["agent", "-f", "/etc/airlock/policy.yaml"]);
    assert!(configmap["data"].get("policy.yaml").is_some());
    let pin_root = flag_values(&args, "--pin-root");
    assert_eq!(pin_root, ["/sys/fs/bpf/airlock"]);
    assert_eq!(flag_values(&args, "--state-dir"), ["/run/airlock"]);
    assert_eq!(flag_values(&args, "--metrics-addr"), ["$(POD_IP):9477"]);
    assert_eq!(flag_values(&args, "--log-format"), ["json"]);
    assert!(
        !args.contains(&"--detach-on-exit"),
        "the filter must outlive the pod"
    );
    assert!(flag_values(&args, "--iface").is_empty());
    let pod_ip = named(at(agent, "env"), "POD_IP");
    assert_eq!(
        s(at(pod_ip, "valueFrom.fieldRef.fieldPath")),
        "status.podIP"
    );
    assert_eq!(
        s(at(named(at(agent, "env"), "AIRLOCK_LOG"), "value")),
        "info"
    );

    // Probes on the agent's own endpoints, through the named metrics port.
    let port = named(at(agent, "ports"), "metrics");
    assert_eq!(at(port, "containerPort").as_u64(), Some(9477));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(agent, &format!("{probe}.httpGet"));
        assert_eq!(s(at(get, "path")), path);
        assert_eq!(s(at(get, "port")), "metrics");
        // Unset host: the kubelet probes the pod IP, which is the node's address
        // here, where the agent listens.
        assert!(get.get("host").is_none());
    }
}

#[test]
fn loopback_metrics_probe_127_0_0_1_and_are_not_scraped() {
    let objects = parse_objects(&render("1.33.0", &["--set", "metrics.listen=loopback"]));
    let ds = find(&objects, "DaemonSet");
    assert_eq!(flag_values(&args(ds), "--metrics-addr"), ["127.0.0.1:9477"]);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            s(at(agent(ds), &format!("{probe}.httpGet.host"))),
            "127.0.0.1"
        );
    }
    assert!(
        at(ds, "spec.template.metadata")
            .get("annotations")
            .is_none()
    );
    let out = try_render(
        "1.33.0",
        &[
            "--set",
            "metrics.listen=loopback",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(
        !out.status.success(),
        "a ServiceMonitor can't scrape a loopback listener"
    );
}

#[test]
fn privileged_fallback_replaces_the_capability_list() {
    let objects = parse_objects(&render(
        "1.33.0",
        &["--set", "securityContext.privileged=true"],
    ));
    let sc = at(agent(find(&objects, "DaemonSet")), "securityContext");
    assert_eq!(at(sc, "privileged").as_bool(), Some(true));
    assert!(sc.get("capabilities").is_none());
}

// ---------------------------------------------------------------------------
// The image

/// JSON-form instruction arguments (`ENTRYPOINT ["..."]`) of the last `instr` line.
fn exec_form(containerfile: &str, instr: &str) -> Vec<String> {
    let line = containerfile
        .lines()
        .rfind(|l| l.starts_with(&format!("{instr} ")))
        .unwrap_or_else(|| panic!("the Containerfile has no {instr}"));
    serde_json::from_str(line[instr.len()..].trim())
        .unwrap_or_else(|e| panic!("{instr} is not in exec (JSON) form: {e}"))
}

#[test]
fn containerfile_ships_the_tested_binary_with_the_charts_arguments() {
    let containerfile =
        fs::read_to_string(root().join("deploy/container/Containerfile")).expect("Containerfile");
    let froms: Vec<&str> = containerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    // Built from local files only (`cargo xtask image`): no base image to pull.
    assert_eq!(froms, ["FROM scratch"]);
    assert!(
        containerfile.contains("\nCOPY airlock /usr/local/bin/airlock\n"),
        "the image takes the binary `cargo xtask image` copies from target/release/airlock"
    );
    let xtask = fs::read_to_string(root().join("xtask/src/image.rs")).expect("xtask image");
    assert!(
        xtask.contains("\"target/release/airlock\"") && xtask.contains("\"dash\""),
        "xtask image ships target/release/airlock, the binary `cargo xtask test` drives, and a shell"
    );
    assert_eq!(
        exec_form(&containerfile, "ENTRYPOINT"),
        ["/usr/local/bin/airlock"]
    );

    // The image's default command and the DaemonSet's arguments run the same agent
    // on the same policy path; the init container's shell is in the image.
    let objects = parse_objects(&render("1.33.0", &[]));
    let ds = find(&objects, "DaemonSet");
    let cmd = exec_form(&containerfile, "CMD");
    assert_eq!(cmd, args(ds)[..3]);
    assert!(
        agent(ds).get("command").is_none(),
        "the agent runs the image's ENTRYPOINT"
    );
    let init = &seq(at(pod_spec(ds), "initContainers"))[0];
    assert_eq!(s(&seq(at(init, "command"))[0]), "/bin/sh");
    assert_eq!(s(at(init, "image")), s(at(agent(ds), "image")));
}

#[test]
fn binary_needs_only_libraries_the_runtime_image_has() {
    let bin = airlock_bin();
    let out = run(Command::new("ldd").arg(&bin));
    assert!(
        out.status.success(),
        "ldd {}: {}",
        bin.display(),
        text(&out.stderr)
    );
    // glibc and libgcc_s: both in the image's root filesystem (libc6, libgcc-s1).
    let allowed = [
        "linux-vdso.so",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    for line in text(&out.stdout).lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let name = lib.rsplit('/').next().unwrap_or_default();
        assert!(
            allowed.iter().any(|a| name.starts_with(a)),
            "{} links {lib}, which the runtime image may not have",
            bin.display()
        );
    }
}

#[test]
fn daemonset_arguments_are_accepted_by_the_agent() {
    let help = airlock(&["agent", "--help"]);
    assert_eq!(
        help.code, 0,
        "`airlock agent --help` failed; the DaemonSet runs `airlock agent`:\n{}",
        help.stderr
    );
    let objects = parse_objects(&render(
        "1.33.0",
        &["--set", "ifacePattern=ens*", "--set", "detachOnExit=true"],
    ));
    for arg in args(find(&objects, "DaemonSet")) {
        if arg.starts_with('-') {
            assert!(
                help.stdout.contains(arg),
                "`airlock agent` has no {arg} option:\n{}",
                help.stdout
            );
        }
    }
}
