//! `vivachat bench`: proving (or correcting) each Big-O claim with counted
//! operations and timings, and measuring the server end to end.
//!
//! - `structures.rs`: each seed choice against the naive alternative.
//! - `fit.rs`: the complexity class from a log-log slope.
//! - `plot.rs`: the SVG chart.
//! - `core.rs`: routing through the core alone.
//! - `load.rs`: a real server under load over real WebSockets.
//! - `python.rs`: the same claims in CPython (`--python`), with `seed.py`.

pub mod core;
pub mod fit;
pub mod load;
pub mod plot;
pub mod python;
pub mod structures;

use std::fmt::Write as _;
use std::path::PathBuf;

use colored::Colorize;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use structures::{compare, Budget, ComparisonResult, Workload};

/// One claim of the seed, for `bench --only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Queue,
    Presence,
    Connections,
    Groups,
    Blocks,
}

impl Only {
    pub fn workload(self) -> Workload {
        match self {
            Only::Queue => Workload::QueueDrain,
            Only::Presence => Workload::Presence,
            Only::Connections => Workload::ConnectionLookup,
            Only::Groups => Workload::GroupJoin,
            Only::Blocks => Workload::BlockCheck,
        }
    }
}

/// `bench structures` options.
#[derive(Debug, Clone)]
pub struct StructuresOptions {
    pub sizes: Option<Vec<usize>>,
    pub quick: bool,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub color: bool,
    /// Also measure the seed's claims in CPython.
    pub python: bool,
    /// One claim only.
    pub only: Option<Only>,
}

