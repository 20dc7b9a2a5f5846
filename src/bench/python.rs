//! `vivachat bench --python`: the seed's claims measured in the seed's own
//! language. The seed is a FastAPI design, so a student defends Python code:
//! `deque.popleft()` against `list.pop(0)`, `x in set` against `x in dict` and
//! `x in list`, `dict[user]` against a scan, `set.add` against an
//! append-if-absent. The script (`seed.py`) is compiled into the binary and
//! run with the machine's `python3`, on the sizes the Rust rows use.

use std::fmt::Write as _;
use std::process::Command;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use serde::{Deserialize, Serialize};

use super::fit::{log_log_slope, Class};
use super::structures::ComparisonResult;

const SCRIPT: &str = include_str!("seed.py");

/// One CPython measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PyPoint {
    pub workload: String,
    pub variant: String,
    pub n: usize,
    pub ns_median: f64,
}

/// What `seed.py` printed, and which Python ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonReport {
    pub python: String,
    pub results: Vec<PyPoint>,
}

/// Runs the script on `sizes` with `python3`; a clear error when there is none.
pub fn run(sizes: &[usize], quick: bool) -> anyhow::Result<PythonReport> {
    let (ops, reps) = if quick { ("2000", "3") } else { ("5000", "5") };
    let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(sizes.join(","))
        .args([ops, reps])
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "--python needs python3 on the PATH ({e}); install it (apt-get install python3) \
                 to measure the seed's claims in CPython"
            )
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "the Python benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The Rust structure each CPython one stands for, by position: the seed's
/// choice first, the naive one second (and, for presence, the map's keys).
fn rust_name(c: &ComparisonResult, position: usize) -> &str {
    c.variants.get(position).map_or("-", |v| v.name)
}

/// One table per workload: CPython's rows beside the Rust ones at the same N.
pub fn render(report: &PythonReport, rust: &[ComparisonResult], color: bool) -> String {
    let mut out = format!(
        "\nThe seed's claims in CPython {} (time only: CPython has no operation counters here)\n",
        report.python
    );
    for c in rust {
        let workload = c.workload.key();
        let rows: Vec<&PyPoint> = report
            .results
            .iter()
            .filter(|p| p.workload == workload)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut variants: Vec<&str> = Vec::new();
        for p in &rows {
            if !variants.contains(&p.variant.as_str()) {
                variants.push(&p.variant);
            }
        }
        let _ = writeln!(out, "\n{} (Python)", c.title);
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        if !color {
            t.force_no_tty();
        }
        t.set_header([
            "N",
            "CPython",
            "time per op",
            "vs choice",
            "Rust",
            "Rust time",
        ]);
        for (position, variant) in variants.iter().enumerate() {
            for p in rows.iter().filter(|p| p.variant == *variant) {
                let choice = rows
                    .iter()
                    .find(|q| q.variant == variants[0] && q.n == p.n)
                    .map_or(p.ns_median, |q| q.ns_median);
                let rust_time = c
                    .variants
                    .get(position)
                    .and_then(|v| v.points.iter().find(|r| r.n == p.n))
                    .map_or("-".to_string(), |r| super::ns(r.ns_median));
                t.add_row([
                    Cell::new(p.n).set_alignment(CellAlignment::Right),
                    Cell::new(&p.variant),
                    Cell::new(super::ns(p.ns_median)),
                    Cell::new(if position == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}x slower", p.ns_median / choice.max(0.001))
                    }),
                    Cell::new(rust_name(c, position)),
                    Cell::new(rust_time),
                ]);
            }
        }
        let _ = writeln!(out, "{t}");
        for variant in &variants {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|p| p.variant == *variant)
                .map(|p| (p.n as f64, p.ns_median))
                .collect();
            if let Some(slope) = log_log_slope(&points) {
                let _ = writeln!(
                    out,
                    "  {variant}: log-log slope {slope:.2} (time): {}",
                    Class::from_slope(slope).label()
                );
            }
        }
    }
    out += "\n(Time alone: CPython's fixed cost per operation, tens of nanoseconds in the \
             interpreter, hides growth at small N, so a slope read from time is lower than \
             the algorithm's; list.pop(0) is one memmove of N pointers, O(n) but fast per element.)\n";
    out
}
