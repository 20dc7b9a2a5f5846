//! The terminal: a full-screen redraw that cannot scroll its header away,
//! clipping by display width, a quiet exit on a closed pipe, and the one
//! Ctrl-C/SIGTERM handler that `serve` and `inspect --watch` share.

use std::io::{IsTerminal, Write};

use crossterm::{cursor, execute, terminal};
use unicode_width::UnicodeWidthChar;

/// Writes a line to stdout; a closed pipe (`| head`) ends the program quietly
/// with exit 0, as a reader who stopped reading expects.
pub fn print_or_exit(text: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Puts the terminal in a full-screen mode and puts it back however we leave.
/// Used by `inspect --watch` and `serve --dashboard`.
pub struct Screen {
    active: bool,
    /// What to say when a frame is taller than the window.
    hint: &'static str,
}

impl Screen {
    /// `hint` completes "... N more lines: enlarge the window, or ..." with
    /// what this command offers to narrow the view.
    pub fn enter(hint: &'static str) -> Screen {
        let active = std::io::stdout().is_terminal();
        if active {
            let _ = execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide
            );
        }
        Screen { active, hint }
    }

    /// Redraws in place: home, each line cleared to its end, then the rest of
    /// the screen cleared. Nothing is erased first, so nothing flickers.
    pub fn draw(&self, frame: &str) {
        if !self.active {
            // Piped: frames one after another, for logs and tests.
            print_or_exit(&format!("{frame}\n"));
            return;
        }
        // A frame taller than the window would scroll its top (the header) away:
        // cut it to fit and say how much is hidden.
        let (width, height) = terminal::size().map_or((usize::MAX, usize::MAX), |(w, h)| {
            (w.max(10) as usize, h.max(2) as usize)
        });
        let lines: Vec<&str> = frame.lines().collect();
        let shown = if lines.len() > height {
            height - 1
        } else {
            lines.len()
        };
        let mut buf = String::with_capacity(frame.len() + 1024);
        buf.push_str("\x1b[H");
        for line in &lines[..shown] {
            // Clipped, never wrapped: a wrapped line would push the header off the top.
            buf.push_str(&clip(line, width));
            buf.push_str("\x1b[K\r\n");
        }
        if shown < lines.len() {
            let more = format!(
                "... {} more lines: enlarge the window{}",
                lines.len() - shown,
                self.hint
            );
            buf.push_str(&clip(&more, width));
            buf.push_str("\x1b[K");
        }
        buf.push_str("\x1b[J");
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.active {
            let _ = execute!(
                std::io::stdout(),
                cursor::Show,
                terminal::LeaveAlternateScreen
            );
        }
    }
}

/// The first `width` columns of `line`, measured as the terminal draws them
/// (a CJK character or an emoji takes two, a combining mark none); colour
/// codes are kept (they take no room) and reset if the line is cut.
/// The columns `line` takes on a terminal: display width, escape sequences
/// (colours) taking none.
pub fn width(line: &str) -> usize {
    let mut used = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        used += c.width().unwrap_or(0);
    }
    used
}

/// `text` broken into lines of at most `width` columns at spaces (a word
/// longer than the width gets a line of its own).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && self::width(&line) + 1 + self::width(word) > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// Prints `text` laid out by [`wrap_lines`].
pub fn print_wrapped(text: &str, width: Option<usize>) {
    print_or_exit(&wrap_lines(text, width));
}

/// `text` with each line wrapped at `width` at spaces (unchanged without a
/// width); a wrapped line's continuation is indented two more than its start.
pub fn wrap_lines(text: &str, width: Option<usize>) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len() + 2;
        match width {
            Some(w) if self::width(line) > w => {
                let parts = wrap(
                    line.trim_start_matches(' '),
                    w.saturating_sub(indent).max(20),
                );
                for (i, part) in parts.iter().enumerate() {
                    let pad = if i == 0 { indent - 2 } else { indent };
                    out.push(format!("{}{}", " ".repeat(pad), part.trim()));
                }
            }
            _ => out.push(line.to_string()),
        }
    }
    out.join("\n")
}

