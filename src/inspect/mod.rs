//! `vivachat inspect`: live tables of every structure and its operation counts.
//!
//! - `fetch.rs`: one HTTP GET of `/inspect`, decoded into the same typed
//!   [`Snapshot`] the server serialises.
//! - `render.rs`: the tables, as a pure function of a snapshot and the previous one.
//! - here: the one-shot, `--json` and `--watch` modes, and the terminal handling.

pub mod fetch;
pub mod render;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crossterm::{cursor, execute, terminal};

use crate::core::Snapshot;
use fetch::{Endpoint, FetchError};
use render::RenderOptions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_interval("250").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("10ms").is_err(), "too short");
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("-1s").is_err());
    }

    #[test]
    fn clipping_counts_only_visible_characters() {
        assert_eq!(clip("abcdef", 3), "abc\x1b[0m");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("\x1b[32mgreen\x1b[0m", 3), "\x1b[32mgre\x1b[0m");
        assert_eq!(clip("│ é ┆", 10), "│ é ┆");
    }
}

/// Parses "500ms", "2s", "1.5s" or a bare number of milliseconds.
pub fn parse_interval(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1.0)
    } else {
        (raw, 1e-3)
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| v * scale)
        .ok_or_else(|| format!("{raw:?} is not a duration like 500ms or 2s"))?;
    if secs < 0.05 {
        return Err(format!("{raw} is too short: at least 50ms"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What `inspect` was asked to do.
#[derive(Debug, Clone)]
pub struct InspectRequest {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    pub watch: Option<Duration>,
    pub json: bool,
    pub render: RenderOptions,
}

/// Runs `inspect`; an error is one line for the user.
pub fn run(request: InspectRequest) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match request.watch {
            None => once(&request).await,
            Some(interval) => watch(&request, interval).await,
        }
    })
}

async fn once(request: &InspectRequest) -> anyhow::Result<()> {
    let snapshot = fetch::fetch(&request.endpoint, request.token.as_deref()).await?;
    let text = if request.json {
        serde_json::to_string_pretty(&snapshot)?
    } else {
        render::render(&snapshot, None, &request.render)
    };
    print_or_exit(&text);
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) ends the program quietly.
fn print_or_exit(text: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Puts the terminal in a full-screen mode and puts it back however we leave.
/// Used by `inspect --watch` and `serve --dashboard`.
pub struct Screen {
    active: bool,
}

impl Screen {
    pub fn enter() -> Screen {
        let active = std::io::stdout().is_terminal();
        if active {
            let _ = execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide
            );
        }
        Screen { active }
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
            buf.push_str(&format!(
                "... {} more lines: enlarge the window, or filter with --user / --group\x1b[K",
                lines.len() - shown
            ));
        }
        buf.push_str("\x1b[J");
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
    }
}

/// The first `width` visible characters of `line`; colour codes are kept
/// (they take no room) and reset if the line is cut.
pub fn clip(line: &str, width: usize) -> String {
    let mut out = String::with_capacity(line.len().min(width * 4));
    let mut visible = 0;
    let mut chars = line.chars().peekable();
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
        if visible == width {
            out.push_str("\x1b[0m");
            return out;
        }
        out.push(c);
        visible += 1;
    }
    out
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

/// Resolves on Ctrl-C or SIGTERM; registered before the first frame, so the
/// terminal is always restored.
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = ()>> {
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

async fn watch(request: &InspectRequest, interval: Duration) -> anyhow::Result<()> {
    let stop = interrupted()?;
    tokio::pin!(stop);
    let screen = Screen::enter();
    let mut previous: Option<Snapshot> = None;
    let mut down_since: Option<String> = None;
    loop {
        let fetched = tokio::select! {
            fetched = fetch::fetch(&request.endpoint, request.token.as_deref()) => fetched,
            () = &mut stop => break,
        };
        match fetched {
            Ok(snapshot) => {
                down_since = None;
                let frame = if request.json {
                    serde_json::to_string(&snapshot)?
                } else {
                    render::render(&snapshot, previous.as_ref(), &request.render)
                };
                screen.draw(&frame);
                previous = Some(snapshot);
            }
            // Access refused or a bad URL will not fix itself: say so and stop.
            Err(e @ (FetchError::Forbidden { .. } | FetchError::BadUrl(_))) => {
                drop(screen);
                return Err(e.into());
            }
            Err(e) => {
                let since = down_since
                    .get_or_insert_with(|| render::clock(crate::server::now_ms()))
                    .clone();
                let mut frame = format!(
                    "server unreachable since {since}; retrying every {} ms (Ctrl-C to stop)\n{e}\n",
                    interval.as_millis()
                );
                if let Some(last) = &previous {
                    frame += "\nlast snapshot:\n";
                    frame += &render::render(last, None, &request.render);
                }
                screen.draw(&frame);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut stop => break,
        }
    }
    drop(screen);
    Ok(())
}
