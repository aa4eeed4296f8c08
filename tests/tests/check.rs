//! `airlock check`, run inside the server namespace of a test bed (it judges the
//! sockets and interfaces of the namespace it runs in), against real listeners and
//! real filters: each class of finding provoked and detected, a clean namespace
//! exiting 0, and the kernel probe catching a policy file that is not the one in
//! force. Needs root; fails (never skips) without it.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use airlock_integration::{
    agent::{Agent, metric, metrics},
    cli::Run,
    fixture::{Fixture, PORT},
    netns::{addr, unique_name, wait_until},
};
use serde_json::Value;

/// A policy for the test bed's interface; `extra` goes at the top level.
fn policy(f: &Fixture, file: &str, body: &str) -> std::path::PathBuf {
    let text = format!(
        "version: 1\ninterfaces: [{}]\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\n{body}",
        f.bed.server_if
    );
    f.write(file, &text)
}

/// Office only to the database, everything else dropped: nothing to report.
const CLEAN: &str =
    "default: drop\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n";

fn check(f: &Fixture, args: &[&str]) -> (Run, Value) {
    let mut all = vec!["check", "-o", "json"];
    all.extend_from_slice(args);
    let run = f.airlock(&all);
    let json = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("check JSON: {e}\n{}\n{}", run.stdout, run.stderr));
    (run, json)
}

fn kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn finding<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} finding in {report:#}"))
}

fn exposure<'a>(report: &'a Value, port: u16, proto: &str, family: &str) -> &'a Value {
    report["exposures"]
        .as_array()
        .expect("exposures")
        .iter()
        .find(|e| e["port"] == port && e["proto"] == proto && e["family"] == family)
        .unwrap_or_else(|| panic!("no exposure {port}/{proto} {family} in {report:#}"))
}

/// Opens a TCP listener and a UDP socket on every IPv4 address of the server
/// namespace; they live as long as the returned values.
fn extra_listeners(f: &Fixture, tcp: u16, udp: u16) -> (TcpListener, UdpSocket) {
    f.bed
        .server
        .spawn(move || {
            let tcp = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], tcp))).expect("bind tcp");
            let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], udp))).expect("bind udp");
            (tcp, udp)
        })
        .join()
        .expect("listener thread")
}

#[test]
fn a_namespace_without_a_filter_exposes_its_database_to_everyone() {
    let f = Fixture::new("ckn");
    let (run, report) = check(&f, &[]);
    assert_eq!(run.code, 1, "findings must fail the check: {}", run.stderr);
    assert_eq!(report["failed"], true);
    let kinds = kinds(&report);
    assert!(kinds.contains(&"no_filter".to_owned()), "{kinds:?}");
    let exposed = finding(&report, "exposed_service");
    assert_eq!(exposed["severity"], "critical");
    assert_eq!(exposed["port"], PORT);
    for family in ["ipv4", "ipv6"] {
        let e = exposure(&report, PORT, "tcp", family);
        assert_eq!(e["who"], "everyone", "{e:#}");
        assert_eq!(e["service"], "PostgreSQL");
    }
    // The table for people says the same.
    let human = f.airlock(&["check"]);
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("5432/tcp") && human.stdout.contains("EVERYONE"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("no_filter"), "{}", human.stdout);
}

#[test]
fn a_clean_namespace_passes_and_the_kernel_agrees_with_every_answer() {
    let f = Fixture::new("ckc");
    let p = policy(&f, "clean.yaml", CLEAN);
    f.apply(&p);
    let (run, report) = check(&f, &[]);
    assert_eq!(run.code, 0, "{report:#}\n{}", run.stderr);
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["filters"][0]["iface"], f.bed.server_if.as_str());
    assert_eq!(report["filters"][0]["mode"], "native");
    let v4 = exposure(&report, PORT, "tcp", "ipv4");
    assert_eq!(v4["who"], "sets");
    assert_eq!(v4["sets"], serde_json::json!(["office"]));
    for family in ["ipv4", "ipv6"] {
        let probes = exposure(&report, PORT, "tcp", family)["probes"]
            .as_array()
            .expect("probes")
            .clone();
        assert_eq!(probes.len(), 1, "{probes:?}");
        assert_eq!(probes[0]["kernel"], "drop");
        assert_eq!(probes[0]["agree"], true);
    }
    // And the filter really keeps a stranger out while the office gets in.
    assert!(f.gets_in(addr::OFFICE_V4) && f.kept_out(addr::STRANGER_V4));
    // The same clean namespace with a UDP socket nobody may reach: still clean.
    let _extra = extra_listeners(&f, 8080, 5353);
    let (run, report) = check(&f, &[]);
    assert_eq!(run.code, 0, "{report:#}");
    assert_eq!(exposure(&report, 5353, "udp", "ipv4")["who"], "nobody");
}

