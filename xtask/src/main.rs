//! Project tasks. `cargo xtask setup` installs what a fresh machine lacks; every
//! other task calls it first, so `cargo xtask test` and `cargo xtask demo` work on a
//! clean clone with nothing installed by hand.

mod bench;
mod image;
mod install;
mod k8s_tools;
mod run;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Airlock project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install nightly rust-src, bpf-linker (against rustc's own LLVM), Debian
    /// packages the tests use, and mount bpffs. Idempotent; seconds when done.
    Setup,
    /// Build the self-contained `airlock` binary (target/release/airlock).
    Build,
    /// Build and install the binary, shell completions (bash, zsh, fish), manual
    /// pages and the systemd unit under PREFIX (as root for /usr/local).
    Install {
        /// Installation prefix: PREFIX/bin/airlock, PREFIX/share/man/man1/,
        /// PREFIX/share/{bash-completion,zsh,fish}/..., PREFIX/lib/systemd/system/.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Stage everything under this root instead of / (for packaging).
        #[arg(long)]
        destdir: Option<std::path::PathBuf>,
    },
    /// Lint, then run every test: unit, property, kernel and network (needs root).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Arguments for `cargo test` (a name filter; `--test FILE`; `-- --nocapture`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Show Airlock at work in two throwaway network namespaces (needs root).
    Demo,
    /// The long runs (needs root), each printing its figures; fails if any fails:
    /// the randomized differential run (random policies and frames through the real
    /// XDP program against the reference model), policy swaps under traffic, kills
    /// at every step and after random delays, and the policy pipeline fuzzed.
    Soak {
        /// How many frames for the differential run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// The seed (decimal or 0x-hex); a fresh one when not given.
        #[arg(long)]
        seed: Option<String>,
        /// Only these parts (differential, swaps, kills, fuzz, faults, upgrades); repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Policy swaps under traffic (half by the CLI, half by the agent).
        #[arg(long, default_value_t = 2_000)]
        swaps: u64,
        /// Applies killed after random delays (besides every named step).
        #[arg(long, default_value_t = 500)]
        kills: u64,
        /// Fuzz executions of the policy pipeline.
        #[arg(long, default_value_t = 10_000_000)]
        fuzz: u64,
        /// Deletions and recreations of the filtered interface under the agent.
        #[arg(long, default_value_t = 100)]
        churn: u64,
        /// Takeovers of a pinned filter by a build with another map layout, and back.
        #[arg(long, default_value_t = 100)]
        takeovers: u64,
        /// Agent reloads in a row (valid and invalid alternating).
        #[arg(long, default_value_t = 1_000)]
        reloads: u64,
    },
    /// Build the agent's container image from this machine's files (the release
    /// binary, a root filesystem from Debian packages): no registry needed. Needs
    /// podman (installed when missing).
    Image {
        /// The image's name.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Check the Helm chart and Kubernetes manifests offline (helm lint/template,
    /// kubernetes-validate, the chart's policy through `airlock validate`). No root.
    K8sCheck,
    /// Write the CRDs generated from crds/src/ into the Helm chart
    /// (deploy/helm/airlock/crds/airlock.dev.yaml); `--check` only compares.
    Crds {
        #[arg(long)]
        check: bool,
    },
    /// Benchmark against the kernel's floor, xdp-filter and nftables (needs root):
    /// writes bench-results/latest.{md,json} and ns-per-packet.png.
    Bench {
        /// Policies up to 10,000 prefixes only: a quick try of the suite.
        #[arg(long)]
        quick: bool,
        /// Only redraw the plot from bench-results/latest.json.
        #[arg(long)]
        plot_only: bool,
        /// Also time builds of the XDP program that stop early (after the policy
        /// state, the parse, the source lookup): where each row's time goes.
        #[arg(long)]
        breakdown: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            run::build_release()
        }
        Task::Install { prefix, destdir } => {
            setup::setup()?;
            install::install(&prefix, destdir.as_deref())
        }
        Task::Test { no_lint, test_args } => {
            setup::setup()?;
            run::test(!no_lint, &test_args)
        }
        Task::Image { tag } => {
            setup::setup()?;
            image::image(&tag)
        }
        Task::K8sCheck => {
            setup::setup()?;
            k8s_tools::k8s_check()
        }
        Task::Crds { check } => crds(check),
        Task::Demo => {
            setup::setup()?;
            run::demo()
        }
        Task::Soak {
            frames,
            seed,
            only,
            swaps,
            kills,
            fuzz,
            churn,
            takeovers,
            reloads,
        } => {
            setup::setup()?;
            let counts = [swaps, kills, fuzz, churn, takeovers, reloads];
            run::soak(frames, seed.as_deref(), &only, counts)
        }
        Task::Bench {
            quick,
            plot_only,
            breakdown,
        } => {
            if plot_only {
                return bench::replot();
            }
            setup::setup()?;
            bench::bench(quick, breakdown)
        }
    }
}

/// The chart's CRD file, from the types. A test (crds/tests/committed.rs) fails when
/// the committed file and the types disagree.
fn crds(check: bool) -> Result<()> {
    let path = run::workspace_root().join(airlock_crds::CHART_CRD_PATH);
    let generated = airlock_crds::crd_yaml()?;
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        eprintln!("xtask: {} is up to date", path.display());
        return Ok(());
    }
    if check {
        anyhow::bail!(
            "{} differs from the CRDs generated from crds/src/: run `cargo xtask crds`",
            path.display()
        );
    }
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    std::fs::write(&path, generated)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
