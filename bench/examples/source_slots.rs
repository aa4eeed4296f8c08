//! What the bench's IPv4 addresses find in their directory slots, and the shape
//! of every slot at each measured size: a debugging aid for the source lookup's
//! cost (issue 19), run by hand (a report, not a check):
//! `cargo run --release -p airlock-bench --example source_slots`
//! (`AIRLOCK_BENCH_SIZES=100000,1000000` by default).

use std::{collections::BTreeMap, net::Ipv4Addr};

use airlock::compile::{compile, ranges};
use airlock_bench::bench::policies::{self, Workload};
use airlock_common::{
    DIRECTORY_BITS_V4, DIRECTORY_SHIFT_V4, INLINE_TABLE_V4, PREALLOCATED_VALUES_V4,
    RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, RUN_INDEX_MASK_V4, SLOT_ANSWER_V4,
    SourceRangeV4,
};

fn describe(elements: &[SourceRangeV4], addr: Ipv4Addr) -> String {
    let key = u32::from(addr);
    let slot = elements[(key >> DIRECTORY_SHIFT_V4) as usize].0;
    if slot & SLOT_ANSWER_V4 != 0 {
        return format!("{addr}: answer, class {}", slot & 0xffff);
    }
    let index = slot & RUN_INDEX_MASK_V4;
    let k = (slot >> RUN_HALVINGS_SHIFT_V4) & 15;
    let d = ((slot >> RUN_FIRST_PROBE_SHIFT_V4) & 7) + 1;
    format!(
        "{addr}: run at element {index} ({}), k {k} halvings, first probe d {d}, length {}",
        match index / INLINE_TABLE_V4 {
            0 => "inline".to_owned(),
            chunk if chunk < PREALLOCATED_VALUES_V4 => {
                format!("chunk {chunk}, a preallocated value")
            }
            chunk => format!("chunk {chunk}, a chunk map"),
        },
        (1 << k) + d
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes: Vec<usize> = std::env::var("AIRLOCK_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".to_owned())
        .split(',')
        .map(|s| s.parse().expect("size"))
        .collect();
    for generated in sizes {
        let workload = Workload::new(generated, 1);
        let list = dir.path().join("bulk.txt");
        std::fs::write(&list, workload.list_text()).expect("list");
        let yaml = dir.path().join("policy.yaml");
        std::fs::write(&yaml, workload.policy_yaml("eth0", &list)).expect("policy");
        let policy = airlock::policy::load(&yaml).expect("policy parses");
        let compiled = compile(&policy).expect("compiles");
        let table = ranges::table::<SourceRangeV4, 4>(&compiled.v4, INLINE_TABLE_V4 as usize)
            .expect("table");
        let elements = &table.elements;
        println!(
            "== {} ({} IPv4 entries, {} elements, {} classes)",
            workload.label,
            compiled.v4.len(),
            elements.len(),
            table.classes.len()
        );
        println!("  allowed {}", describe(elements, workload.allowed_v4));
        println!("  refused {}", describe(elements, policies::DROP_V4));
        let mut answers = 0usize;
        let mut runs: BTreeMap<(u32, u32), (usize, usize)> = BTreeMap::new();
        let mut in_chunk = 0usize;
        for slot in &elements[..1 << DIRECTORY_BITS_V4] {
            let slot = slot.0;
            if slot & SLOT_ANSWER_V4 != 0 {
                answers += 1;
                continue;
            }
            let k = (slot >> RUN_HALVINGS_SHIFT_V4) & 15;
            let d = ((slot >> RUN_FIRST_PROBE_SHIFT_V4) & 7) + 1;
            let chunk = (slot & RUN_INDEX_MASK_V4) >= INLINE_TABLE_V4;
            let e = runs.entry((k, d)).or_default();
            e.0 += 1;
            if chunk {
                e.1 += 1;
                in_chunk += 1;
            }
        }
        let total = 1usize << DIRECTORY_BITS_V4;
        println!(
            "  slots {total}: answers {answers}, runs {} ({in_chunk} in chunks)",
            total - answers
        );
        for ((k, d), (n, c)) in &runs {
            println!(
                "    length {:2} (k {k}, d {d}): {n:7} slots, {c:7} in chunks",
                (1 << k) + d
            );
        }
        // Addresses of the bench's generated space weigh slots alike: the share of
        // slots between 11/8 and 223/8 that are answers.
        let lo = (0x0b00_0000u32 >> DIRECTORY_SHIFT_V4) as usize;
        let hi = (0xdf00_0000u32 >> DIRECTORY_SHIFT_V4) as usize;
        let used = &elements[lo..hi];
        let a = used.iter().filter(|s| s.0 & SLOT_ANSWER_V4 != 0).count();
        println!(
            "  in 11/8..223/8: {} slots, answers {a} ({:.1}%)",
            used.len(),
            100.0 * a as f64 / used.len() as f64
        );
    }
}
