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
    let now = std::time::SystemTime::now();
    let max_age = airlock::check::DEFAULT_REGION_MAX_AGE;
    if args.output == OutputFormat::Json {
        let listed: Vec<serde_json::Value> = all
            .iter()
            .map(|region| {
                let mut value = json!(region);
                let age = regions::age(region, now);
                value["age_days"] = json!(age.map(|a| a.as_secs() / 86_400));
                value["stale"] = json!(age.is_some_and(|a| a > max_age));
                value
            })
            .collect();
        output::print_json(&json!({
            "regions": listed,
            "stale_after_days": max_age.as_secs() / 86_400,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for region in all {
        let age = regions::age(region, now)
            .map(|a| {
                let stale = if a > max_age {
                    format!(
                        ", stale: older than {} days, check the source",
                        max_age.as_secs() / 86_400
                    )
                } else {
                    String::new()
                };
                format!(" ({} days ago{stale})", a.as_secs() / 86_400)
            })
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
