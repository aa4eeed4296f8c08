//! `airlock ranges fetch|diff` against an HTTPS server on 127.0.0.1 in a namespace
//! the test creates, with a CA the test makes (no test reaches a provider): the
//! trust check, a checked snapshot with provenance, the shrink guard keeping the
//! last good snapshot, a malformed and a changed document refused, a diff, and a
//! policy enforcing a provider set; the agent's scheduled refresh putting an added
//! range in force on real packets, and refusing a shrink, a malformed document
//! and a schema change while the old list keeps enforcing. Needs root
//! (namespaces); fails without it.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use airlock_integration::{
    agent::{self, Agent},
    cli::{Run, airlock_bin},
    fixture::{Fixture, PORT},
    https::{HttpsServer, TestCa},
    netns::{Namespace, addr, require_root, unique_name, wait_until},
};
use serde_json::Value;

const AWS: &str = include_str!("../../userspace/src/ranges/samples/aws.json");
const GITHUB: &str = include_str!("../../userspace/src/ranges/samples/github.json");

struct Bed {
    ns: Namespace,
    server: HttpsServer,
    dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Self {
        require_root();
        let ns = Namespace::new(unique_name("rng"));
        let ca = TestCa::new();
        let server = HttpsServer::start(&ns, &ca);
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("ca.pem"), &ca.ca_pem).expect("write CA");
        Self { ns, server, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `airlock ranges <args>` in the namespace; `ca` adds the test CA by --ca-file.
    fn ranges(&self, args: &[&str], ca: bool) -> Run {
        let mut command = self.ns.command(airlock_bin());
        command.arg("ranges").args(args).env("NO_COLOR", "1");
        command.env_remove("AIRLOCK_RANGES_CA");
        if ca {
            command.args(["--ca-file", &self.path("ca.pem")]);
        }
        command.output().expect("running airlock").into()
    }

    fn fetch(&self, provider: &str, path: &str, out: &str, extra: &[&str]) -> Run {
        let url = HttpsServer::url(path);
        let mut args = vec!["fetch", provider, "--url", &url, "--out", out, "-o", "json"];
        args.extend_from_slice(extra);
        self.ranges(&args, true)
    }
}

fn json(run: &Run, code: i32) -> Value {
    assert_eq!(
        run.code, code,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn assert_schema(name: &str, value: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{name}.schema.json"));
    let schema: Value = serde_json::from_str(&fs::read_to_string(&path).expect("schema")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{value:#}");
}

fn sha256_of(text: &str) -> String {
    airlock::ranges::snapshot::sha256_hex(text.as_bytes())
}

#[test]
fn fetch_checks_the_server_and_writes_a_snapshot_with_provenance() {
    let bed = Bed::new();
    bed.server.set("/ip-ranges.json", AWS, None);
    let out = bed.path("aws.json");
    let url = HttpsServer::url("/ip-ranges.json");

    // Not signed by a root this client trusts: refused, nothing written.
    let run = bed.ranges(&["fetch", "aws", "--url", &url, "--out", &out], false);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!Path::new(&out).exists());
    // Plain HTTP is never fetched.
    let run = bed.ranges(
        &[
            "fetch",
            "aws",
            "--url",
            "http://localhost:8443/ip-ranges.json",
            "--out",
            &out,
        ],
        true,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("https"), "{}", run.stderr);

    // With the test CA (the option, then the environment variable).
    let fetched = json(&bed.fetch("aws", "/ip-ranges.json", &out, &[]), 0);
    assert_schema("ranges-fetch", &fetched);
    assert_eq!(fetched["version"], "1765003989");
    assert_eq!(fetched["sha256"], sha256_of(AWS).as_str());
    assert_eq!(fetched["ranges"], 6);
    assert_eq!(fetched["url"], url.as_str());
    assert_eq!(fetched["change"], Value::Null);
    let snapshot: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(snapshot["document"], AWS);
    assert_eq!(snapshot["provider"], "aws");
    let run: Run = bed
        .ns
        .command(airlock_bin())
        .args(["ranges", "fetch", "aws", "--url", &url, "--out", &out])
        .env("AIRLOCK_RANGES_CA", bed.path("ca.pem"))
        .output()
        .expect("airlock")
        .into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("+0 -0"), "{}", run.stdout);

    // GitHub's document has no version stamp: the ETag is recorded.
    bed.server.set("/meta", GITHUB, Some("W/\"7a3b\""));
    let github = json(
        &bed.fetch("github", "/meta", &bed.path("github.json"), &[]),
        0,
    );
    assert_eq!(github["version"], "W/\"7a3b\"");
}

#[test]
fn a_refresh_that_drops_too_much_is_refused_and_the_last_good_snapshot_kept() {
    let bed = Bed::new();
    bed.server.set("/ip-ranges.json", AWS, None);
    let out = bed.path("aws.json");
    json(&bed.fetch("aws", "/ip-ranges.json", &out, &[]), 0);
    let good = fs::read_to_string(&out).unwrap();
    fs::write(bed.path("old.json"), &good).unwrap();

    // One of six ranges gone (17%): over the default 10%.
    let shrunk = AWS.replace("\"15.236.0.0/15\"", "\"13.37.0.0/16\"");
    bed.server.set("/ip-ranges.json", &shrunk, None);
    let run = bed.fetch("aws", "/ip-ranges.json", &out, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused") && run.stderr.contains("max-removed"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        good,
        "the good snapshot must stay"
    );

    // Malformed, truncated, and a schema change: refused, nothing replaced.
    for (body, names) in [
        (
            AWS.replace("13.37.0.0/16", "13.37.0.0/99"),
            "prefixes[1].ip_prefix",
        ),
        (AWS[..AWS.len() / 3].to_owned(), "aws"),
        (
            AWS.replace("\"ipv6_prefixes\"", "\"v6_prefixes\""),
            "ipv6_prefixes",
        ),
    ] {
        bed.server.set("/ip-ranges.json", &body, None);
        let run = bed.fetch("aws", "/ip-ranges.json", &out, &[]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(names), "{names}: {}", run.stderr);
        assert_eq!(fs::read_to_string(&out).unwrap(), good);
    }

    // Accepted when the operator allows that much change; the diff says what.
    bed.server.set("/ip-ranges.json", &shrunk, None);
    let fetched = json(
        &bed.fetch("aws", "/ip-ranges.json", &out, &["--max-removed", "20%"]),
        0,
    );
    assert_eq!(fetched["change"]["removed"], 1);
    assert_eq!(fetched["change"]["previous_version"], "1765003989");
    let diff = json(
        &bed.ranges(&["diff", &bed.path("old.json"), &out, "-o", "json"], false),
        0,
    );
    assert_schema("ranges-diff", &diff);
    assert_eq!(diff["diff"]["removed"], 1);
    let group = &diff["diff"]["groups"][0];
    assert_eq!(
        (&group["region"], &group["service"]),
        (&"eu-west-3".into(), &"EC2".into())
    );
    assert_eq!(group["removed"], serde_json::json!(["15.236.0.0/15"]));
    let human = bed.ranges(&["diff", &bed.path("old.json"), &out], false);
    assert!(human.stdout.contains("- 15.236.0.0/15"), "{}", human.stdout);

    // Per set of a policy: what each set's filter gains and loses.
    let policy = bed.path("policy.yaml");
    fs::write(
        &policy,
        "version: 1\nsets:\n  paris-ec2:\n    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: EC2\n  virginia:\n    provider: aws\n    snapshot: aws.json\n    region: us-east-1\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [paris-ec2, virginia]\n",
    )
    .unwrap();
    let diff = json(
        &bed.ranges(
            &[
                "diff",
                &bed.path("old.json"),
                &out,
                "-f",
                &policy,
                "-o",
                "json",
            ],
            false,
        ),
        0,
    );
    assert_schema("ranges-diff", &diff);
    let sets = diff["sets"].as_array().expect("sets");
    assert_eq!(sets.len(), 2, "{diff:#}");
    assert_eq!(sets[0]["set"], "paris-ec2");
    assert_eq!(sets[0]["removed"], serde_json::json!(["15.236.0.0/15"]));
    assert_eq!(
        (&sets[0]["old_ranges"], &sets[0]["new_ranges"]),
        (&3.into(), &2.into())
    );
    assert_eq!(sets[1]["set"], "virginia");
    assert_eq!(sets[1]["removed"], serde_json::json!([]));
    assert_eq!(sets[1]["snapshot"], out.as_str());
    let human = bed.ranges(&["diff", &bed.path("old.json"), &out, "-f", &policy], false);
    assert!(
        human.stdout.contains("set paris-ec2") && human.stdout.contains("+0 -1 of 3"),
        "{}",
        human.stdout
    );
}

/// `ranges fetch -f POLICY` guards each set of the policy that takes the list, as
/// the agent's scheduled refresh does: a change that removes little of the whole
/// list but much of one set's selection is refused, naming the set; without -f
/// only the whole list is guarded.
#[test]
fn a_fetch_with_a_policy_refuses_a_change_that_empties_one_of_its_sets() {
    let bed = Bed::new();
    bed.server.set("/ip-ranges.json", AWS, None);
    let out = bed.path("aws.json");
    json(&bed.fetch("aws", "/ip-ranges.json", &out, &[]), 0);
    let good = fs::read_to_string(&out).unwrap();
    let policy = bed.path("policy.yaml");
    fs::write(
        &policy,
        "version: 1\ndefault: drop\nsets:\n  paris-ec2:\n    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: EC2\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [paris-ec2]\n",
    )
    .unwrap();
    // One of the list's six ranges gone (17%, under 20%), but one of the three
    // paris-ec2 selects (33%).
    let shrunk = AWS.replace("\"15.236.0.0/15\"", "\"13.37.0.0/16\"");
    bed.server.set("/ip-ranges.json", &shrunk, None);
    let run = bed.fetch(
        "aws",
        "/ip-ranges.json",
        &out,
        &["--max-removed", "20%", "-f", &policy],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused") && run.stderr.contains("1 of the 3 ranges of set paris-ec2"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), good, "nothing written");
    // A policy none of whose sets takes this file: said, not ignored.
    let other = bed.path("other.yaml");
    fs::write(
        &other,
        "version: 1\ndefault: drop\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [192.0.2.0/24]\n",
    )
    .unwrap();
    let run = bed.fetch(
        "aws",
        "/ip-ranges.json",
        &out,
        &["--max-removed", "20%", "-f", &other],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no aws set of"), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&out).unwrap(), good, "nothing written");
    // Without the policy, the whole list alone is guarded: it passes.
    json(
        &bed.fetch("aws", "/ip-ranges.json", &out, &["--max-removed", "20%"]),
        0,
    );
    assert_ne!(fs::read_to_string(&out).unwrap(), good);
}

#[test]
fn a_policy_enforces_a_provider_set_from_the_fetched_snapshot() {
    let bed = Bed::new();
    bed.server.set("/ip-ranges.json", AWS, None);
    json(
        &bed.fetch("aws", "/ip-ranges.json", &bed.path("aws.json"), &[]),
        0,
    );
    let policy = bed.path("policy.yaml");
    fs::write(
        &policy,
        "version: 1\ndefault: drop\nsets:\n  paris-ec2:\n    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: EC2\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [paris-ec2]\n",
    )
    .unwrap();
    let explain = |src: &str| -> Value {
        let run: Run = std::process::Command::new(airlock_bin())
            .args([
                "explain", "-f", &policy, "--src", src, "--port", "5432/tcp", "-o", "json",
            ])
            .output()
            .expect("airlock")
            .into();
        json(&run, 0)
    };
    assert_eq!(explain("15.236.1.2")["verdict"], "pass");
    assert_eq!(explain("15.236.1.2")["set"], "paris-ec2");
    // AMAZON's eu-west-3 range that is not EC2, and another region's.
    assert_eq!(explain("13.38.0.1")["verdict"], "drop");
    assert_eq!(explain("3.5.0.1")["verdict"], "drop");
    // A snapshot edited after the fetch is refused with the file named.
    let path = bed.path("aws.json");
    let edited = fs::read_to_string(&path)
        .unwrap()
        .replace("3.5.0.0/19", "0.0.0.0/0");
    fs::write(&path, edited).unwrap();
    let run: Run = std::process::Command::new(airlock_bin())
        .args(["validate", "-f", &policy])
        .output()
        .expect("airlock")
        .into();
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("SHA-256") && run.stderr.contains("aws.json"),
        "{}",
        run.stderr
    );
}

/// The AWS sample with `cidr` added to eu-west-3's EC2 list (a documentation
/// range, so real test traffic can come from it).
fn aws_with(cidr: &str) -> String {
    AWS.replacen(
        "\"prefixes\": [",
        &format!(
            "\"prefixes\": [\n    {{\n      \"ip_prefix\": \"{cidr}\",\n      \"region\": \"eu-west-3\",\n      \"service\": \"EC2\",\n      \"network_border_group\": \"eu-west-3\"\n    }},"
        ),
        1,
    )
}

/// An agent refreshing, every second, the AWS snapshot a policy's set takes its
/// ranges from, served by an HTTPS server in the agent's own namespace.
struct RefreshBed {
    f: Fixture,
    server: HttpsServer,
    snapshot: PathBuf,
    agent: Agent,
}

impl RefreshBed {
    fn new(prefix: &str, first: &str) -> Self {
        let f = Fixture::new(prefix);
        let ca = TestCa::new();
        let server = HttpsServer::start(&f.bed.server, &ca);
        let ca_path = f.write("ca.pem", &ca.ca_pem);
        server.set("/ip-ranges.json", first, None);
        let snapshot = f.dir.path().join("aws.json");
        let run: Run = f
            .bed
            .server
            .command(airlock_bin())
            .args(["ranges", "fetch", "aws", "--url"])
            .arg(HttpsServer::url("/ip-ranges.json"))
            .arg("--out")
            .arg(&snapshot)
            .arg("--ca-file")
            .arg(&ca_path)
            .output()
            .expect("airlock")
            .into();
        assert_eq!(run.code, 0, "{}", run.stderr);
        let policy = f.write(
            "policy.yaml",
            &format!(
                "version: 1\ninterfaces: [{}]\nsets:\n  paris-ec2:\n    provider: aws\n    snapshot: aws.json\n    region: eu-west-3\n    service: EC2\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [paris-ec2]\n",
                f.bed.server_if
            ),
        );
        let ca_arg = ca_path.display().to_string();
        let agent = Agent::start(
            &f,
            &[],
            &policy,
            &["--refresh-ranges", "1s", "--ranges-ca-file", &ca_arg],
        );
        Self {
            f,
            server,
            snapshot,
            agent,
        }
    }

    /// The count of refreshes with `result` (from `airlock_ranges_refreshes_total`).
    fn refreshes(&self, result: &str) -> f64 {
        let series = format!(
            "airlock_ranges_refreshes_total{{snapshot=\"{}\",provider=\"aws\",result=\"{result}\"}}",
            self.snapshot.display()
        );
        agent::metric(&self.f, &series)
    }

    /// Waits for one more refresh with `result` than `before`.
    fn wait_for(&self, result: &str, before: f64) {
        assert!(
            wait_until(Duration::from_secs(15), || self.refreshes(result) > before),
            "no refresh with result {result}; metrics:\n{}\nlog:\n{}",
            agent::metrics(&self.f),
            self.agent.log()
        );
    }
}

#[test]
fn an_agent_refresh_that_adds_ranges_reaches_the_kernel() {
    let bed = RefreshBed::new("rra", AWS);
    assert!(bed.f.kept_out(addr::PARTNER_V4), "not in the list yet");
    bed.server.set(
        "/ip-ranges.json",
        &aws_with("192.0.2.0/24").replace("1765003989", "1765007777"),
        None,
    );
    bed.wait_for("updated", 0.0);
    assert!(
        wait_until(Duration::from_secs(5), || bed.f.gets_in(addr::PARTNER_V4)),
        "the added range is not in force; log:\n{}",
        bed.agent.log()
    );
    assert!(bed.f.kept_out(addr::STRANGER_V4));
    // The new list is the snapshot on disk, with its provenance.
    let snapshot: Value =
        serde_json::from_str(&fs::read_to_string(&bed.snapshot).unwrap()).unwrap();
    assert_eq!(snapshot["version"], "1765007777");
    let metrics = agent::metrics(&bed.f);
    let path = bed.snapshot.display();
    let count = format!("airlock_ranges_snapshot_ranges{{snapshot=\"{path}\",provider=\"aws\"}} 7");
    assert!(metrics.contains(&count), "{count}\n{metrics}");
    // The last result: this refresh, or the next one, which finds nothing new.
    assert!(
        ["updated", "unchanged"].iter().any(|r| metrics.contains(&format!(
            "airlock_ranges_refresh_last_result{{snapshot=\"{path}\",provider=\"aws\",result=\"{r}\"}} 1"
        ))),
        "{metrics}"
    );
    let success = format!(
        "airlock_ranges_refresh_last_success_timestamp_seconds{{snapshot=\"{path}\",provider=\"aws\"}}"
    );
    assert!(agent::metric_value(&metrics, &success) > 1.7e9, "{metrics}");
    // The same document again changes nothing.
    let unchanged = bed.refreshes("unchanged");
    bed.wait_for("unchanged", unchanged);
    assert_eq!(bed.refreshes("updated"), 1.0);
}

#[test]
fn an_agent_refresh_that_shrinks_or_breaks_the_list_is_refused_and_the_old_list_enforces() {
    let first = aws_with("198.51.100.0/24");
    let bed = RefreshBed::new("rrs", &first);
    assert!(bed.f.gets_in(addr::OFFICE_V4));
    let good = fs::read_to_string(&bed.snapshot).unwrap();

    // The office's range gone: 1 of 7 ranges (14%), 1 of the set's 4 (25%).
    bed.server.set("/ip-ranges.json", AWS, None);
    bed.wait_for("refused_shrink", 0.0);
    let shrinks = format!(
        "airlock_ranges_refresh_refused_shrink_total{{snapshot=\"{}\",provider=\"aws\"}}",
        bed.snapshot.display()
    );
    assert!(agent::metric(&bed.f, &shrinks) >= 1.0);
    assert!(bed.agent.log().contains("refused"), "{}", bed.agent.log());

    // Malformed, then a schema change: refused as documents, the field named.
    for (body, names) in [
        (
            first.replace("13.37.0.0/16", "13.37.0.0/99"),
            "prefixes[2].ip_prefix",
        ),
        (
            first.replace("\"ipv6_prefixes\"", "\"v6_prefixes\""),
            "ipv6_prefixes",
        ),
    ] {
        let before = bed.refreshes("invalid_document");
        bed.server.set("/ip-ranges.json", &body, None);
        assert!(
            wait_until(Duration::from_secs(15), || bed.agent.log().contains(names)),
            "{names} not named; log:\n{}",
            bed.agent.log()
        );
        bed.wait_for("invalid_document", before);
    }
    assert_eq!(fs::read_to_string(&bed.snapshot).unwrap(), good);
    assert!(
        bed.f.gets_in(addr::OFFICE_V4),
        "the old list must keep enforcing"
    );
    assert!(bed.f.kept_out(addr::STRANGER_V4));
    assert_eq!(bed.refreshes("updated"), 0.0);
}
