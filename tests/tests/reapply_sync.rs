//! Re-applies rewrite the inactive copy (fresh source tables, every port slot) and
//! flip. These tests read the real kernel maps back after each apply and hold both
//! copies to exactly the compiled policies: the one in force to the new policy, the
//! other to the previous one (what a rollback returns to), including after an apply
//! that died half way through writing a copy. Source tables read back as canonical
//! prefixes (`compile::ranges::canonical`): the same answer for every address.
//!
//! Needs root (BPF).

use airlock::compile::{self, Compiled, ranges};
use airlock::loader::PolicySummary;
use airlock_integration::kernel::{Harness, parse_policy};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_net(rng: &mut StdRng) -> IpNet {
    if rng.random_ratio(3, 4) {
        let len = *[32u8, 32, 24, 28, 20, 16]
            .get(rng.random_range(0..6))
            .unwrap_or(&32);
        let addr = rng.random_range(0x0b00_0000u32..0xdf00_0000);
        IpNet::V4(Ipv4Net::new(addr.into(), len).expect("length").trunc())
    } else {
        let len = *[128u8, 64, 48, 56, 40]
            .get(rng.random_range(0..5))
            .unwrap_or(&64);
        let addr: u128 = (rng.random::<u128>() >> 3) | (1u128 << 125);
        IpNet::V6(Ipv6Net::new(addr.into(), len).expect("length").trunc())
    }
}

