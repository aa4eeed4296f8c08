//! Project tasks. `cargo xtask setup` installs what a fresh machine lacks; every
//! other task calls it first, so `cargo xtask test` and `cargo xtask demo` work on a
//! clean clone with nothing installed by hand.

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
    /// Lint, then run every test: unit, property, kernel and network (needs root).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Show Airlock at work in two throwaway network namespaces (needs root).
    Demo,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            run::build_release()
        }
        Task::Test { no_lint, test_args } => {
            setup::setup()?;
            run::test(!no_lint, &test_args)
        }
        Task::Demo => {
            setup::setup()?;
            run::demo()
        }
    }
}
