//! `airlock validate`: parse, validate and compile; touches nothing.

use std::{path::PathBuf, process::ExitCode};

use airlock::{pipeline, policy};
use serde_json::json;

use super::{OutputFormat, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy file.
    #[arg(short = 'f', long = "file")]
    policy: PathBuf,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let result = policy::load(&args.policy)
        .map_err(anyhow::Error::from)
        .and_then(|p| {
            let compiled = pipeline::compile(&p)?;
            Ok((p, compiled))
        });
    if args.output == OutputFormat::Json {
        let value = match &result {
            Ok((p, compiled)) => {
                json!({ "valid": true, "policy": p.origin.display().to_string(), "stats": compiled.stats() })
            }
            Err(e) => {
                let diagnostics = e
                    .downcast_ref::<policy::PolicyError>()
                    .map(|p| p.diagnostics().to_vec())
                    .unwrap_or_default();
                json!({ "valid": false, "error": format!("{e:#}"), "diagnostics": diagnostics })
            }
        };
        output::print_json(&value)?;
        return Ok(if result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    let (p, compiled) = result?;
    airlock::safety::ephemeral::warn(&p);
    let stats = compiled.stats();
    println!(
        "{}: valid; {} rules, {} IPv4 + {} IPv6 map entries",
        p.origin.display(),
        stats.rules,
        stats.entries.v4,
        stats.entries.v6
    );
    if p.interfaces == policy::Interfaces::Unspecified {
        println!("  it lists no interfaces: apply it with --iface IF (or add `interfaces: [...]`)");
    }
    Ok(ExitCode::SUCCESS)
}
