//! A structured fuzzer of the policy pipeline: policy text, generated from the
//! grammar (valid and nearly valid) and then mutated byte by byte with YAML's own
//! punctuation, goes through parse → validate → compile; whatever compiles is
//! checked on random packets, the reference model's verdict against the one the
//! compiled tables give when looked up the way the XDP program does (the range
//! tables it reads, the port masks, the flags). Every panic is counted, also the
//! ones the parser catches itself (their message would reach stderr), and every
//! input that took longer than [`HANG`] is a hang.
//!
//! Needs no root; `airlock-soak` runs it long, `tests/tests/fuzz_policy.rs` briefly
//! and replays the committed corpus (`tests/fuzz-corpus/`).

use std::{
    cell::RefCell,
    net::IpAddr,
    path::Path,
    sync::{
        Mutex, Once,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use airlock::{
    compile::{self, Compiled, ranges},
    policy::{self, Policy, Proto},
    reference::{self, L4, PacketClass},
};
use airlock_common::{
    DEFAULT_PASS, MODE_MONITOR, Reason, SourceEntry, SourceRangeV4, SourceRangeV6,
    maps::{SRC_DENY, SRC_MANAGEMENT},
};
use rand::{Rng, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

/// An input that takes longer than this is a hang.
pub const HANG: Duration = Duration::from_secs(2);
/// Packets checked per policy that compiles.
const PACKETS: usize = 24;
/// Where relative `file:` imports would be read from: nowhere.
const ORIGIN: &str = "/nonexistent/airlock-fuzz/policy.yaml";

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub executions: u64,
    pub parsed: u64,
    pub compiled: u64,
    pub packets: u64,
    /// Reference and tables disagreeing.
    pub mismatches: u64,
    /// Panics anywhere in the pipeline, caught or not.
    pub panics: u64,
    pub hangs: u64,
    pub slowest: Duration,
    /// Resident memory at the start and the end, KiB.
    pub rss_kib: (u64, u64),
    /// Up to ten failing inputs, with what went wrong.
    pub failures: Vec<(String, String)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.panics == 0 && self.hangs == 0
    }

    fn fail(&mut self, input: &str, what: String) {
        if self.failures.len() < 10 {
            self.failures.push((input.to_owned(), what));
        }
    }
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics seen: by our hook, and those the policy parser kept quiet (its hook
/// counts them rather than passing them on).
fn panics() -> u64 {
    PANICS.load(Ordering::SeqCst) + policy::yaml_panics_caught()
}
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

thread_local! {
    static FUZZING: RefCell<bool> = const { RefCell::new(false) };
}

/// Counts panics (and keeps the last message) instead of printing them, on the
/// fuzzing threads only; others keep the default hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(|f| *f.borrow()) {
                PANICS.fetch_add(1, Ordering::SeqCst);
                *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
            } else {
                default(info);
            }
        }));
    });
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `executions` inputs from `seed`; `progress` is called every 100,000.
pub fn run(seed: u64, executions: u64, mut progress: impl FnMut(&Report)) -> Report {
    install_hook();
    FUZZING.with(|f| *f.borrow_mut() = true);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report {
        rss_kib: (rss_kib(), 0),
        ..Report::default()
    };
    let mut pool: Vec<String> = Vec::new();
    for i in 0..executions {
        let text = if rng.random_ratio(1, 16) {
            soup(&mut rng)
        } else if pool.is_empty() || rng.random_ratio(1, 4) {
            generate(&mut rng)
        } else {
            let base = pool.choose(&mut rng).cloned().unwrap_or_default();
            mutate(&mut rng, &base)
        };
        execute(&text, &mut rng, &mut report);
        // Valid and nearly valid inputs are the best material for mutation.
        if pool.len() < 256 {
            pool.push(text);
        } else if rng.random_ratio(1, 8) {
            let at = rng.random_range(0..pool.len());
            pool[at] = text;
        }
        if (i + 1) % 100_000 == 0 {
            progress(&report);
        }
    }
    report.rss_kib.1 = rss_kib();
    FUZZING.with(|f| *f.borrow_mut() = false);
    report
}

