//! A re-apply through the import cache (`policy::import_cache`), as an operator
//! runs it: `airlock apply` of a policy importing a large list, then of the list
//! with lines changed, inserted and removed. The second apply must take its
//! networks from the cache (its debug log says so), and what it puts in force must
//! be what the full parse gives: the kernel lets in the source a changed line
//! added and keeps out the one a changed line removed, over real TCP between two
//! namespaces, and the compiled figures `status` reports are those of the list
//! compiled in this process, without the cache.
//!
//! Needs root (BPF, namespaces); fails, never skips, without it.

use std::path::Path;

use airlock_integration::cli::{Run, airlock_bin};
use airlock_integration::fixture::{Fixture, PORT};
use airlock_integration::netns::addr::{OFFICE_V4, PARTNER_V4, PARTNER_V6, STRANGER_V4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A prefix outside the documentation ranges (so outside the test bed).
fn random_line(rng: &mut StdRng) -> String {
    if rng.random_ratio(3, 4) {
        let len = [32u32, 24, 28, 20][rng.random_range(0..4)];
        let addr = rng.random_range(0x0b00_0000u32..0xc000_0000) & (u32::MAX << (32 - len));
        format!("{}/{len}", std::net::Ipv4Addr::from(addr))
    } else {
        let addr: u128 = (rng.random::<u128>() >> 8) | (0x24u128 << 120);
        let addr = addr & (u128::MAX << 64);
        format!("{}/64", std::net::Ipv6Addr::from(addr))
    }
}

/// `airlock apply` with the cache in `cache`, logging at debug.
fn apply(f: &Fixture, policy: &Path, cache: &Path) -> Run {
    f.bed
        .server
        .command(airlock_bin())
        .args(["apply", "-f"])
        .arg(policy)
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env("AIRLOCK_CACHE_DIR", cache)
        .env("AIRLOCK_LOG", "airlock=debug")
        .env("NO_COLOR", "1")
        .env_remove("SSH_CONNECTION")
        .output()
        .expect("running airlock")
        .into()
}

#[test]
fn a_reapply_through_the_import_cache_puts_in_force_what_the_full_parse_gives() {
    let f = Fixture::new("alic");
    let cache = f.dir.path().join("cache");
    let mut rng = StdRng::seed_from_u64(0x1c_0ca_c4e);
    let mut lines: Vec<String> = (0..50_000).map(|_| random_line(&mut rng)).collect();
    // The office is in the first list, on a line the change replaces; the
    // partner's address only in the second, inserted among others.
    lines[20_000] = format!("{OFFICE_V4}/32");
    let list = |lines: &[String]| f.write("list.txt", &(lines.join("\n") + "\n"));
    list(&lines);
    let policy = f.write(
        "policy.yaml",
        &format!(
            "version: 1\ninterfaces: [{}]\nmode: enforce\ndefault: drop\n\
             sets:\n  bulk:\n    file: list.txt\n\
             rules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [bulk]\n",
            f.bed.server_if
        ),
    );
    let first = apply(&f, &policy, &cache);
    assert_eq!(first.code, 0, "first apply: {}", first.stderr);
    assert!(
        first.stderr.contains("import cache hit=false"),
        "{}",
        first.stderr
    );
    assert!(f.gets_in(OFFICE_V4), "the office is on the first list");
    assert!(f.kept_out(PARTNER_V4));

    // 1% of the lines changed (the office's among them), a block inserted with
    // the partner in it, a line removed.
    for i in (0..lines.len()).step_by(100) {
        lines[i] = random_line(&mut rng);
    }
    let block = [
        random_line(&mut rng),
        format!("{PARTNER_V4}/32"),
        format!("{PARTNER_V6}/128"),
    ];
    lines.splice(30_001..30_001, block);
    lines.remove(40_000);
    list(&lines);
    let second = apply(&f, &policy, &cache);
    assert_eq!(second.code, 0, "re-apply: {}", second.stderr);
    assert!(
        second.stderr.contains("import cache hit=true"),
        "the re-apply did not use the cache: {}",
        second.stderr
    );
    assert!(
        f.gets_in(PARTNER_V4),
        "an inserted line's network is in force"
    );
    assert!(
        f.kept_out(OFFICE_V4),
        "a changed line's old network is gone"
    );
    assert!(f.kept_out(STRANGER_V4));

    // The figures of what is in force are those of the full parse's compile.
    let full = airlock::policy::load(&policy).expect("policy loads");
    let stats = airlock::compile::compile(&full).expect("compiles").stats();
    let status = f.status_json();
    let text = status.to_string();
    for (key, value) in [
        ("prefixes_v4", stats.entries.v4),
        ("prefixes_v6", stats.entries.v6),
    ] {
        assert!(
            text.contains(&format!("\"{key}\":{value}")),
            "{key} should be {value}: {text}"
        );
    }
}