/// The width to lay text out in: the terminal's when stdout is one, else
/// `$COLUMNS`, else None (no wrapping: a pipe or a file).
pub fn output_width() -> Option<usize> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        if let Ok((w, _)) = terminal::size() {
            return Some(w as usize);
        }
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok())
}

/// The height of the terminal when stdout is one, else `$LINES`, else None.
pub fn output_height() -> Option<usize> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        if let Ok((_, h)) = terminal::size() {
            return Some(h as usize);
        }
    }
    std::env::var("LINES").ok().and_then(|c| c.parse().ok())
}

/// Two blocks of lines side by side: `left` padded to `left_width` columns,
/// then a gap, then `right`; the longer block sets the height.
pub fn side_by_side(left: &str, right: &str, left_width: usize, gap: usize) -> String {
    let (l, r): (Vec<&str>, Vec<&str>) = (left.lines().collect(), right.lines().collect());
    let mut out = String::new();
    for i in 0..l.len().max(r.len()) {
        let a = clip(l.get(i).copied().unwrap_or_default(), left_width);
        let b = r.get(i).copied().unwrap_or_default();
        let pad = left_width.saturating_sub(width(&a)) + gap;
        out.push_str(&a);
        if !b.is_empty() {
            out.push_str(&" ".repeat(pad));
            out.push_str(b);
        }
        out.push('\n');
    }
    out
}

pub fn clip(line: &str, width: usize) -> String {
    let mut out = String::with_capacity(line.len().min(width.saturating_mul(4)));
    let mut used = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An escape sequence: copy through its final letter.
            out.push(c);
            for e in chars.by_ref() {
                out.push(e);
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        let w = c.width().unwrap_or(0);
        if used + w > width {
            // End any colour the cut line started (plain text needs nothing).
            if out.contains('\x1b') {
                out.push_str("\x1b[0m");
            }
            return out;
        }
        out.push(c);
        used += w;
    }
    out
}

/// Resolves on Ctrl-C or SIGTERM. Both are registered when this is called, so
/// a signal that arrives while a banner prints, or before the first frame of
/// a full-screen view, still ends the program cleanly (and restores the terminal).
pub fn interrupted() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_pads_by_display_width_not_bytes_or_escapes() {
        let left = "\x1b[1mab\x1b[0m\né";
        let joined = side_by_side(left, "x\ny\nz", 4, 1);
        let lines: Vec<&str> = joined.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(width(lines[0]), 6);
        assert_eq!(lines[1], "é    y");
        assert_eq!(lines[2], "     z");
    }

    #[test]
    fn wrapped_lines_hang_under_their_start_and_short_ones_are_kept() {
        let text = "  ws://127.0.0.1:8000/ws/YOUR_NAME  (this machine only)\nshort";
        assert_eq!(
            wrap_lines(text, Some(40)),
            "  ws://127.0.0.1:8000/ws/YOUR_NAME\n    (this machine only)\nshort"
        );
        assert_eq!(wrap_lines(text, None), text);
    }

    #[test]
    fn wrapping_breaks_at_spaces_within_the_width() {
        let lines = wrap("a deque pops its front in O(1) so the flush is FIFO", 16);
        assert!(lines.iter().all(|l| width(l) <= 16), "{lines:?}");
        assert_eq!(
            lines.join(" "),
            "a deque pops its front in O(1) so the flush is FIFO"
        );
        assert_eq!(wrap("unbreakable_word", 4), ["unbreakable_word"]);
    }

    #[test]
    fn clipping_counts_columns_not_bytes_or_escapes() {
        // Plain text is cut plainly; a coloured line gets its colour ended.
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("\x1b[32mgreen\x1b[0m", 3), "\x1b[32mgre\x1b[0m");
        assert_eq!(clip("│ é ┆", 10), "│ é ┆");
        // Wide characters take two columns: a third would not fit in five.
        assert_eq!(clip("日本語", 5), "日本");
        assert_eq!(clip("e\u{301}x", 2), "e\u{301}x");
    }
}
