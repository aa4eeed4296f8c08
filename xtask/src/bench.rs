//! `cargo xtask bench`: builds the release binaries, installs the peers it compares
//! against (Debian's xdp-tools and nftables) when missing, runs `airlock-bench`,
//! and draws its figures into `bench-results/ns-per-packet.png`. `--quick` runs
//! the same suite on policies of up to 10,000 prefixes only (no 100k or 1M rows),
//! for trying it out; its results overwrite the full run's.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use plotters::prelude::*;

use crate::run::{build_release, cmd, workspace_root};

/// What the suite needs on the machine, by Debian package: the peers, bpftool for
/// map memory, GNU time for the CLI's peak memory, and a font for the plot's text.
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/sbin/xdp-filter", "xdp-tools"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/bin/time", "time"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn bench(quick: bool, breakdown: bool) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the benchmark loads BPF programs and creates network namespaces: run it as root");
    }
    ensure_packages()?;
    build_release()?;
    let root = workspace_root();
    // A breakdown is a diagnosis, not the results of record: kept apart.
    let out = if breakdown {
        root.join("bench-results/breakdown")
    } else {
        root.join("bench-results")
    };
    let mut command = Command::new(root.join("target/release/airlock-bench"));
    command
        .arg("--out")
        .arg(&out)
        .current_dir(&root)
        .env("AIRLOCK_BIN", root.join("target/release/airlock"));
    if quick {
        command.arg("--quick");
    }
    if breakdown {
        command.arg("--per-packet-only");
        for stop in BREAKDOWN_STOPS {
            let object = build_stop_variant(stop)?;
            command
                .arg("--variant")
                .arg(format!("{stop}={}", object.display()));
        }
    }
    cmd(&mut command)?;
    if breakdown {
        eprintln!("xtask: breakdown in {}", out.join("latest.md").display());
        return Ok(());
    }
    let png = out.join("ns-per-packet.png");
    plot(&out.join("latest.json"), &png)?;
    warn_if_busy(&out.join("latest.json"));
    eprintln!(
        "xtask: results in {}, {} and {}",
        out.join("latest.md").display(),
        out.join("latest.json").display(),
        png.display()
    );
    Ok(())
}

/// The XDP program's stop points (`cfg(airlock_stop)` in ebpf-programs/src/main.rs),
/// in the order the program reaches them.
const BREAKDOWN_STOPS: [&str; 3] = ["config", "parse", "source"];

/// Builds the XDP program ending at `stop` (a variant the bench times beside the
/// real one; never shipped) and returns its object. Same flags as aya-build uses
/// for the product, plus the stop's cfg, in a target directory of its own.
fn build_stop_variant(stop: &str) -> Result<std::path::PathBuf> {
    let root = workspace_root();
    let target = root.join("target/breakdown").join(stop);
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"".to_owned(),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "--cfg=airlock_breakdown".to_owned(),
        format!("--cfg=airlock_stop=\"{stop}\""),
    ]
    .join("\x1f");
    cmd(Command::new("cargo")
        .args(["+nightly", "build", "-q", "-Z", "build-std=core"])
        .args([
            "--bin",
            "airlock-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .current_dir(root.join("ebpf-programs"))
        // Not the stable toolchain this xtask runs under.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_ENCODED_RUSTFLAGS", flags))
    .with_context(|| format!("building the {stop} breakdown variant"))?;
    Ok(target.join("bpfel-unknown-none/release/airlock-ebpf"))
}

/// Says so when the run was taken on a busy machine (the report marks it too).
fn warn_if_busy(json: &Path) {
    let Some(results) = std::fs::read_to_string(json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return;
    };
    if results["busy"] == true {
        let load = &results["load_average"];
        eprintln!(
            "xtask: warning: busy machine (one-minute load average up to {} on {} cores): figures are noisy; run again when it is idle",
            load["peak_1min"], load["cores"]
        );
    }
}

fn ensure_packages() -> Result<()> {
    crate::setup::ensure_tools(PACKAGES)
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

struct Panel {
    title: String,
    series: Vec<Series>,
}

fn panels(json: &serde_json::Value) -> Vec<Panel> {
    let plot = &json["plot"];
    plot["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| Panel {
            title: p["title"].as_str().unwrap_or_default().to_owned(),
            series: p["series"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Series {
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    points: s["points"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|pt| Some((pt[0].as_f64()?, pt[1].as_f64()?)))
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect(),
        })
        .collect()
}

/// ns per packet against policy size (log scale), one panel per measurement.
pub fn plot(json: &Path, png: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let font = std::fs::read(FONT).with_context(|| format!("reading the plot font {FONT}"))?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let x_label = json["plot"]["x_label"]
        .as_str()
        .unwrap_or("prefixes")
        .to_owned();
    let panels = panels(&json);
    let root = BitMapBackend::new(png, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let x_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(10.0f64, f64::max);
        let y_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(1.0f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((5f64..x_max * 2.0).log_scale(), 0f64..y_max * 1.15)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(&x_label)
            .y_desc("ns per packet")
            .x_label_formatter(&|x| size_label(*x))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        for (i, series) in panel.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    series.points.clone(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(series.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    series
                        .points
                        .iter()
                        .map(|&p| Circle::new(p, 4, colour.filled())),
                )
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn size_label(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{}M", (x / 1e6).round()),
        x if x >= 1e3 => format!("{}k", (x / 1e3).round()),
        x => format!("{}", x.round()),
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

/// Redraws the plot from the last results (`cargo xtask bench --plot-only`).
pub fn replot() -> Result<()> {
    let out = workspace_root().join("bench-results");
    plot(&out.join("latest.json"), &out.join("ns-per-packet.png"))
}
