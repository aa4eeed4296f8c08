//! `airlock`: the command-line front of the library. Parses arguments, sets up
//! logging, runs the command, and maps failures to the exit codes of the CLI
//! contract: 0 success, 1 runtime failure, 2 bad usage or an invalid policy.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.log_format);
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            let code = cli::exit_code_for(&error);
            // Invalid policies print their diagnostics one per line, nothing else.
            eprintln!("airlock: {error:#}");
            ExitCode::from(code)
        }
    }
}
