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

/// Text from the network, made inert for a terminal: control characters (C0,
/// DEL, C1, which start escape sequences that retitle a window, clear the
/// screen or forge lines) and the invisible direction and format marks that
/// reorder what is shown (U+202E and friends) are written as visible escapes:
/// `\x1b`, `\n`, `\u{202e}`. Everything else, emoji and accents included, is
/// unchanged. No allocation when there is nothing to escape.
pub fn inert(text: &str) -> std::borrow::Cow<'_, str> {
    fn dangerous(c: char) -> bool {
        c.is_control()
            || matches!(c,
                '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
    }
    if !text.chars().any(dangerous) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && dangerous(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if dangerous(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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

    #[test]
    fn network_text_is_made_inert_for_a_terminal() {
        let attack = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mFAKE\u{202e}cod.exe\u{9b}31m\nx";
        assert_eq!(
            inert(attack),
            "\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31mFAKE\\u{202e}cod.exe\\x9b31m\\nx"
        );
        assert!(!inert(attack).chars().any(|c| c.is_control()));
        assert!(matches!(
            inert("héllo 👋 #g1"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(inert("a\u{2066}b\u{feff}"), "a\\u{2066}b\\u{feff}");
    }
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