#[derive(Debug, Serialize)]
pub struct StructuresReport {
    pub sizes: Vec<usize>,
    pub repetitions: usize,
    pub comparisons: Vec<ComparisonResult>,
    /// With `--python`: the same claims measured in CPython.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<python::PythonReport>,
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Runs every comparison (a progress bar on stderr meanwhile).
pub fn run_structures(options: &StructuresOptions) -> anyhow::Result<StructuresReport> {
    let mut budget = if options.quick {
        Budget::quick()
    } else {
        Budget::default_sweep()
    };
    if let Some(sizes) = &options.sizes {
        budget.sizes = sizes.clone();
    }
    let workloads: Vec<Workload> = match options.only {
        Some(only) => vec![only.workload()],
        None => Workload::ALL.to_vec(),
    };
    let steps: usize = workloads
        .iter()
        .map(|w| w.variants().len() * budget.sizes.len() + 1)
        .sum();
    let bar = progress_bar(steps as u64, "measuring");
    let comparisons = workloads
        .iter()
        .map(|&w| {
            bar.set_message(w.title().split(':').next().unwrap_or("").to_string());
            compare(w, &budget, &mut || bar.inc(1))
        })
        .collect();
    bar.finish_and_clear();
    let python = if options.python {
        Some(python::run(&budget.sizes, options.quick)?)
    } else {
        None
    };
    let report = StructuresReport {
        sizes: budget.sizes.clone(),
        repetitions: budget.reps,
        comparisons,
        python,
    };
    if let Some(path) = &options.plot {
        plot::write_svg(path, &report.comparisons)?;
    }
    Ok(report)
}

fn ns(x: f64) -> String {
    match x {
        x if x < 1_000.0 => format!("{x:.1} ns"),
        x if x < 1_000_000.0 => format!("{:.2} µs", x / 1_000.0),
        x => format!("{:.2} ms", x / 1_000_000.0),
    }
}

/// The widest a bench table may be, in columns.
const TABLE_WIDTH: u16 = 100;

/// "7.29 µs (7.19-7.31)": the median with the repetitions' range, in one unit.
fn ns_range(median: f64, min: f64, max: f64) -> String {
    let (scale, unit, digits) = match median {
        x if x < 1_000.0 => (1.0, "ns", 1),
        x if x < 1_000_000.0 => (1_000.0, "µs", 2),
        _ => (1_000_000.0, "ms", 2),
    };
    let f = |x: f64| format!("{:.*}", digits, x / scale);
    format!("{} {unit} ({}-{})", f(median), f(min), f(max))
}

fn count(x: f64) -> String {
    if x == x.round() {
        format!("{}", x as u64)
    } else {
        format!("{x:.1}")
    }
}

/// The report as tables and plain-language summaries.
pub fn render_structures(report: &StructuresReport, color: bool) -> String {
    let mut out = String::new();
    for c in &report.comparisons {
        let title = if color {
            c.title.bold().cyan().to_string()
        } else {
            c.title.to_string()
        };
        let _ = writeln!(out, "\n{title}\nseed: \"{}\"", c.claim);
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        if !color {
            t.force_no_tty();
        }
        // A projector's terminal: at most 100 columns, long names wrapped.
        t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        t.set_width(TABLE_WIDTH);
        t.set_header([
            "N",
            "structure",
            "time/op (range)",
            "hashes",
            "compares",
            "moves",
            "vs choice",
        ]);
        for (vi, v) in c.variants.iter().enumerate() {
            for (pi, p) in v.points.iter().enumerate() {
                let choice = &c.variants[0].points[pi];
                // A timing difference is called real only when the ranges of
                // the repetitions do not overlap.
                let overlap = p.ns_min <= choice.ns_max && choice.ns_min <= p.ns_max;
                let ratio = p.ns_median / choice.ns_median.max(0.001);
                let ratio = match (vi, overlap) {
                    (0, _) => "-".to_string(),
                    (_, true) => format!("{ratio:.1}x (overlap)"),
                    (_, false) if ratio >= 1.0 => format!("{ratio:.1}x slower"),
                    (_, false) => format!("{:.1}x faster", 1.0 / ratio.max(0.001)),
                };
                t.add_row(vec![
                    Cell::new(p.n).set_alignment(CellAlignment::Right),
                    Cell::new(v.name),
                    Cell::new(ns_range(p.ns_median, p.ns_min, p.ns_max)),
                    Cell::new(count(p.counts.hashes)).set_alignment(CellAlignment::Right),
                    Cell::new(count(p.counts.comparisons)).set_alignment(CellAlignment::Right),
                    Cell::new(count(p.counts.moves)).set_alignment(CellAlignment::Right),
                    Cell::new(ratio),
                ]);
            }
        }
        let _ = writeln!(out, "{t}");
        for v in &c.variants {
            let by_time = v.time_slope.map(fit::Class::from_slope);
            let note = match (by_time, v.class) {
                (Some(t), Some(c)) if t != c => format!(
                    " (time alone fits {}: memory effects as N outgrows the cache; the counted work is {})",
                    t.label(),
                    c.label()
                ),
                _ => String::new(),
            };
            let growth: Vec<String> = v
                .points
                .windows(2)
                .map(|w| format!("{:.1}x", w[1].ns_median / w[0].ns_median.max(0.001)))
                .collect();
            // No counted steps at any N has no slope to fit: say it in words.
            let counted = match v.count_slope {
                Some(s) => format!("{s:.2} (counted steps)"),
                None if v.points.iter().all(|p| p.counts.total() == 0.0) => {
                    "0 counted steps at every N".into()
                }
                None => "? (counted steps)".into(),
            };
            let _ = writeln!(
                out,
                "  {}: time grows {} per step of N; log-log slope {} (time), {counted}: {}{note}",
                v.name,
                growth.join(", "),
                v.time_slope.map_or("?".into(), |s| format!("{s:.2}")),
                v.class.map_or("?", |c| c.label())
            );
        }
        let verdict = if c.confirmed {
            format!("✔ {}", c.verdict)
        } else {
            format!("✘ {}", c.verdict)
        };
        let verdict = match (color, c.confirmed) {
            (false, _) => verdict,
            (true, true) => verdict.green().bold().to_string(),
            (true, false) => verdict.red().bold().to_string(),
        };
        let _ = writeln!(out, "{verdict}\n{}", c.summary);
    }
    out
}

/// Parses "100,1000,1e4" into sizes.
pub fn parse_sizes(raw: &str) -> Result<Vec<usize>, String> {
    let sizes: Result<Vec<usize>, String> = raw
        .split(',')
        .map(|s| {
            let s = s.trim();
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 1.0 && *v <= 1e7)
                .map(|v| v as usize)
                .ok_or_else(|| format!("{s:?} is not a size from 1 to 1e7"))
        })
        .collect();
    let mut sizes = sizes?;
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() < 2 {
        return Err("give at least two sizes, e.g. 100,1000,10000".into());
    }
    Ok(sizes)
}
