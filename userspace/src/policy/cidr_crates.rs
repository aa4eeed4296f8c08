//! ipnet against ipnetwork (and the hand-written fast path) on what the policy code
//! and the compiler ask of a network type: parsing a million-line import,
//! containment, prefix arithmetic, aggregation. A measurement, not a check: run
//!
//!     cargo test --release -p airlock --lib cidr_crates -- --ignored --nocapture
//!
//! It prints the best of five runs of each (docs/architecture.md, "Dependencies",
//! has the figures and the decision they led to). Every variant's results are
//! compared, so a crate that parses differently shows as a difference, not a speed.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ipnetwork::IpNetwork;

use super::fast_cidr::fast_line;

const LINES: usize = 1_000_000;

/// A range list as providers publish them: 80% IPv4 (/8 to /32), 20% IPv6 (/16 to
/// /128), without host bits, one per line (a fixed seed: the same list every run).
fn list() -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::with_capacity(LINES * 20);
    for _ in 0..LINES {
        let r = next();
        let net = if r % 5 != 0 {
            let len = 8 + (r >> 8) as u8 % 25;
            IpNet::new(IpAddr::V4(Ipv4Addr::from((r >> 32) as u32)), len).unwrap()
        } else {
            let len = 16 + (r >> 8) as u8 % 113;
            let addr = (u128::from(next()) << 64) | u128::from(next());
            IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap()
        };
        text.push_str(&net.trunc().to_string());
        text.push('\n');
    }
    text
}

fn best_of<T>(mut run: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..5 {
        let start = Instant::now();
        let out = run();
        best = best.min(start.elapsed());
        last = Some(out);
    }
    (best, last.unwrap())
}

fn report(what: &str, time: Duration, per: usize) {
    println!(
        "{what:<52} {:>8.1} ms  {:>6.1} ns each",
        time.as_secs_f64() * 1e3,
        time.as_nanos() as f64 / per as f64
    );
}

fn to_ipnet(net: IpNetwork) -> IpNet {
    IpNet::new(net.ip(), net.prefix()).unwrap()
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture (release)"]
fn compare_ipnet_ipnetwork() {
    let text = list();
    println!("{} lines, {} MiB; best of 5", LINES, text.len() >> 20);

    // Parsing, as the general path would (each line to a network, host bits refused).
    let (t, ipnet_nets) = best_of(|| {
        text.lines()
            .map(|l| {
                let net: IpNet = l.parse().unwrap();
                assert_eq!(net.trunc(), net);
                net
            })
            .collect::<Vec<_>>()
    });
    report("parse: ipnet (str::parse + host-bit check)", t, LINES);
    let (t, ipnetwork_nets) = best_of(|| {
        text.lines()
            .map(|l| {
                let net: IpNetwork = l.parse().unwrap();
                assert_eq!(net.network(), net.ip());
                net
            })
            .collect::<Vec<_>>()
    });
    report("parse: ipnetwork (str::parse + host-bit check)", t, LINES);
    let (t, fast_nets) = best_of(|| {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(LINES);
        let mut at = 0;
        while at < bytes.len() {
            at += fast_line(&bytes[at..], &mut out).expect("a plain line");
        }
        out
    });
    report("parse: fast_cidr (one thread)", t, LINES);
    assert_eq!(ipnet_nets, fast_nets);
    assert_eq!(
        ipnet_nets,
        ipnetwork_nets
            .iter()
            .copied()
            .map(to_ipnet)
            .collect::<Vec<_>>()
    );

    // Containment: every network against a fixed set of addresses.
    let probes: Vec<IpAddr> = ipnet_nets.iter().take(64).map(|n| n.addr()).collect();
    let (t, a) = best_of(|| {
        let mut hits = 0usize;
        for net in &ipnet_nets {
            for ip in &probes {
                hits += usize::from(black_box(net).contains(ip));
            }
        }
        hits
    });
    report("contains: ipnet", t, LINES * probes.len());
    let (t, b) = best_of(|| {
        let mut hits = 0usize;
        for net in &ipnetwork_nets {
            for ip in &probes {
                hits += usize::from(black_box(net).contains(*ip));
            }
        }
        hits
    });
    report("contains: ipnetwork", t, LINES * probes.len());
    assert_eq!(a, b);

    // Prefix arithmetic: network, broadcast and the supernet one bit shorter.
    let (t, a) = best_of(|| {
        let mut sum = 0u64;
        for net in &ipnet_nets {
            let net = black_box(net);
            let up = net.supernet().unwrap_or(*net);
            sum = sum.wrapping_add(u64::from(up.prefix_len()));
            if let (IpNet::V4(n), IpNet::V4(s)) = (net, up) {
                sum = sum.wrapping_add(
                    u64::from(u32::from(n.broadcast())) ^ u64::from(u32::from(s.network())),
                );
            }
        }
        sum
    });
    report("arithmetic: ipnet (supernet, network, broadcast)", t, LINES);
    let (t, b) = best_of(|| {
        let mut sum = 0u64;
        for net in &ipnetwork_nets {
            let net = black_box(net);
            let len = net.prefix().saturating_sub(1);
            let up = match net {
                IpNetwork::V4(n) if n.prefix() > 0 => {
                    let s = ipnetwork::Ipv4Network::new(n.ip(), len).unwrap();
                    IpNetwork::V4(ipnetwork::Ipv4Network::new(s.network(), len).unwrap())
                }
                IpNetwork::V6(n) if n.prefix() > 0 => {
                    let s = ipnetwork::Ipv6Network::new(n.ip(), len).unwrap();
                    IpNetwork::V6(ipnetwork::Ipv6Network::new(s.network(), len).unwrap())
                }
                other => *other,
            };
            sum = sum.wrapping_add(u64::from(up.prefix()));
            if let (IpNetwork::V4(n), IpNetwork::V4(s)) = (net, up) {
                sum = sum.wrapping_add(
                    u64::from(u32::from(n.broadcast())) ^ u64::from(u32::from(s.network())),
                );
            }
        }
        sum
    });
    report(
        "arithmetic: ipnetwork (the same, by hand: no supernet)",
        t,
        LINES,
    );
    assert_eq!(a, b);

    // Aggregation: ipnet has it; ipnetwork does not (the compiler folds prefixes
    // itself, compile/prefixes.rs, so neither is on the apply path).
    let (t, merged) = best_of(|| IpNet::aggregate(&ipnet_nets));
    report("aggregate: ipnet (ipnetwork: none)", t, LINES);
    println!("  {} networks aggregate to {}", LINES, merged.len());
}
