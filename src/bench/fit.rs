//! Fitting a complexity class to measurements: the slope of log(cost) against log(N).
//!
//! If cost = c·N^k, then log(cost) = log(c) + k·log(N): a straight line whose
//! slope k is the exponent. O(1) has slope 0, O(n) slope 1, O(n²) slope 2.

use serde::Serialize;

/// Least-squares slope of log(y) on log(x). None with fewer than two usable points.
pub fn log_log_slope(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mean_x = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = logs.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// The class that counted steps per operation follow, from their log-log
/// slope; where that slope reads as linear, n and n log n are told apart by
/// which of cost/n and cost/(n ln n) stays steadier across the sizes (over
/// 100 to 100,000, n log n fits a slope of 1.0 to 1.2, inside the linear
/// band). Counts are exact, so the steadier ratio is clear when the model is
/// right; where neither is, the class says "O(n) or O(n log n)".
/// The rule for work nobody counted: no counted step at any N is O(1), the
/// same answer on every run (a `VecDeque` pop moves no element and hashes
/// and compares nothing). None with too few points.
pub fn class_of_counts(points: &[(f64, f64)]) -> Option<Class> {
    if points.len() >= 2 && points.iter().all(|&(_, y)| y == 0.0) {
        return Some(Class::Constant);
    }
    let class = Class::from_slope(log_log_slope(points)?);
    if class != Class::Linear {
        return Some(class);
    }
    let spread = |model: fn(f64) -> f64| {
        let ratios: Vec<f64> = points.iter().map(|&(n, y)| y / model(n)).collect();
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
        hi / lo
    };
    let (linear, linearithmic) = (spread(|n| n), spread(|n| n * n.max(2.0).ln()));
    // The right model's ratio varies by a few percent (cost N - 1, not N);
    // the wrong one's by the growth of ln N over the sizes, 2.5x from 100 to 100,000.
    Some(if linear < 1.25 && linearithmic > 1.5 {
        Class::Linear
    } else if linearithmic < 1.25 && linear > 1.5 {
        Class::Linearithmic
    } else {
        Class::LinearOrLinearithmic
    })
}

/// The class a slope points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Class {
    #[serde(rename = "O(1)")]
    Constant,
    #[serde(rename = "between O(1) and O(n)")]
    Sublinear,
    #[serde(rename = "O(n)")]
    Linear,
    #[serde(rename = "O(n log n)")]
    Linearithmic,
    /// The points cannot tell the two apart (say so, rather than guess).
    #[serde(rename = "O(n) or O(n log n)")]
    LinearOrLinearithmic,
    #[serde(rename = "worse than O(n)")]
    Superlinear,
}

impl Class {
    /// Slopes below 0.25 are flat (cache effects alone can add 0.1-0.2 to a
    /// hash look-up as the table outgrows the cache); 0.75 to 1.3 is linear.
    pub fn from_slope(slope: f64) -> Class {
        match slope {
            s if s < 0.25 => Class::Constant,
            s if s < 0.75 => Class::Sublinear,
            s if s <= 1.3 => Class::Linear,
            _ => Class::Superlinear,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Constant => "O(1)",
            Class::Sublinear => "between O(1) and O(n)",
            Class::Linear => "O(n)",
            Class::Linearithmic => "O(n log n)",
            Class::LinearOrLinearithmic => "O(n) or O(n log n)",
            Class::Superlinear => "worse than O(n)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        [100.0, 1_000.0, 10_000.0, 100_000.0]
            .iter()
            .map(|&n| (n, f(n)))
            .collect()
    }

    #[test]
    fn recovers_the_exponent_of_synthetic_data() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(log_log_slope(&points(|_| 42.0)).unwrap(), 0.0));
        assert!(close(log_log_slope(&points(|n| 3.0 * n)).unwrap(), 1.0));
        assert!(close(log_log_slope(&points(|n| n * n / 7.0)).unwrap(), 2.0));
        assert!(close(log_log_slope(&points(|n| n.sqrt())).unwrap(), 0.5));
        // n log n sits a little above 1 over this range.
        let s = log_log_slope(&points(|n| n * n.ln())).unwrap();
        assert!(s > 1.0 && s < 1.2, "{s}");
    }

    #[test]
    fn classes_from_slopes_including_noisy_ones() {
        assert_eq!(Class::from_slope(0.0), Class::Constant);
        assert_eq!(Class::from_slope(0.18), Class::Constant);
        assert_eq!(Class::from_slope(0.5), Class::Sublinear);
        assert_eq!(Class::from_slope(0.93), Class::Linear);
        assert_eq!(Class::from_slope(1.1), Class::Linear);
        assert_eq!(Class::from_slope(2.0), Class::Superlinear);
        // Noise of ±20% per point does not change a linear fit's class.
        let noisy = points(|n| n * if (n as u64 / 100) % 2 == 0 { 1.2 } else { 0.8 });
        assert_eq!(
            Class::from_slope(log_log_slope(&noisy).unwrap()),
            Class::Linear
        );
    }

    #[test]
    fn counted_steps_tell_n_from_n_log_n_or_say_they_cannot() {
        assert_eq!(class_of_counts(&points(|n| n - 1.0)), Some(Class::Linear));
        assert_eq!(
            class_of_counts(&points(|n| 2.0 * n * n.ln())),
            Some(Class::Linearithmic)
        );
        assert_eq!(class_of_counts(&points(|_| 1.0)), Some(Class::Constant));
        assert_eq!(
            class_of_counts(&points(|n| n * n)),
            Some(Class::Superlinear)
        );
        // Two sizes only a step apart cannot tell them apart: it says so.
        let close = [(1_000.0, 1_000.0 * 6.9), (2_000.0, 2_000.0 * 7.6)];
        assert_eq!(class_of_counts(&close), Some(Class::LinearOrLinearithmic));
    }

    #[test]
    fn no_counted_step_at_any_size_is_constant_by_rule() {
        assert_eq!(class_of_counts(&points(|_| 0.0)), Some(Class::Constant));
        assert_eq!(class_of_counts(&[(10.0, 0.0)]), None);
    }

    #[test]
    fn too_few_points_give_no_slope() {
        assert_eq!(log_log_slope(&[]), None);
        assert_eq!(log_log_slope(&[(10.0, 1.0)]), None);
        assert_eq!(log_log_slope(&[(10.0, 1.0), (10.0, 2.0)]), None);
        assert_eq!(
            log_log_slope(&[(10.0, 0.0), (100.0, 0.0)]),
            None,
            "zero costs are skipped"
        );
    }
}
