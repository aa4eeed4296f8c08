//! `airlock regions`: the built-in region sets, where they come from and as of when.

use std::process::ExitCode;

use airlock::regions;
use serde_json::json;

use super::{OutputFormat, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let all = regions::all();
    if args.output == OutputFormat::Json {
        output::print_json(&json!({ "regions": all }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now();
    for region in all {
        let age = regions::age(region, now)
            .map(|a| format!(" ({} days ago)", a.as_secs() / 86_400))
            .unwrap_or_default();
        println!(
            "{}: {} ({} {}), {} addresses, as of {}{age}",
            region.name,
            region.description,
            region.provider,
            region.provider_region,
            region.cidrs.len(),
            region.as_of
        );
        println!("  source: {}", region.source);
        for cidr in &region.cidrs {
            println!("  {cidr}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
