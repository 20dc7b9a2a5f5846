//! Formatting shared by every view: clock times, durations, and colour that
//! can be switched off. Pure functions, so the event log, `inspect`, the
//! client and `bench` say a time or a duration the same way.

use std::time::{SystemTime, UNIX_EPOCH};

use colored::ColoredString;

/// Unix time in milliseconds: the `ts` of accepted messages.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A Unix time in milliseconds as a UTC time of day: `14:03:07 UTC`.
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A length of time in milliseconds, as coarse as a person reads it: `42s`, `3m 05s`, `2h 10m`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

/// A mean time in nanoseconds with a unit that keeps it short; `-` when unmeasured.
pub fn nanos(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 1_000.0 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1_000_000.0 => format!("{:.1} µs", ns / 1_000.0),
        Some(ns) => format!("{:.1} ms", ns / 1_000_000.0),
    }
}

/// `text` in a colour (or style) when `color` is on, unchanged otherwise.
pub fn paint(text: impl AsRef<str>, color: bool, style: fn(&str) -> ColoredString) -> String {
    if color {
        style(text.as_ref()).to_string()
    } else {
        text.as_ref().to_string()
    }
}

/// "a, b, c ... and N more".
pub fn name_list<T: std::fmt::Display>(names: &[T], max: usize) -> String {
    use std::fmt::Write as _;
    let shown: Vec<String> = names.iter().take(max).map(ToString::to_string).collect();
    let mut s = shown.join(", ");
    if names.len() > max {
        let _ = write!(s, " ... and {} more", names.len() - max);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use colored::Colorize;

    #[test]
    fn times_and_durations_read_as_a_person_says_them() {
        assert_eq!(clock(3_723_000), "01:02:03 UTC");
        assert_eq!(clock(86_400_000 + 5_000), "00:00:05 UTC");
        assert_eq!(duration(42_999), "42s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(7_800_000), "2h 10m");
        assert_eq!(nanos(None), "-");
        assert_eq!(nanos(Some(12.4)), "12 ns");
        assert_eq!(nanos(Some(4_100.0)), "4.1 µs");
        assert_eq!(nanos(Some(2_500_000.0)), "2.5 ms");
        assert_eq!(name_list(&["a", "b", "c"], 2), "a, b ... and 1 more");
    }

    #[test]
    fn paint_adds_only_escape_codes() {
        colored::control::set_override(true);
        assert_eq!(paint("x", false, |t| t.red()), "x");
        let red = paint("x", true, |t| t.red());
        assert!(red.starts_with("\x1b[") && red.contains('x'));
    }
}