/// One input through the pipeline, as far as it goes.
pub fn execute(text: &str, rng: &mut StdRng, report: &mut Report) {
    let panics_before = panics();
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let policy = policy::parse_str(text, Path::new(ORIGIN)).ok()?;
        let compiled = compile::compile(&policy).ok();
        Some((policy, compiled))
    }));
    let elapsed = started.elapsed();
    report.executions += 1;
    report.slowest = report.slowest.max(elapsed);
    if elapsed > HANG {
        report.hangs += 1;
        report.fail(text, format!("took {elapsed:?}"));
    }
    let panicked = panics() - panics_before;
    if panicked > 0 || outcome.is_err() {
        report.panics += panicked.max(1);
        let message = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
        report.fail(text, format!("panicked: {message}"));
        return;
    }
    let Ok(Some((policy, compiled))) = outcome else {
        return;
    };
    report.parsed += 1;
    let Some(compiled) = compiled else {
        return;
    };
    report.compiled += 1;
    let tables = Tables::of(&compiled);
    for _ in 0..PACKETS {
        let class = packet(rng, &policy);
        report.packets += 1;
        let expected = reference::verdict(&policy, &class);
        let found = tables.verdict(&compiled, &class);
        if (expected.reason, expected.rule, expected.pass) != found {
            report.mismatches += 1;
            report.fail(
                text,
                format!("{class:?}: reference {expected:?}, tables {found:?}"),
            );
        }
    }
}

/// The range tables the program reads.
struct Tables {
    v4: ranges::SourceTable<SourceRangeV4>,
    v6: ranges::SourceTable<SourceRangeV6>,
}

impl Tables {
    fn of(compiled: &Compiled) -> Self {
        // Small capacities: the directory and chunked layouts get exercised too.
        Self {
            v4: ranges::table(&compiled.v4, 64).expect("classes fit"),
            v6: ranges::table(&compiled.v6, 64).expect("classes fit"),
        }
    }

