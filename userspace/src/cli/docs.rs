//! `airlock completions SHELL` and `airlock man`: shell completions and manual pages
//! generated from the clap definitions, so they can never disagree with the
//! commands (`cargo xtask install` puts them in place).

use std::{fs, io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "airlock",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write airlock.1 and one page per command (airlock-apply.1, ...) into this
    /// directory instead of printing airlock(1).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    let Some(dir) = args.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(command).render(&mut out)?;
        std::io::stdout().write_all(&out)?;
        return Ok(ExitCode::SUCCESS);
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
