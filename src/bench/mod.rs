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
    /// What growing a table from empty costs, at each size (counted).
    pub growth: Vec<structures::Growth>,
    /// Bytes per entry and what a table keeps after a shrink, at the largest
    /// N (None where the allocator cannot be asked).
    pub footprint: Option<Vec<structures::Footprint>>,
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
        growth: budget
            .sizes
            .iter()
            .map(|&n| structures::growth(n))
            .collect(),
        footprint: budget
            .sizes
            .iter()
            .max()
            .and_then(|&n| structures::footprint(n)),
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
/// `233 ns (227-234)`: the median and the range of the repetitions, with
/// three significant digits at most, so the column stays narrow.
fn ns_range(median: f64, min: f64, max: f64) -> String {
    let (scale, unit) = match median {
        x if x < 1_000.0 => (1.0, "ns"),
        x if x < 1_000_000.0 => (1_000.0, "µs"),
        _ => (1_000_000.0, "ms"),
    };
    let digits = match median / scale {
        x if x < 10.0 => 2,
        x if x < 100.0 => 1,
        _ => 0,
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

/// One claim's measurements as a table. A counted-step column that is 0 on
/// every row is left out and said under the table, so the rest fits a
/// projector's 100 columns with each cell on one line.
fn claim_table(c: &ComparisonResult, color: bool) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    if !color {
        t.force_no_tty();
    }
    let points = || c.variants.iter().flat_map(|v| v.points.iter());
    type Counted = fn(&structures::Point) -> f64;
    let counted: [(&str, Counted); 3] = [
        ("hashes", |p| p.counts.hashes),
        ("compares", |p| p.counts.comparisons),
        ("moves", |p| p.counts.moves),
    ];
    let (shown, zero): (Vec<_>, Vec<_>) = counted
        .iter()
        .partition(|(_, get)| points().any(|p| get(p) != 0.0));
    let mut header = vec!["N", "structure", "time/op (range)"];
    header.extend(shown.iter().map(|(name, _)| *name));
    header.push("vs choice");
    t.set_header(header);
    // A name or a time is never split over two lines; other cells may wrap.
    for column in [1, 2] {
        if let Some(col) = t.column_mut(column) {
            col.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
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
            let mut row = vec![
                Cell::new(p.n).set_alignment(CellAlignment::Right),
                Cell::new(v.name),
                Cell::new(ns_range(p.ns_median, p.ns_min, p.ns_max)),
            ];
            for (_, get) in &shown {
                row.push(Cell::new(count(get(p))).set_alignment(CellAlignment::Right));
            }
            row.push(Cell::new(ratio));
            t.add_row(row);
        }
    }
    // Each cell on one line when the table fits 100 columns; else the cells
    // other than names and times wrap.
    let mut text = t.to_string();
    if text
        .lines()
        .any(|l| crate::terminal::width(l) > TABLE_WIDTH as usize)
    {
        t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        t.set_width(TABLE_WIDTH);
        text = t.to_string();
    }
    if !zero.is_empty() {
        let names: Vec<&str> = zero.iter().map(|(name, _)| *name).collect();
        text += &format!("\n  {}: 0 on every row", names.join(", "));
    }
    text
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
        let _ = writeln!(out, "{}", claim_table(c, color));
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
                    "0 counted steps at every N (no counted work: O(1) by rule)".into()
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
        let _ = writeln!(out, "{verdict}");
        // What the seed gets wrong is the lesson, not a failure: its own mark and colour.
        if let Some(correction) = &c.correction {
            let line = format!("✎ {correction}");
            let line = match color {
                true => line.yellow().bold().to_string(),
                false => line,
            };
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}", c.summary);
    }
    out += &render_growth(&report.growth);
    if let Some(footprint) = &report.footprint {
        out += &render_footprint(footprint);
    }
    out
}

/// Memory, measured by the allocator: what an entry costs, and that a table
/// never shrinks by itself (so iterating it is O(capacity)).
fn render_footprint(footprint: &[structures::Footprint]) -> String {
    let n = footprint.first().map_or(0, |f| f.n);
    let mut out = format!(
        "
memory at N = {n}: heap bytes per entry, measured by the allocator (names are shared)
"
    );
    for f in footprint {
        let _ = writeln!(
            out,
            "  {}:\n    {:.1} bytes per entry, room for {} before it grows\n    \
             all but 3 removed: {} bytes still held (a table never shrinks by itself)",
            f.structure, f.bytes_per_entry, f.capacity, f.bytes_after_removals
        );
        if let (Some(big), Some(fresh)) = (f.iterate_3_ns, f.iterate_3_fresh_ns) {
            let _ = writeln!(
                out,
                "    iterating those 3: {big:.0} ns, against {fresh:.0} ns for a set built with 3\n    \
                 (the walk visits the buckets up to the last entry: O(capacity), not O(len))"
            );
        }
    }
    out
}

/// Amortised O(1), shown: N inserts into an empty `HashSet`, every hash counted.
fn render_growth(growth: &[structures::Growth]) -> String {
    let mut out = String::from(
        "
growth: N new keys into an empty HashSet, no capacity reserved (counted hashes)
",
    );
    for g in growth {
        let _ = writeln!(
            out,
            "  N = {}: {:.2} hashes per insert on average (amortised O(1)), {} resizes;\n    \
             the worst single insert hashed {} keys (insert {}: the table grew and \
             rehashed every key, O(n) for that one insert, while the core is held)\n    \
             timed: the slowest insert took {:.1} µs, the median {:.0} ns",
            g.n,
            g.hashes_per_insert,
            g.resizes,
            g.worst_insert_hashes,
            g.worst_at,
            g.worst_insert_ns / 1000.0,
            g.median_insert_ns
        );
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