    fn entry(&self, ip: IpAddr) -> SourceEntry {
        match ip {
            IpAddr::V4(a) => ranges::lookup(&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => ranges::lookup(&self.v6, u128::from(a)),
        }
        .unwrap_or_default()
    }

    /// The verdict the XDP program reaches (ebpf-programs/src/main.rs `decide`),
    /// from the tables: (reason, rule, pass).
    fn verdict(&self, compiled: &Compiled, class: &PacketClass) -> (Reason, Option<usize>, bool) {
        let config = &compiled.config;
        let default = if config.default_action == DEFAULT_PASS {
            Reason::DefaultPass
        } else {
            Reason::DefaultDrop
        };
        let (reason, rule) = match *class {
            PacketClass::NonIp => (Reason::NonIp, None),
            PacketClass::Malformed { src } => {
                match src.map(|s| self.entry(s).flags & SRC_MANAGEMENT != 0) {
                    Some(true) => (Reason::Management, None),
                    _ => (Reason::Malformed, None),
                }
            }
            PacketClass::Ip { src, l4 } => {
                let entry = self.entry(src);
                if entry.flags & SRC_MANAGEMENT != 0 {
                    (Reason::Management, None)
                } else if entry.flags & SRC_DENY != 0 {
                    (Reason::Deny, None)
                } else if reference::is_essential_icmp(&l4) {
                    (Reason::EssentialIcmp, None)
                } else {
                    match l4 {
                        L4::NonFirstFragment if entry.rules != 0 || default.passes() => {
                            (Reason::FragmentPass, None)
                        }
                        L4::NonFirstFragment => (Reason::FragmentDrop, None),
                        L4::Tcp { dst_port, .. } | L4::Udp { dst_port } => {
                            let proto = if matches!(l4, L4::Tcp { .. }) {
                                Proto::Tcp
                            } else {
                                Proto::Udp
                            };
                            let mask = compiled.port_mask(proto, dst_port);
                            let allowed = entry.rules & mask;
                            if mask == 0 {
                                (default, None)
                            } else if allowed != 0 {
                                (Reason::RuleAllowed, Some(allowed.trailing_zeros() as usize))
                            } else {
                                (Reason::RuleRefused, Some(mask.trailing_zeros() as usize))
                            }
                        }
                        _ => (default, None),
                    }
                }
            }
        };
        let pass = config.mode == MODE_MONITOR || reason.passes();
        (reason, rule, pass)
    }
}

/// A packet worth asking about: mostly from addresses at the edges of the policy's
/// own prefixes, to ports its rules name.
fn packet(rng: &mut StdRng, policy: &Policy) -> PacketClass {
    let src = address(rng, policy);
    let port = port(rng, policy);
    let l4 = match rng.random_range(0..10) {
        0..=3 => L4::Tcp {
            dst_port: port,
            flags: *[0x02, 0x12, 0x10, 0x04].choose(rng).unwrap_or(&0x02),
        },
        4..=5 => L4::Udp { dst_port: port },
        6 => L4::Icmp {
            icmp_type: *[0, 3, 8, 11, 12, 5].choose(rng).unwrap_or(&8),
        },
        7 => L4::Icmpv6 {
            icmp_type: *[1, 2, 128, 129, 133, 135, 136, 143]
                .choose(rng)
                .unwrap_or(&128),
        },
        8 => L4::NonFirstFragment,
        _ => L4::Other {
            protocol: *[47, 50, 132, 255].choose(rng).unwrap_or(&47),
        },
    };
    match rng.random_range(0..40) {
        0 => PacketClass::NonIp,
        1 => PacketClass::Malformed { src: None },
        2 => PacketClass::Malformed { src: Some(src) },
        _ => PacketClass::Ip { src, l4 },
    }
}

/// The CIDRs written in the policy text are not at hand here; the sets are.
fn address(rng: &mut StdRng, policy: &Policy) -> IpAddr {
    let mut nets: Vec<ipnet::IpNet> = Vec::new();
    for set in policy.sets.values() {
        nets.extend(set.cidrs.iter().copied());
        nets.extend(set.except.iter().copied());
    }
    for rule in &policy.rules {
        for set in &rule.from.sets {
            nets.extend(set.cidrs.iter().take(8).copied());
        }
    }
    for group in [&policy.management, &policy.deny] {
        for set in &group.sets {
            nets.extend(set.cidrs.iter().take(8).copied());
        }
    }
    let Some(net) = nets.choose(rng).copied().filter(|_| rng.random_ratio(7, 8)) else {
        return random_ip(rng);
    };
    let (first, last) = match net {
        ipnet::IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    let pick = match rng.random_range(0..5) {
        0 => first,
        1 => last,
        2 => first.wrapping_sub(1),
        3 => last.wrapping_add(1),
        _ => first + rng.random_range(0..=(last - first).min(u128::from(u64::MAX))),
    };
    match net {
        ipnet::IpNet::V4(_) => IpAddr::V4((pick as u32).into()),
        ipnet::IpNet::V6(_) => IpAddr::V6(pick.into()),
    }
}

fn random_ip(rng: &mut StdRng) -> IpAddr {
    if rng.random_bool(0.6) {
        IpAddr::V4(rng.random::<u32>().into())
    } else {
        IpAddr::V6(rng.random::<u128>().into())
    }
}

fn port(rng: &mut StdRng, policy: &Policy) -> u16 {
    let ports: Vec<(u16, u16)> = policy
        .rules
        .iter()
        .flat_map(|r| r.ports.iter().map(|p| (p.first, p.last)))
        .collect();
    match ports.choose(rng) {
        Some(&(start, end)) if rng.random_ratio(4, 5) => match rng.random_range(0..4) {
            0 => start,
            1 => end,
            2 => start.wrapping_sub(1),
            _ => end.wrapping_add(1),
        },
        _ => rng.random(),
    }
}

// ---- generation ----

const SET_NAMES: [&str; 6] = ["office", "partners", "cloud", "blocked", "a", "b"];
const REGIONS: [&str; 2] = ["airbyte-us", "airbyte-eu"];

fn cidr(rng: &mut StdRng) -> String {
    cidr_with(rng, true)
}

fn valid_cidr(rng: &mut StdRng) -> String {
    cidr_with(rng, false)
}

fn cidr_with(rng: &mut StdRng, sloppy: bool) -> String {
    let pick = if sloppy {
        rng.random_range(0..12)
    } else {
        rng.random_range(0..8)
    };
    match pick {
        0..=4 => {
            let len = *[8u8, 16, 20, 24, 25, 28, 30, 31, 32, 0]
                .choose(rng)
                .unwrap_or(&24);
            let base = *[0xc000_0200u32, 0xc633_6400, 0xcb00_7100, 0x0a00_0000]
                .choose(rng)
                .unwrap_or(&0);
            let addr = base.wrapping_add(rng.random_range(0..4096) << 4);
            let net = ipnet::Ipv4Net::new(addr.into(), len).map(|n| n.trunc());
            match net {
                Ok(n) if len == 32 && rng.random_bool(0.3) => n.addr().to_string(),
                Ok(n) => n.to_string(),
                Err(_) => "10.0.0.0/8".into(),
            }
        }
        5..=7 => {
            let len = *[32u8, 48, 56, 64, 100, 127, 128].choose(rng).unwrap_or(&64);
            let addr = (0x2001_0db8u128 << 96) | (u128::from(rng.random::<u32>()) << 64);
            let net = ipnet::Ipv6Net::new(addr.into(), len)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| "2001:db8::/32".into());
            format!("\"{net}\"")
        }
        // Host bits set, malformed, out of range, odd forms.
        8 => format!("198.51.100.{}/24", rng.random_range(1..255)),
        9 => [
            "1.2.3/24",
            "256.1.1.1/32",
            "10.0.0.0/33",
            "::/129",
            "\"fe80::1%eth0/128\"",
        ]
        .choose(rng)
        .unwrap_or(&"")
        .to_string(),
        10 => [
            "0.0.0.0/0",
            "\"::/0\"",
            "127.0.0.1",
            "\"::ffff:192.0.2.1/128\"",
        ]
        .choose(rng)
        .unwrap_or(&"")
        .to_string(),
        _ => SET_NAMES.choose(rng).unwrap_or(&"a").to_string(),
    }
}

fn list(rng: &mut StdRng, max: usize, item: impl Fn(&mut StdRng) -> String) -> String {
    let n = rng.random_range(0..=max);
    let items: Vec<String> = (0..n).map(|_| item(rng)).collect();
    format!("[{}]", items.join(", "))
}

fn source(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => REGIONS.choose(rng).unwrap_or(&"airbyte-us").to_string(),
        1 | 2 => SET_NAMES.choose(rng).unwrap_or(&"a").to_string(),
        _ => cidr(rng),
    }
}

