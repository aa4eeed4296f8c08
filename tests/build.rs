//! Compiles the benchmark's floor programs (`bench-ebpf/`, nightly,
//! bpfel-unknown-none) and leaves their objects in OUT_DIR, where `floors.rs`
//! embeds them.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const FLOORS: [&str; 5] = ["xdp-pass", "xdp-drop", "xdp-peek-drop", "xdp-tx", "tc-pass"];

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // As userspace/build.rs: without the eBPF toolchain the crate still builds, with
    // empty objects that fail to load with aya's own error.
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        for floor in FLOORS {
            let object = out_dir.join(floor);
            if !object.exists() {
                fs::write(&object, []).context("writing placeholder object")?;
            }
        }
        return Ok(());
    }
    let root = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = PathBuf::from(root).join("../bench-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "airlock-bench-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the floor programs (run `cargo xtask setup` first)")
}
