//! Compiler unit tests: folding, pruning, port maps, config, limits.

use super::*;
use crate::policy::parse_str;
use airlock_common::maps::{SRC_DENY, SRC_MANAGEMENT};
use std::path::Path;

fn compile_text(body: &str) -> Compiled {
    let text = format!("version: 1\ninterfaces: [eth0]\n{body}");
    let policy = parse_str(&text, Path::new("p.yaml")).unwrap();
    compile(&policy).unwrap()
}

fn entry(rules: u64, flags: u32) -> SourceEntry {
    SourceEntry {
        rules,
        flags,
        _pad: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn except_holes_and_nesting() {
    let c = compile_text(
        "sets:
  p:
    cidrs: [10.0.0.0/8, \"2001:db8::/32\"]
    except: [10.1.0.0/16, \"2001:db8:1::/48\"]
rules:
  - {name: a, ports: [22], from: [p]}
  - {name: b, ports: [22], from: [10.1.2.0/24]}
",
    );
    assert_eq!(c.lookup(ip("10.0.0.1")), entry(1, 0));
    assert_eq!(c.lookup(ip("10.1.0.1")), entry(0, 0));
    assert_eq!(c.lookup(ip("10.1.2.3")), entry(2, 0));
    assert_eq!(c.lookup(ip("11.0.0.1")), entry(0, 0));
    assert_eq!(c.lookup(ip("2001:db8::1")), entry(1, 0));
    assert_eq!(c.lookup(ip("2001:db8:1::1")), entry(0, 0));
    // The hole is an explicit zero entry; nothing else is redundant.
    let v4: Vec<(String, u8, u64)> =
        c.v4.iter()
            .map(|e| {
                (
                    std::net::Ipv4Addr::from(e.addr).to_string(),
                    e.prefix_len,
                    e.value.rules,
                )
            })
            .collect();
    assert_eq!(
        v4,
        [
            ("10.0.0.0".to_string(), 8, 1),
            ("10.1.0.0".to_string(), 16, 0),
            ("10.1.2.0".to_string(), 24, 2)
        ]
    );
    assert_eq!(c.v6.len(), 2);
    assert_eq!(c.v6[0].addr[..4], [0x20, 0x01, 0x0d, 0xb8]);
}

#[test]
fn redundant_entries_are_pruned() {
    let c = compile_text(
        "management: [192.0.2.0/24]
sets:
  s: [10.0.0.0/8, 10.2.0.0/16, 10.2.3.0/24]
rules:
  - {name: a, ports: [22], from: [s, 10.2.0.0/16]}
",
    );
    // 10.2/16 and 10.2.3/24 add nothing under 10/8 for rule a.
    assert_eq!(c.v4.len(), 2);
    assert_eq!(c.lookup(ip("10.2.3.4")), entry(1, 0));
    assert_eq!(c.lookup(ip("192.0.2.1")), entry(0, SRC_MANAGEMENT));
    let s = c.stats();
    assert_eq!(s.distinct_prefixes.v4, 4);
    assert_eq!(s.entries.v4, 2);
    assert_eq!(s.per_rule[0].prefixes.v4, 4);
    assert_eq!(s.management.v4, 1);
}

#[test]
fn flags_and_config() {
    let c = compile_text(
        "mode: monitor
default: drop
management: [10.0.0.5]
deny: [10.0.0.0/24]
rules:
  - {name: a, ports: [22, 1000-2000/udp], from: [10.0.0.0/8]}
  - {name: b, ports: [22, 1500/udp], from: [airbyte-eu]}
",
    );
    assert_eq!(
        c.lookup(ip("10.0.0.5")),
        entry(1, SRC_MANAGEMENT | SRC_DENY)
    );
    assert_eq!(c.lookup(ip("10.0.0.6")), entry(1, SRC_DENY));
    assert_eq!(c.lookup(ip("13.37.4.46")), entry(2, 0));
    assert_eq!(c.port_mask(Proto::Tcp, 22), 3);
    assert_eq!(c.port_mask(Proto::Udp, 22), 0);
    assert_eq!(c.port_mask(Proto::Udp, 1500), 3);
    assert_eq!(c.port_mask(Proto::Udp, 1501), 1);
    assert_eq!(
        c.udp_ports.segments(),
        &[(1000, 1499, 1), (1500, 1500, 3), (1501, 2000, 1)]
    );
    assert_eq!(
        c.config,
        GenConfig {
            default_action: DEFAULT_DROP,
            mode: MODE_MONITOR,
            rule_count: 2,
            valid: 1,
            ..GenConfig::default()
        }
    );
    assert_eq!(c.rule_names, ["a", "b"]);
}

#[test]
fn default_route_prefixes() {
    let c = compile_text("rules:\n  - {name: a, ports: [22], from: [0.0.0.0/0, \"::/0\"]}\n");
    assert_eq!(c.lookup(ip("1.2.3.4")), entry(1, 0));
    assert_eq!(c.lookup(ip("::1")), entry(1, 0));
    assert_eq!(c.v4[0].prefix_len, 0);
}

#[test]
fn limits_are_errors() {
    assert_eq!(
        CompileError::TooManyPrefixes {
            family: "IPv4",
            count: 3,
            limit: 2
        }
        .to_string(),
        "the policy compiles to 3 IPv4 prefixes, more than the limit of 2"
    );
    assert!(check_limit("IPv6", MAX_PREFIXES_V6 as usize + 1, MAX_PREFIXES_V6).is_err());
    assert!(check_limit("IPv6", MAX_PREFIXES_V6 as usize, MAX_PREFIXES_V6).is_ok());
}

/// `cargo test --release -p airlock --lib -- --ignored million --nocapture`
/// Last measured (release, on a busy 2-vCPU host): ~0.09 s to load and ~0.09 s to
/// compile 1,000,000 random IPv4 prefixes (198,012 entries after pruning).
#[test]
#[ignore]
fn million_prefixes() {
    use std::fmt::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 16 + (x >> 59) as u8 % 17;
        let addr = (x as u32) & (u32::MAX << (32 - len));
        let _ = writeln!(list, "{}/{len}", std::net::Ipv4Addr::from(addr));
    }
    std::fs::write(dir.path().join("big.txt"), list).unwrap();
    let text = "version: 1\ninterfaces: [eth0]\nsets:\n  big: {file: big.txt}\nrules:\n  - {name: a, ports: [22], from: [big]}\n  - {name: b, ports: [22], from: [10.0.0.0/8]}\n";
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    let t = std::time::Instant::now();
    let policy = crate::policy::load(&path).unwrap();
    let loaded = t.elapsed();
    let t = std::time::Instant::now();
    let c = compile(&policy).unwrap();
    println!(
        "load {loaded:?}, compile {:?}, entries {}",
        t.elapsed(),
        c.v4.len()
    );
}

#[test]
fn classes_are_the_distinct_answers_and_the_empty_one() {
    let at = |value| PrefixEntry {
        addr: [192, 0, 2, 0],
        prefix_len: 24,
        value,
    };
    assert_eq!(class_count::<4>(&[]), 1, "the empty answer alone");
    let (a, b) = (entry(1, 0), entry(2, SRC_DENY));
    let entries = [
        at(a),
        at(a),
        at(b),
        at(a),
        at(entry(0, 0)),
        at(entry(0, SRC_MANAGEMENT)),
    ];
    assert_eq!(class_count(&entries), 4);
}

/// `rules` rules over a block of `bits` address bits (`base`/`shared` + `bits`): rule
/// `j` lists the addresses whose bit `j` (from the top) is set, as the `2^j`
/// prefixes one bit longer than `shared + j` that say so. Every non-empty
/// combination of rules is then some prefix's answer: `2^rules` classes.
fn every_combination(base: IpAddr, shared: u8, rules: u32) -> String {
    use std::fmt::Write as _;
    let width = if base.is_ipv4() { 32 } else { 128 };
    let base = match base {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let mut text = String::from("version: 1\ninterfaces: [eth0]\nrules:\n");
    for j in 0..rules {
        let len = u32::from(shared) + j + 1;
        let _ = write!(text, "  - name: r{j}\n    ports: [22]\n    from: [");
        for above in 0..1u128 << j {
            let addr = base | (((above << 1) | 1) << (width - len));
            let addr = if width == 32 {
                IpAddr::from(std::net::Ipv4Addr::from(addr as u32))
            } else {
                IpAddr::from(std::net::Ipv6Addr::from(addr))
            };
            let _ = write!(text, "\"{addr}/{len}\",");
        }
        text.push_str("]\n");
    }
    text
}

#[test]
fn a_family_with_more_classes_than_fit_is_refused() {
    let parse = |text: &str| parse_str(text, Path::new("p.yaml")).unwrap();
    // 15 rules: 2^15 classes, as many as fit.
    let fits = compile(&parse(&every_combination(ip("2001:db8::"), 32, 15))).unwrap();
    assert_eq!(class_count(&fits.v6), MAX_CLASSES as usize);
    assert_eq!(class_count(&fits.v4), 1);
    // 16: twice as many, in either family.
    for (base, shared, family) in [("10.0.0.0", 8, "IPv4"), ("2001:db8::", 32, "IPv6")] {
        let error = compile(&parse(&every_combination(ip(base), shared, 16))).unwrap_err();
        assert_eq!(
            error,
            CompileError::TooManyClasses(ranges::TooManyClasses {
                family,
                found: 2 * MAX_CLASSES as usize,
                max: MAX_CLASSES,
            })
        );
        assert!(
            error.to_string().contains(&format!(
                "{family} sources fall into 65536 distinct combinations"
            )),
            "{error}"
        );
    }
}

/// The figures take the counts the fold made of each set: they must be what
/// counting each group's sets directly gives, a set named by several groups
/// (and one named twice in a group) counted in each, excepts included.
#[test]
fn figures_count_every_group_s_sets_as_written() {
    let text = "version: 1\ninterfaces: [eth0]
management: [192.0.2.1, shared]
deny: [\"2001:db8:9::/48\"]
sets:
  shared:
    cidrs: [10.0.0.0/8, \"2001:db8::/32\", 10.1.0.0/16]
    except: [10.1.2.0/24, \"2001:db8:1::/48\"]
  other: [198.51.100.0/24]
rules:
  - {name: a, ports: [22], from: [shared, other, 203.0.113.0/24]}
  - {name: b, ports: [80], from: [other, shared, other]}
  - {name: c, ports: [443], from: [\"2001:db8:5::/48\", 10.9.0.0/16]}
";
    let policy = parse_str(text, Path::new("p.yaml")).unwrap();
    let direct = |group: &SourceGroup| {
        let mut c = FamilyCounts::default();
        for set in &group.sets {
            for net in set.cidrs.iter().chain(&set.except) {
                match net {
                    IpNet::V4(_) => c.v4 += 1,
                    IpNet::V6(_) => c.v6 += 1,
                }
            }
        }
        c
    };
    let s = compile(&policy).unwrap().stats();
    assert_eq!(s.management, direct(&policy.management));
    assert_eq!(s.deny, direct(&policy.deny));
    assert_eq!(s.management, FamilyCounts { v4: 4, v6: 2 });
    for (rule, stats) in policy.rules.iter().zip(&s.per_rule) {
        assert_eq!(stats.prefixes, direct(&rule.from), "{}", rule.name);
    }
}

/// A random policy with a large imported list (both families, sometimes past
/// the size that folds IPv6 on a thread of its own), except holes, nested
/// prefixes, and management and deny sets or none.
fn random_policy(seed: u64, v4: usize, v6: usize, flagged: bool) -> Policy {
    use std::fmt::Write as _;
    let mut next = crate::test_rng::xorshift(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for _ in 0..v4 {
        let r = next();
        let len = [8, 16, 20, 24, 24, 28, 31, 32, 32, 32][(r % 10) as usize];
        // Few high bits vary: prefixes nest and repeat.
        let addr = (0x0b00_0000 | ((r >> 16) as u32 & 0x07ff_ffff)) & (u32::MAX << (32 - len));
        let _ = writeln!(list, "{}/{len}", std::net::Ipv4Addr::from(addr));
    }
    for _ in 0..v6 {
        let r = next();
        let len = [32, 40, 48, 48, 56, 64, 64, 100, 127, 128][(r % 10) as usize];
        let addr = (0x2a00u128 << 112 | u128::from(r >> 8) << 64 | u128::from(next()))
            & (u128::MAX << (128 - len));
        let _ = writeln!(list, "{}/{len}", std::net::Ipv6Addr::from(addr));
    }
    std::fs::write(dir.path().join("big.txt"), list).unwrap();
    let mut text = String::from(
        "version: 1\ninterfaces: [eth0]\nsets:\n  big: {file: big.txt}\n  holes:\n    cidrs: [11.0.0.0/8, \"2a00::/16\"]\n    except: [11.1.0.0/16, 11.2.3.0/24, \"2a00:1::/32\"]\n",
    );
    if flagged {
        text.push_str("management: [11.3.0.0/16, 11.3.4.5, \"2a00:2::/32\"]\ndeny: [11.3.4.0/24, 11.4.0.0/16, \"2a00:2:1::/48\"]\n");
    }
    text.push_str("rules:\n  - {name: a, ports: [22], from: [big]}\n  - {name: b, ports: [80], from: [holes, 11.5.0.0/16]}\n  - {name: c, ports: [443], from: [big, holes]}\n");
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    crate::policy::load(&path).unwrap()
}

/// An apply's compile builds each family's source table as that family is
/// folded (`compile_for_apply`), and the loader's config takes its flag tables
/// skipping a family the fold saw no flag in. Both must give exactly what the
/// plain compile, the loader's own table build and the full flag cut give.
#[test]
fn tables_built_with_the_fold_and_flag_tables_are_those_made_from_scratch() {
    const CAPACITY: (usize, usize) = (
        airlock_common::INLINE_TABLE_V4 as usize,
        airlock_common::INLINE_TABLE_V6 as usize,
    );
    for (seed, v4, v6, flagged) in [
        (1, 2_000, 500, false),
        (2, 2_000, 500, true),
        (3, 30_000, 12_000, false),
        (4, 30_000, 12_000, true),
        (5, 1, 1, true),
        (6, 50, 0, false),
    ] {
        let policy = random_policy(seed, v4, v6, flagged);
        let plain = compile(&policy).unwrap();
        let applied = compile_for_apply(&policy).unwrap();
        assert_eq!(applied, plain, "seed {seed}");
        let from_scratch = build_tables(&plain.v4, &plain.v6, CAPACITY).unwrap();
        let (v4, v6) = Prebuilt::take_or_plan(&applied).unwrap();
        assert_eq!(
            (v4.into_table(CAPACITY.0), v6.into_table(CAPACITY.1)),
            from_scratch,
            "seed {seed}"
        );
        let (mut skipping, mut full) = (plain.config, plain.config);
        applied.set_flag_tables(&mut skipping);
        flags::set(&mut full, &plain.v4, &plain.v6);
        assert_eq!(skipping, full, "seed {seed}");
        assert_eq!(applied.flagged, (flagged, flagged), "seed {seed}");
    }
}

/// One rule from `hosts` IPv6 hosts at every other address of 2001:db8::/64:
/// `2 * hosts + 1` ranges in one slot of the IPv6 table.
fn hosts_every_other_address(hosts: u128) -> String {
    use std::fmt::Write as _;
    let mut text = String::from(
        "version: 1\ninterfaces: [eth0]\nrules:\n  - name: dense\n    ports: [22]\n    from: [",
    );
    for i in 1..=hosts {
        let host = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) + 2 * i);
        let _ = write!(text, "\"{host}/128\",");
    }
    text.push_str("]\n");
    text
}

/// A slot of the IPv6 table cut into more ranges than its run holds is refused
/// by `validate`'s compile (no plan made otherwise) and by the apply's, naming
/// the slot; one range under the most a run holds compiles.
#[test]
fn an_ipv6_slot_denser_than_its_run_holds_is_refused() {
    let parse = |text: &str| parse_str(text, Path::new("p.yaml")).unwrap();
    let most = airlock_common::INLINE_TABLE_V6 as u128 / 2;
    let fits = parse(&hosts_every_other_address((most - 2) / 2));
    compile(&fits).unwrap();
    compile_for_apply(&fits).unwrap();
    let dense = parse(&hosts_every_other_address(most / 2));
    for (path, result) in [
        ("validate", compile(&dense)),
        ("apply", compile_for_apply(&dense)),
    ] {
        // Not `unwrap_err`: a compiled policy this size prints for minutes.
        let Err(error) = result else {
            panic!("{path}: compiled");
        };
        let CompileError::OverfullSlot(overfull) = &error else {
            panic!("{error}");
        };
        assert_eq!(
            (overfull.ranges, overfull.max),
            (most as usize + 1, most as usize)
        );
        assert!(error.to_string().contains("cut 2001:db8::/"), "{error}");
    }
}