fn ports(rng: &mut StdRng) -> String {
    list(rng, 4, |rng| {
        let port: u32 = *[22, 53, 443, 5432, 8000, 0, 65535, 65536, 1]
            .choose(rng)
            .unwrap_or(&22);
        let proto = *["/tcp", "/udp", "", "/sctp", "/TCP"]
            .choose(rng)
            .unwrap_or(&"");
        match rng.random_range(0..5) {
            0 => format!("{port}-{}{proto}", port + rng.random_range(0..200)),
            1 => format!("{}-{port}{proto}", port + 5),
            _ => format!("{port}{proto}"),
        }
    })
}

fn list1(rng: &mut StdRng, max: usize, item: impl Fn(&mut StdRng) -> String) -> String {
    let n = rng.random_range(1..=max);
    let items: Vec<String> = (0..n).map(|_| item(rng)).collect();
    format!("[{}]", items.join(", "))
}

fn valid_ports(rng: &mut StdRng) -> String {
    list1(rng, 3, |rng| {
        let port: u32 = *[22, 53, 443, 5432, 8000, 1, 65535, 60000]
            .choose(rng)
            .unwrap_or(&22);
        let proto = *["/tcp", "/udp", ""].choose(rng).unwrap_or(&"");
        if rng.random_bool(0.3) {
            let end = (port + rng.random_range(0..200)).min(65535);
            format!("{port}-{end}{proto}")
        } else {
            format!("{port}{proto}")
        }
    })
}

