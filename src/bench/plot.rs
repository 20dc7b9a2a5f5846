//! `--plot FILE.svg`: one row per comparison, two log-log charts side by
//! side: the measured time per operation (left) and the counted steps per
//! operation (right), each with dashed O(1) and O(n) reference slopes, so a
//! class can compare a line's slope with the slope it should have. Sized and
//! lettered for a projector. Pure-Rust SVG (plotters), no system libraries.

use std::path::Path;

use plotters::coord::combinators::{BindKeyPoints, LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::fit::Class;
use super::structures::{ComparisonResult, Point, VariantResult};

const COLORS: [RGBColor; 3] = [
    RGBColor(0, 128, 0),
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
];
const GUIDE: RGBColor = RGBColor(110, 110, 110);
const WIDTH: u32 = 1600;
const ROW_HEIGHT: u32 = 480;
const TITLE_HEIGHT: u32 = 70;
const NOTES_HEIGHT: u32 = 56;
const FONT: &str = "sans-serif";

/// Both axes: logarithmic, labelled at powers of ten only.
type LogAxis = WithKeyPoints<LogCoord<f64>>;

/// Counted steps are drawn from this floor: a log axis has no 0, so a
/// variant that does no counted work (a deque's pop moves nothing) lies on
/// the floor, labelled "0". A full decade below 1, so its tick is as far
/// from "1" as "1" is from "10", not squeezed under it.
const ZERO_STEPS: f64 = 0.1;

/// A hash look-up whose time grows by this factor from the smallest to the
/// largest N while its counted steps stay flat gets the cache note.
const CACHE_RISE: f64 = 1.5;

pub fn write_svg(path: &Path, results: &[ComparisonResult]) -> anyhow::Result<()> {
    let rows = results.len().max(1) as u32;
    let root = SVGBackend::new(path, (WIDTH, TITLE_HEIGHT + rows * ROW_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "vivachat bench: time (left) and counted steps (right) per operation, against N",
        (FONT, 34),
    )?;
    for (result, row) in results.iter().zip(root.split_evenly((results.len(), 1))) {
        // Under the two charts, a line or two of what the eye should notice.
        let (charts, notes_area) = row.split_vertically(ROW_HEIGHT - NOTES_HEIGHT);
        let (time, steps) = charts.split_horizontally(WIDTH / 2);
        let title = result.title.split(':').next().unwrap_or(result.title);
        panel(&time, result, &format!("{title}: time"), Measure::Time)?;
        panel(
            &steps,
            result,
            &format!("{title}: counted steps"),
            Measure::Steps,
        )?;
        for (i, note) in notes(result).iter().enumerate() {
            notes_area.draw(&Text::new(
                note.clone(),
                (110, 4 + 26 * i as i32),
                (FONT, 20).into_font().color(&GUIDE),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Measure {
    /// Median nanoseconds per operation.
    Time,
    /// Hashes + comparisons + moves per operation: the algorithm's work.
    Steps,
}

impl Measure {
    fn of(self, p: &Point) -> f64 {
        match self {
            Measure::Time => p.ns_median.max(0.01),
            Measure::Steps => p.counts.total().max(ZERO_STEPS),
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Measure::Time => "ns per operation",
            Measure::Steps => "steps per operation",
        }
    }
}

fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    result: &ComparisonResult,
    caption: &str,
    measure: Measure,
) -> anyhow::Result<()> {
    let points = result.variants.iter().flat_map(|v| v.points.iter());
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    let (mut n_lo, mut n_hi) = (f64::INFINITY, 0f64);
    for p in points {
        lo = lo.min(measure.of(p));
        hi = hi.max(measure.of(p));
        n_lo = n_lo.min(p.n as f64);
        n_hi = n_hi.max(p.n as f64);
    }
    if !(lo.is_finite() && n_lo.is_finite()) {
        return Ok(());
    }
    // Room above for an O(n) guide over the whole N range.
    let (y_lo, y_hi) = (lo * 0.5, (hi * 3.0).max(lo * 10.0));
    let x_range = n_lo / 1.3..n_hi * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 26))
        .margin(14)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(
            x_range
                .clone()
                .log_scale()
                .with_key_points(powers_of_ten(x_range.start, x_range.end)),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(y_keys(y_lo, y_hi, measure)),
        )?;
    chart
        .configure_mesh()
        .x_desc("N")
        .y_desc(measure.axis())
        .label_style((FONT, 20))
        .axis_desc_style((FONT, 20))
        .x_label_formatter(&|x| short_number(*x))
        .y_label_formatter(&|y| match measure {
            Measure::Steps if *y < 1.0 => "0".to_string(),
            _ => short_number(*y),
        })
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    guides(&mut chart, result, measure, (n_lo, n_hi), (y_lo, y_hi))?;
    for (i, v) in result.variants.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let series: Vec<(f64, f64)> = v
            .points
            .iter()
            .map(|p| (p.n as f64, measure.of(p)))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(4)))?
            .label(v.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 28, y)], color.stroke_width(4))
            });
        chart.draw_series(
            series
                .into_iter()
                .map(|p| Circle::new(p, 6, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 20))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Dashed reference slopes: O(1) through the seed's choice at the smallest
/// N, O(n) through the slowest variant there, both across the whole range.
fn guides<DB: DrawingBackend>(
    chart: &mut ChartContext<DB, Cartesian2d<LogAxis, LogAxis>>,
    result: &ComparisonResult,
    measure: Measure,
    (n_lo, n_hi): (f64, f64),
    (y_lo, y_hi): (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let start = |v: &VariantResult| v.points.first().map(|p| measure.of(p));
    let chosen = result.variants.iter().find(|v| v.chosen).and_then(start);
    let slowest = result
        .variants
        .iter()
        .filter_map(start)
        .fold(None, |m: Option<f64>, y| Some(m.map_or(y, |m| m.max(y))));
    let clamp = |y: f64| y.clamp(y_lo, y_hi);
    let style = ShapeStyle::from(GUIDE.mix(0.9)).stroke_width(2);
    let mut lines = Vec::new();
    if let Some(y) = chosen {
        lines.push(("O(1)", vec![(n_lo, y), (n_hi, y)]));
    }
    if let Some(y) = slowest {
        // Slope 1 on log-log: y grows as N does, until it leaves the chart.
        let end = (n_hi).min(n_lo * y_hi / y);
        lines.push(("O(n)", vec![(n_lo, y), (end, clamp(y * end / n_lo))]));
    }
    for (label, line) in lines {
        let last = *line.last().unwrap_or(&(n_hi, y_hi));
        chart.draw_series(DashedLineSeries::new(line, 12, 8, style))?;
        chart.draw_series(std::iter::once(Text::new(
            label,
            last,
            (FONT, 20).into_font().color(&GUIDE),
        )))?;
    }
    Ok(())
}

/// What the eye should notice in a row: variants whose counted steps are
/// the same at every N (their lines lie on each other), and a hash
/// structure whose time rises though its counted work does not: the table
/// has left the CPU cache, which Big-O does not model.
fn notes(result: &ComparisonResult) -> Vec<String> {
    let mut notes = Vec::new();
    let steps =
        |v: &VariantResult| -> Vec<f64> { v.points.iter().map(|p| p.counts.total()).collect() };
    for (i, a) in result.variants.iter().enumerate() {
        for b in &result.variants[i + 1..] {
            if steps(a) == steps(b) {
                notes.push(format!(
                    "{} and {} count the same steps at every N: their lines on the right lie on each other",
                    a.name, b.name
                ));
            }
        }
    }
    let rising = result.variants.iter().find(|v| {
        v.class == Some(Class::Constant)
            && v.name.contains("Hash")
            && match (v.points.first(), v.points.last()) {
                (Some(a), Some(b)) => b.ns_median > a.ns_median * CACHE_RISE,
                _ => false,
            }
    });
    if let Some(v) = rising {
        if let (Some(a), Some(b)) = (v.points.first(), v.points.last()) {
            notes.push(format!(
                "{}: {:.1}x the time at N = {} as at N = {}, with flat counted steps: the table outgrew the CPU cache (memory, not Big-O)",
                v.name,
                b.ns_median / a.ns_median,
                short_number(b.n as f64),
                short_number(a.n as f64)
            ));
        }
    }
    notes.truncate(2);
    notes
}

/// 100, 1k, 10k, 100k, 1M: what a class reads aloud.
fn short_number(x: f64) -> String {
    if x < 1.0 {
        return format!("{}", (x * 1000.0).round() / 1000.0);
    }
    let x = x.round();
    match x {
        x if x >= 1e6 && x % 1e6 == 0.0 => format!("{}M", x / 1e6),
        x if x >= 1e3 && x % 1e3 == 0.0 => format!("{}k", x / 1e3),
        x => format!("{x}"),
    }
}

fn powers_of_ten(lo: f64, hi: f64) -> Vec<f64> {
    (-3..=9)
        .map(|e| 10f64.powi(e))
        .filter(|p| (lo..=hi).contains(p))
        .collect()
}

fn y_keys(lo: f64, hi: f64, measure: Measure) -> Vec<f64> {
    let mut keys = powers_of_ten(lo, hi);
    if measure == Measure::Steps {
        // Below 1 counted step there is only the floor (labelled "0").
        keys.retain(|k| *k >= 1.0);
        if lo <= ZERO_STEPS {
            keys.insert(0, ZERO_STEPS);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_read_as_a_class_would_say_them() {
        assert_eq!(
            powers_of_ten(70.0, 130_000.0)
                .into_iter()
                .map(short_number)
                .collect::<Vec<_>>(),
            ["100", "1k", "10k", "100k"]
        );
        assert_eq!(short_number(1_000_000.0), "1M");
        assert_eq!(short_number(0.1), "0.1");
        assert_eq!(short_number(250.0), "250");
        // The "0" floor sits one decade under "1", like every other tick.
        assert_eq!(
            y_keys(0.05, 2000.0, Measure::Steps),
            [ZERO_STEPS, 1.0, 10.0, 100.0, 1000.0]
        );
        let gaps: Vec<f64> = y_keys(0.05, 2000.0, Measure::Steps)
            .windows(2)
            .map(|w| (w[1] / w[0]).log10())
            .collect();
        assert!(gaps.iter().all(|g| (g - 1.0).abs() < 1e-9), "{gaps:?}");
    }
}
