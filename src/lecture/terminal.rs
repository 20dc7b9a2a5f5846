//! `vivachat replay FILE --terminal`: the same steps in a terminal, for a
//! viva without a browser. Each screen is the step's narration over
//! `inspect`'s tables (compact, so all five fit 120x40), with what the step
//! changed marked. Enter, Space or → moves forward; b or ← back; Home and
//! End jump; q quits. Piped (no terminal), it reads one command per line.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use crossterm::event::{self, Event, KeyCode, KeyEventKind};
use crossterm::terminal;

use super::page::inspection;
use super::record::Recording;
use super::replay::Cursor;
use crate::inspect::render::{render_parts, RenderOptions, View};
use crate::inspection::Inspection;
use crate::terminal::{wrap, Screen};

/// What a key press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Forward,
    Back,
    First,
    Last,
    Quit,
    Stay,
}

/// One command line of the piped mode: empty is Enter.
pub fn parse_move(line: &str) -> Move {
    match line.trim() {
        "" | "n" | " " => Move::Forward,
        "b" | "p" => Move::Back,
        "home" | "0" => Move::First,
        "end" => Move::Last,
        "q" | "quit" => Move::Quit,
        _ => Move::Stay,
    }
}

/// The narration of the cursor's step, wrapped at `width`.
pub fn narration(cursor: &Cursor, source: &str, width: usize) -> String {
    let mut out = format!(
        "Step {} of {} · {source} · Enter/→ next, b/← back, Home/End, q quits\n",
        cursor.step(),
        cursor.steps()
    );
    match cursor.narration() {
        None => {
            out += &format!(
            "Before the first input: the structures as the recording starts. {} step(s) follow.\n",
            cursor.steps()
        )
        }
        Some(n) => {
            for line in wrap(&format!("This step: {}", n.input), width) {
                out += &format!("{line}\n");
            }
            for line in wrap(&n.event, width) {
                out += &format!("  {line}\n");
            }
            for op in &n.operations {
                for (i, line) in wrap(op, width.saturating_sub(4)).iter().enumerate() {
                    out += &format!("{} {line}\n", if i == 0 { "  ·" } else { "   " });
                }
            }
        }
    }
    out
}

/// The whole screen of the cursor's step: narration, then the tables, with
/// what changed since the step before marked.
pub fn screen(cursor: &Cursor, source: &str, view: &View, color: bool, width: usize) -> String {
    let previous = cursor.snapshot_before().map(|snapshot| Inspection {
        snapshot,
        server: None,
    });
    let doc = inspection(cursor, source);
    let options = RenderOptions {
        color,
        rows: 8,
        view: view.clone(),
        source: source.to_string(),
        compact: true,
        width: Some(width),
    };
    let (_, body) = render_parts(&doc, previous.as_ref(), &options);
    format!(
        "{}\n{}",
        narration(cursor, source, width),
        body.trim_start_matches('\n')
    )
}

fn apply(cursor: &mut Cursor, step: Move) -> bool {
    let k = cursor.step();
    match step {
        Move::Forward => {
            cursor.forward();
        }
        Move::Back => cursor.seek(k.saturating_sub(1)),
        Move::First => cursor.seek(0),
        Move::Last => cursor.seek(usize::MAX),
        Move::Quit => return false,
        Move::Stay => {}
    }
    true
}

fn key(code: KeyCode) -> Move {
    match code {
        KeyCode::Enter | KeyCode::Right | KeyCode::Char(' ') | KeyCode::Char('n') => Move::Forward,
        KeyCode::Left | KeyCode::Char('b') | KeyCode::Backspace => Move::Back,
        KeyCode::Home => Move::First,
        KeyCode::End => Move::Last,
        KeyCode::Char('q') | KeyCode::Esc => Move::Quit,
        _ => Move::Stay,
    }
}

/// Runs the stepping until q (or the end of piped input).
pub fn run(recording: Arc<Recording>, source: &str, view: View, color: bool) -> anyhow::Result<()> {
    let mut cursor = Cursor::new(recording);
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let width = || {
        crate::terminal::output_width()
            .unwrap_or(120)
            .clamp(60, 400)
    };
    if !interactive {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            crate::terminal::print_or_exit(&screen(&cursor, source, &view, color, width()));
            let Some(Ok(line)) = lines.next() else {
                return Ok(());
            };
            if !apply(&mut cursor, parse_move(&line)) {
                return Ok(());
            }
        }
    }
    let screen_mode = Screen::enter(", or show one structure with --only STRUCTURE");
    terminal::enable_raw_mode()?;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let frame = screen(&cursor, source, &view, color, width());
            // Raw mode does not turn \n into \r\n: the screen draws it line by line.
            screen_mode.draw(&frame);
            let step = match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    if k.code == KeyCode::Char('c')
                        && k.modifiers.contains(event::KeyModifiers::CONTROL)
                    {
                        Move::Quit
                    } else {
                        key(k.code)
                    }
                }
                _ => Move::Stay,
            };
            if !apply(&mut cursor, step) {
                return Ok(());
            }
        }
    })();
    let _ = terminal::disable_raw_mode();
    drop(screen_mode);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piped_commands_are_enter_b_and_q() {
        assert_eq!(parse_move(""), Move::Forward);
        assert_eq!(parse_move("b"), Move::Back);
        assert_eq!(parse_move("q"), Move::Quit);
        assert_eq!(parse_move("end"), Move::Last);
        assert_eq!(parse_move("what"), Move::Stay);
    }
}