/// A policy from the grammar: mostly valid, each part sometimes wrong.
pub fn generate(rng: &mut StdRng) -> String {
    // Half the policies are kept valid where the grammar can say so; the other
    // half get a wrong part now and then.
    let sloppy = rng.random_bool(0.5);
    generate_with(rng, sloppy)
}

fn generate_with(rng: &mut StdRng, sloppy: bool) -> String {
    let ok = |rng: &mut StdRng, n: usize| if sloppy { rng.random_range(0..n) } else { 0 };
    let mut out = String::new();
    if !sloppy || rng.random_ratio(15, 16) {
        out.push_str(if ok(rng, 16) < 15 {
            "version: 1\n"
        } else {
            "version: 2\n"
        });
    }
    if rng.random_bool(0.7) {
        out.push_str(
            [
                "interfaces: [eth0]\n",
                "interfaces: [auto]\n",
                "interfaces: [eth*, lo]\n",
                "interfaces: eth0\n",
            ][ok(rng, 4)],
        );
    }
    if rng.random_bool(0.4) {
        out.push_str(
            ["mode: enforce\n", "mode: monitor\n", "mode: audit\n"][if sloppy {
                rng.random_range(0..3)
            } else {
                rng.random_range(0..2)
            }],
        );
    }
    if rng.random_bool(0.5) {
        out.push_str(
            ["default: pass\n", "default: drop\n", "default: reject\n"][if sloppy {
                rng.random_range(0..3)
            } else {
                rng.random_range(0..2)
            }],
        );
    }
    if rng.random_bool(0.1) {
        out.push_str(
            [
                "xdp_mode: native\n",
                "xdp_mode: generic\n",
                "xdp_mode: fast\n",
            ][ok(rng, 3)],
        );
    }
    // Sets defined first, so the sources can name them.
    let defined = rng.random_range(0..SET_NAMES.len());
    let valid_source = move |rng: &mut StdRng| match rng.random_range(0..4) {
        0 => REGIONS.choose(rng).unwrap_or(&"airbyte-us").to_string(),
        1 if defined > 0 => SET_NAMES[rng.random_range(0..defined)].to_string(),
        _ => valid_cidr(rng),
    };
    let any_source = |rng: &mut StdRng| {
        if sloppy {
            source(rng)
        } else {
            valid_source(rng)
        }
    };
    let any_cidr = |rng: &mut StdRng| if sloppy { cidr(rng) } else { valid_cidr(rng) };
    if rng.random_bool(0.4) {
        out.push_str(&format!("management: {}\n", list(rng, 3, any_source)));
    }
    if rng.random_bool(0.4) {
        out.push_str(&format!("deny: {}\n", list(rng, 3, any_source)));
    }
    if defined > 0 || sloppy && rng.random_bool(0.5) {
        out.push_str("sets:\n");
        for name in SET_NAMES.iter().take(defined) {
            if !sloppy || rng.random_bool(0.6) {
                out.push_str(&format!("  {name}: {}\n", list(rng, 5, any_cidr)));
            } else {
                out.push_str(&format!(
                    "  {name}:\n    cidrs: {}\n    except: {}\n",
                    list(rng, 4, cidr),
                    list(rng, 3, cidr)
                ));
            }
        }
    }
    out.push_str("rules:\n");
    for i in 0..rng.random_range(0..8) {
        let name = if ok(rng, 16) < 15 {
            format!("r{i}")
        } else {
            "r 0!".into()
        };
        let (ports, from) = if sloppy {
            (ports(rng), list(rng, 4, source))
        } else {
            (valid_ports(rng), list1(rng, 4, valid_source))
        };
        if rng.random_bool(0.2) {
            out.push_str(&format!(
                "  - {{name: {name}, ports: {ports}, from: {from}}}\n"
            ));
        } else {
            out.push_str(&format!(
                "  - name: {name}\n    ports: {ports}\n    from: {from}\n"
            ));
        }
    }
    out
}