fn list(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A policy whose trie values differ from prefix to prefix (two rules with
/// different sources, a deny set), and whose ports change from round to round.
fn policy_yaml(a: &[IpNet], b: &[IpNet], deny: &[IpNet], round: usize) -> String {
    let port = 5000 + (round % 3) * 100;
    format!(
        "version: 1\ninterfaces: [eth0]\nmode: enforce\ndefault: pass\n\
         sets:\n  a: {}\n  b: {}\n  blocked: {}\n\
         deny: [blocked]\n\
         rules:\n  - name: r0\n    ports: [{port}-{}/tcp, 53/udp]\n    from: [a]\n\
         \x20 - name: r1\n    ports: [{}/tcp, 8000/tcp]\n    from: [a, b]\n",
        list(a),
        list(b),
        list(deny),
        port + round + 1,
        5432 + round,
    )
}

/// Replaces `percent`% of `nets` by fresh prefixes.
fn mutate(rng: &mut StdRng, nets: &mut [IpNet], percent: usize) {
    let n = (nets.len() * percent).div_ceil(100);
    for _ in 0..n {
        let at = rng.random_range(0..nets.len());
        nets[at] = random_net(rng);
    }
}

fn compiled_of(yaml: &str) -> Compiled {
    compile::compile(&parse_policy(yaml)).expect("compiles")
}

/// Both copies of the filter's maps, read back from the kernel, equal `active` (the
/// copy in force) and `previous` (the other one; `None`: not checked).
fn assert_holds(h: &Harness, active: &Compiled, previous: Option<&Compiled>, when: &str) {
    let maps = &h.filter.maps;
    let generation = maps.active_generation().expect("active generation");
    let mut copies = vec![(generation, active, "in force")];
    if let Some(previous) = previous {
        copies.push((1 - generation, previous, "previous"));
    }
    for (generation, compiled, which) in copies {
        let (v4, v6) = maps.generation_prefixes(generation).expect("tables");
        let (want_v4, want_v6) = (
            ranges::canonical(&compiled.v4),
            ranges::canonical(&compiled.v6),
        );
        assert!(
            !want_v4.is_empty() && v4 == want_v4,
            "{when}: the {which} copy's IPv4 table ({} prefixes) is not the compiled policy ({} prefixes)",
            v4.len(),
            want_v4.len()
        );
        assert!(
            !want_v6.is_empty() && v6 == want_v6,
            "{when}: the {which} copy's IPv6 table ({} prefixes) is not the compiled policy ({} prefixes)",
            v6.len(),
            want_v6.len()
        );
        let (tcp, udp) = maps.generation_ports(generation).expect("ports");
        assert!(
            tcp == compiled.tcp_ports.dense(),
            "{when}: {which} TCP ports differ"
        );
        assert!(
            udp == compiled.udp_ports.dense(),
            "{when}: {which} UDP ports differ"
        );
    }
}

fn apply(h: &mut Harness, compiled: &Compiled) {
    h.filter
        .maps
        .apply(compiled, &PolicySummary::default())
        .expect("apply");
}

#[test]
fn repeated_small_changes_leave_both_copies_exactly_as_compiled() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    let mut a: Vec<IpNet> = (0..3000).map(|_| random_net(&mut rng)).collect();
    let mut b: Vec<IpNet> = (0..1000).map(|_| random_net(&mut rng)).collect();
    let mut deny: Vec<IpNet> = (0..200).map(|_| random_net(&mut rng)).collect();
    let mut h = Harness::new();
    let mut previous: Option<Compiled> = None;
    for round in 0..8 {
        if round > 0 {
            mutate(&mut rng, &mut a, 1);
            mutate(&mut rng, &mut b, 2);
            mutate(&mut rng, &mut deny, 5);
        }
        let compiled = compiled_of(&policy_yaml(&a, &b, &deny, round));
        apply(&mut h, &compiled);
        assert_holds(&h, &compiled, previous.as_ref(), &format!("round {round}"));
        previous = Some(compiled);
    }
    // The same policy again: nothing to write, and still exact.
    let same = previous.clone().expect("applied");
    apply(&mut h, &same);
    assert_holds(&h, &same, previous.as_ref(), "same policy again");
}

#[test]
fn a_copy_left_half_written_by_a_dead_apply_heals_on_the_next_one() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    let a: Vec<IpNet> = (0..2000).map(|_| random_net(&mut rng)).collect();
    let b: Vec<IpNet> = (0..500).map(|_| random_net(&mut rng)).collect();
    let deny: Vec<IpNet> = (0..100).map(|_| random_net(&mut rng)).collect();
    let mut h = Harness::new();
    let first = compiled_of(&policy_yaml(&a, &b, &deny, 0));
    apply(&mut h, &first);
    let mut a2 = a.clone();
    mutate(&mut rng, &mut a2, 1);
    let second = compiled_of(&policy_yaml(&a2, &b, &deny, 1));
    apply(&mut h, &second);
    assert_holds(&h, &second, Some(&first), "before the interruption");

    // An apply of an unrelated policy dies after writing the source tables of the
    // inactive copy: that copy is garbage now, with no valid config, so it is no
    // longer a rollback target.
    let junk_nets: Vec<IpNet> = (0..1500).map(|_| random_net(&mut rng)).collect();
    let junk = compiled_of(&policy_yaml(&junk_nets, &a[..10], &deny[..5], 2));
    h.filter
        .maps
        .interrupted_apply(&junk)
        .expect("interrupted apply");
    let active = h.filter.maps.active_generation().expect("generation");
    assert!(
        h.filter
            .maps
            .generation_summary(1 - active)
            .expect("summary")
            .is_none(),
        "a half-written copy must not claim to hold a policy"
    );
    assert_holds(
        &h,
        &second,
        None,
        "after the interruption (policy in force untouched)",
    );

    // The next apply writes that copy: it must hold exactly the new policy.
    let mut a3 = a2.clone();
    mutate(&mut rng, &mut a3, 1);
    let third = compiled_of(&policy_yaml(&a3, &b, &deny, 3));
    apply(&mut h, &third);
    assert_holds(&h, &third, Some(&second), "after healing");
    // And the one after, into the other copy.
    let fourth = compiled_of(&policy_yaml(&a2, &b, &deny, 4));
    apply(&mut h, &fourth);
    assert_holds(&h, &fourth, Some(&third), "the apply after that");
}
