//! `airlock`: the command-line front of the library. Parses arguments, sets up
//! logging, runs the command, and maps failures to the exit codes of the CLI
//! contract: 0 success, 1 runtime failure, 2 bad usage or an invalid policy.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

/// A large policy's apply is a few passes over buffers of tens of MiB. glibc maps
/// each fresh and unmaps it when freed, so every pass pays a page fault per 4 KiB
/// (a fifth of the CPU time of a re-apply at a million prefixes); mimalloc reuses
/// freed memory between the passes and backs large spans with huge pages. A 1%
/// re-apply at a million prefixes: 212 to 159 ms (median of 10).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Versions computed at run time (the kernel's features); leaked once, as clap
    // takes them by 'static reference.
    let command = cli::Cli::command()
        .version(&*String::leak(cli::version::short()))
        .long_version(&*String::leak(cli::version::long()));
    let args = cli::Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    if args.exits_on_closed_pipe() {
        // SAFETY: nothing else runs yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let datapath_log = args.datapath_log_level();
    cli::init_logging(
        args.verbose,
        args.quiet,
        args.log_format,
        datapath_log.is_some(),
    );
    if let Some(level) = datapath_log {
        airlock::loader::set_datapath_log(level);
    }
    let json = args.json_output();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            let code = cli::exit_code_for(&error);
            cli::report_error(&error, code, json);
            ExitCode::from(code)
        }
    }
}