/// YAML's punctuation and words that mean something to it or to us.
const TOKENS: [&str; 40] = [
    ":",
    "-",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "!x ",
    "|",
    ">",
    "'",
    "\"",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "? ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    " ",
    "  ",
    "\u{feff}",
    "\\",
    "@",
    "`",
    "~",
    "null",
    "<<: ",
    "0x1F",
    "1e9",
    ".inf",
    "\u{0}",
    "\u{85}",
    "\u{2028}",
];

/// Tokens and words thrown together: what the YAML scanner sees of a file that is
/// not a policy at all.
pub fn soup(rng: &mut StdRng) -> String {
    const WORDS: [&str; 8] = [
        "version", "rules", "a", "1", "name", "from", "ports", "sets",
    ];
    let mut out = String::new();
    for _ in 0..rng.random_range(1..40) {
        if rng.random_bool(0.6) {
            out.push_str(TOKENS.choose(rng).unwrap_or(&":"));
        } else {
            out.push_str(WORDS.choose(rng).unwrap_or(&"a"));
        }
    }
    out
}

/// Mutates `text`: a few edits, each a token inserted, a span deleted,
/// duplicated or moved, a byte flipped.
pub fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..6) {
            0 | 1 => {
                let token = TOKENS.choose(rng).unwrap_or(&":");
                bytes.splice(at..at, token.bytes());
            }
            2 if !bytes.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            3 if at < bytes.len() => {
                let end = (at + rng.random_range(1..64)).min(bytes.len());
                let span = bytes[at..end].to_vec();
                let to = rng.random_range(0..=bytes.len());
                bytes.splice(to..to, span);
            }
            4 if at < bytes.len() => bytes[at] ^= 1 << rng.random_range(0..8),
            _ => {
                let token = ["\n  ", "\n- ", ": ", ", "].choose(rng).unwrap_or(&" ");
                bytes.splice(at..at, token.bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Replays every file of the corpus directory `dir`: (files, report).
pub fn replay(dir: &Path) -> (usize, Report) {
    install_hook();
    FUZZING.with(|f| *f.borrow_mut() = true);
    let mut rng = StdRng::seed_from_u64(0);
    let mut report = Report::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in &files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        execute(&String::from_utf8_lossy(&bytes), &mut rng, &mut report);
    }
    FUZZING.with(|f| *f.borrow_mut() = false);
    (files.len(), report)
}

/// Whether `text` makes the YAML library panic (its panic is caught by the parser,
/// but the default hook would print it): for the corpus tests.
pub fn yaml_panics(text: &str) -> bool {
    install_hook();
    FUZZING.with(|f| *f.borrow_mut() = true);
    let before = panics();
    let _ = std::panic::catch_unwind(|| policy::parse_str(text, Path::new(ORIGIN)));
    FUZZING.with(|f| *f.borrow_mut() = false);
    panics() > before
}

/// Whether a panic on a fuzzing thread is counted (the check of the checker).
pub fn counts_panics() -> bool {
    install_hook();
    FUZZING.with(|f| *f.borrow_mut() = true);
    let before = PANICS.load(Ordering::SeqCst);
    let _ = std::panic::catch_unwind(|| panic!("the fuzzer's own check"));
    FUZZING.with(|f| *f.borrow_mut() = false);
    PANICS.load(Ordering::SeqCst) > before
}