#[test]
fn risky_policy_settings_are_each_reported() {
    let f = Fixture::new("ckr");
    let _extra = extra_listeners(&f, 8080, 5353);
    // Monitor mode, management open to all, a built-in region, generic attach and
    // default pass with services no rule covers.
    let p = policy(
        &f,
        "risky.yaml",
        "mode: monitor\ndefault: pass\nxdp_mode: generic\nmanagement: [0.0.0.0/0]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office, airbyte-us]\n",
    );
    f.apply(&p);
    let (run, report) = check(&f, &["--region-max-age", "1day"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let found = kinds(&report);
    for kind in [
        "monitor_mode",
        "management_everyone",
        "stale_region",
        "generic_mode",
        "default_pass",
        "exposed_service",
    ] {
        assert!(
            found.contains(&kind.to_owned()),
            "{kind} missing: {found:?}"
        );
    }
    assert_eq!(
        finding(&report, "management_everyone")["severity"],
        "critical"
    );
    assert_eq!(finding(&report, "stale_region")["severity"], "low");
    assert_eq!(report["filters"][0]["mode"], "generic");
    let tcp = exposure(&report, 8080, "tcp", "ipv4");
    assert_eq!(
        (&tcp["who"], &tcp["default_pass"]),
        (&"everyone".into(), &true.into())
    );
    let udp = exposure(&report, 5353, "udp", "ipv4");
    assert_eq!(udp["who"], "everyone");
    // The kernel agrees: in monitor mode everything passes.
    assert_eq!(udp["probes"][0]["kernel"], "pass");
    assert!(!found.contains(&"kernel_disagrees".to_owned()), "{found:?}");
    // The default threshold (90 days) does not call data of this month stale.
    let (_, report) = check(&f, &[]);
    assert!(!kinds(&report).contains(&"stale_region".to_owned()));
    // `regions -o json` says how old each list is, and whether check calls it stale.
    let run = f.airlock(&["regions", "-o", "json"]);
    let regions: Value = serde_json::from_str(&run.stdout).expect("regions JSON");
    assert_eq!(regions["stale_after_days"], 90);
    for region in regions["regions"].as_array().expect("regions") {
        assert!(
            region["age_days"].as_u64().is_some_and(|d| d < 90),
            "{region}"
        );
        assert_eq!(region["stale"], false, "{region}");
    }
}

#[test]
fn fail_on_sets_the_threshold_and_bad_usage_exits_2() {
    let f = Fixture::new("ckf");
    // Clean but for a built-in region called stale by a tight threshold (low).
    let p = policy(
        &f,
        "regions.yaml",
        "default: drop\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office, airbyte-eu]\n",
    );
    f.apply(&p);
    let (run, report) = check(&f, &["--region-max-age", "1day"]);
    assert_eq!(run.code, 1, "{report:#}");
    assert_eq!(kinds(&report), vec!["stale_region".to_owned()]);
    let (run, report) = check(&f, &["--region-max-age", "1day", "--fail-on", "medium"]);
    assert_eq!(run.code, 0, "{report:#}");
    assert_eq!(report["failed"], false);
    let run = f.airlock(&["check", "--fail-on", "severe"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn an_interface_with_traffic_and_no_filter_is_reported() {
    let f = Fixture::new("cku");
    let p = policy(&f, "clean.yaml", CLEAN);
    f.apply(&p);
    // A second link between the namespaces, carrying traffic, with no filter.
    let (srv, cli) = (unique_name("ckus"), unique_name("ckuc"));
    f.bed.client.ip(&[
        "link",
        "add",
        &cli,
        "type",
        "veth",
        "peer",
        "name",
        &srv,
        "netns",
        f.bed.server.name(),
    ]);
    f.bed
        .server
        .ip(&["addr", "add", "2001:db8:ffff::1/64", "dev", &srv, "nodad"]);
    f.bed
        .client
        .ip(&["addr", "add", "2001:db8:ffff::2/64", "dev", &cli, "nodad"]);
    f.bed.server.ip(&["link", "set", &srv, "up"]);
    f.bed.client.ip(&["link", "set", &cli, "up"]);
    f.bed
        .client
        .spawn(|| {
            let socket = UdpSocket::bind("[2001:db8:ffff::2]:0").expect("bind");
            for _ in 0..3 {
                let _ = socket.send_to(b"airlock", "[2001:db8:ffff::1]:9");
            }
        })
        .join()
        .expect("udp thread");
    let mut report = Value::Null;
    let found = wait_until(Duration::from_secs(5), || {
        report = check(&f, &[]).1;
        kinds(&report).contains(&"unfiltered_interface".to_owned())
    });
    assert!(found, "{report:#}");
    assert_eq!(
        finding(&report, "unfiltered_interface")["iface"],
        srv.as_str()
    );
    assert_eq!(finding(&report, "unfiltered_interface")["severity"], "high");
    // Through that link the database is open to everyone, whatever the filter says.
    let e = exposure(&report, PORT, "tcp", "ipv6");
    assert_eq!(e["who"], "everyone", "{e:#}");
    assert_eq!(e["unfiltered"], serde_json::json!([srv]));
    assert_eq!(finding(&report, "exposed_service")["port"], PORT);
}

#[test]
fn the_kernel_probe_catches_a_policy_file_that_is_not_the_one_in_force() {
    let f = Fixture::new("ckk");
    let clean = policy(&f, "clean.yaml", CLEAN);
    f.apply(&clean);
    // The file on disk now opens the database to all; the kernel still enforces the
    // clean policy.
    let open = f.write(
        "open.yaml",
        &format!(
            "version: 1\ninterfaces: [{}]\ndefault: drop\nsets:\n  anyone: [0.0.0.0/0, \"::/0\"]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [anyone]\n",
            f.bed.server_if
        ),
    );
    let (run, report) = check(&f, &["-f", open.to_str().expect("utf-8")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let kinds = kinds(&report);
    assert!(kinds.contains(&"policy_differs".to_owned()), "{kinds:?}");
    let disagrees = finding(&report, "kernel_disagrees");
    assert_eq!(disagrees["severity"], "critical");
    assert_eq!(disagrees["port"], PORT);
    let probe = &exposure(&report, PORT, "tcp", "ipv4")["probes"][0];
    assert_eq!(
        (&probe["model"], &probe["kernel"]),
        (&"pass".into(), &"drop".into())
    );
}

#[test]
fn the_agent_exports_findings_by_severity_kind_and_port() {
    let f = Fixture::new("cka");
    // Monitor mode: the database is open to everyone while the policy only counts.
    let p = policy(
        &f,
        "policy.yaml",
        "mode: monitor\ndefault: drop\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n",
    );
    let agent = Agent::start(&f, &[], &p, &[]);
    let exposed =
        r#"airlock_check_findings{severity="critical",kind="exposed_service",port="5432"}"#;
    let monitor = r#"airlock_check_findings{severity="high",kind="monitor_mode",port=""}"#;
    // Computed off the scrape, on a thread: there within a few scrapes.
    let seen = wait_until(Duration::from_secs(5), || {
        metric(&f, exposed) == 1.0 && metric(&f, monitor) == 1.0
    });
    assert!(seen, "{}", metrics(&f));
    // Enforcing, the same policy leaves nothing to report.
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("mode: monitor\n", ""),
    )
    .expect("write policy");
    let clean = wait_until(Duration::from_secs(5), || {
        !metrics(&f).contains("airlock_check_findings{")
    });
    assert!(clean, "{}\n{}", metrics(&f), agent.log());
}

/// Loads `rules` (nft syntax) into the server namespace's ruleset.
fn nft(f: &Fixture, rules: &str) {
    use std::io::Write as _;
    let mut child = f
        .bed
        .server
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables; cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write rules");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

#[test]
fn ports_published_only_by_dnat_rules_are_judged_too() {
    let f = Fixture::new("ckd");
    // Docker without its userland proxy: no socket on 8000 or 6379, only DNAT
    // rules (the containers' addresses are documentation addresses: no packet is
    // forwarded), and another for IPv6 only.
    nft(
        &f,
        "table ip nat {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump DOCKER\n  }\n  chain DOCKER {\n    iifname != \"docker0\" tcp dport 8000 dnat to 192.0.2.80:8000\n    iifname != \"docker0\" tcp dport 6379 dnat to 192.0.2.81:6379\n  }\n}\ntable ip6 nat6 {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport 9200 dnat to [2001:db8::92]:9200\n  }\n}\n",
    );
    // 8000 open to everyone by `default: pass`; 6379 to the office only.
    let p = policy(
        &f,
        "dnat.yaml",
        "default: pass\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n  - name: redis\n    ports: [6379/tcp]\n    from: [office]\n",
    );
    f.apply(&p);
    let (run, report) = check(&f, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let web = exposure(&report, 8000, "tcp", "ipv4");
    assert_eq!(web["process"], "DNAT to 192.0.2.80:8000", "{web:#}");
    assert_eq!(
        (&web["who"], &web["default_pass"]),
        (&"everyone".into(), &true.into())
    );
    // The kernel agrees: the filter judges the host port, before the NAT.
    assert_eq!(web["probes"][0]["kernel"], "pass", "{web:#}");
    let exposed = finding(&report, "exposed_service");
    assert_eq!(exposed["port"], 8000, "{report:#}");
    let redis = exposure(&report, 6379, "tcp", "ipv4");
    assert_eq!(redis["who"], "sets", "{redis:#}");
    assert_eq!(redis["probes"][0]["kernel"], "drop", "{redis:#}");
    let elastic = exposure(&report, 9200, "tcp", "ipv6");
    assert_eq!(elastic["process"], "DNAT to [2001:db8::92]:9200");
    assert!(
        report["exposures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !(e["port"] == 9200 && e["family"] == "ipv4")),
        "{report:#}"
    );
    assert!(!kinds(&report).contains(&"kernel_disagrees".to_owned()));
    // The table says where the port goes.
    let human = f.airlock(&["check"]);
    assert!(
        human.stdout.contains("DNAT to 192.0.2.80:8000"),
        "{}",
        human.stdout
    );
}
