//! `--plot FILE.svg`: a log-log chart of time per operation against N, one
//! panel per comparison. Pure-Rust SVG (plotters), no system libraries.

use std::path::Path;

use plotters::prelude::*;

use super::structures::ComparisonResult;

const COLORS: [RGBColor; 3] = [
    RGBColor(0, 128, 0),
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
];

pub fn write_svg(path: &Path, results: &[ComparisonResult]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1500, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "vivachat bench: time per operation against N (log-log)",
        ("sans-serif", 24),
    )?;
    let panels = root.split_evenly((2, 3));
    for (result, panel) in results.iter().zip(panels.iter()) {
        let points = result.variants.iter().flat_map(|v| v.points.iter());
        let (mut lo, mut hi) = (f64::INFINITY, 0f64);
        let (mut n_lo, mut n_hi) = (f64::INFINITY, 0f64);
        for p in points {
            lo = lo.min(p.ns_median.max(0.01));
            hi = hi.max(p.ns_median);
            n_lo = n_lo.min(p.n as f64);
            n_hi = n_hi.max(p.n as f64);
        }
        if !(lo.is_finite() && n_lo.is_finite()) {
            continue;
        }
        let title = result.title.split(':').next().unwrap_or(result.title);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (n_lo..n_hi * 1.2).log_scale(),
                (lo * 0.5..hi * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("N")
            .y_desc("ns per operation")
            .draw()?;
        for (i, v) in result.variants.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let series: Vec<(f64, f64)> = v
                .points
                .iter()
                .map(|p| (p.n as f64, p.ns_median.max(0.01)))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                .label(v.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                series
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
