//! `serve --dashboard`: the inspect tables, redrawn in the server's own
//! terminal whenever something changes, with the latest event-log lines
//! between the header and the tables.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::Dashboard;
use super::hub::Hub;
use crate::inspect::render::{render_parts, RenderOptions};
use crate::inspection::Inspection;
use crate::terminal::Screen;

/// How often to look for a change; a frame is drawn only when there is one
/// (or once a second, so ages stay current).
const TICK: Duration = Duration::from_millis(200);
const REFRESH: Duration = Duration::from_secs(1);
/// Event-log lines shown above the tables: the latest event whole (its
/// operations one per line), then older ones while they fit.
pub const LOG_LINES: usize = 4;
/// Rows per table: with the compact layout, all five structures and the
/// operations fit 120x40 (tested in `inspect::render`).
const ROWS: usize = 4;
/// Lines a one-structure frame (`--only`) spends on other things than rows:
/// header, event log, title, table borders, its operations and invariants.
const ONLY_OVERHEAD: usize = 26;

pub(crate) async fn run(hub: Arc<Hub>, dashboard: Dashboard, stop: CancellationToken) {
    let screen = Screen::enter(", or make the font smaller");
    let ring = dashboard.ring;
    let mut options = RenderOptions {
        color: dashboard.color,
        rows: ROWS,
        view: dashboard.view,
        source: dashboard.banner,
        compact: true,
        width: None,
    };
    let mut previous: Option<Inspection> = None;
    let mut last_seen = (u64::MAX, u64::MAX);
    let mut last_draw = tokio::time::Instant::now();
    loop {
        let ops = hub.op_table().await.total();
        let (entries, written) = ring.entries();
        if (ops, written) != last_seen || last_draw.elapsed() >= REFRESH {
            let snapshot = match hub.inspection().await {
                Some(Ok(snapshot)) => Some(snapshot),
                // Redis did not answer: the last frame stays up until it does.
                Some(Err(_)) => None,
                None => return,
            };
            if let Some(snapshot) = snapshot {
                options.width = crate::terminal::output_width();
                if options.view.only.is_some() {
                    let height = crate::terminal::output_height().unwrap_or(40);
                    options.rows = height.saturating_sub(ONLY_OVERHEAD).max(ROWS);
                }
                // The event log goes under the header, so a short screen cuts
                // the long tables at the bottom rather than the latest events.
                let (head, body) = render_parts(&snapshot, previous.as_ref(), &options);
                let mut frame = head;
                frame += "event log (latest last):\n";
                frame += &latest(&entries, LOG_LINES);
                frame += &body;
                screen.draw(&frame);
                last_seen = (ops, written);
                last_draw = tokio::time::Instant::now();
                previous = Some(snapshot);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => break,
        }
    }
    drop(screen);
}

/// The newest entries that fit in `lines` lines, oldest first; the newest is
/// always shown, cut to `lines` if it alone is longer.
fn latest(entries: &[String], lines: usize) -> String {
    let mut shown = Vec::new();
    let mut used = 0;
    for entry in entries.iter().rev() {
        let n = entry.lines().count();
        if used + n > lines && !shown.is_empty() {
            break;
        }
        shown.push(entry.as_str());
        used += n;
    }
    shown.reverse();
    let text: Vec<&str> = shown.iter().flat_map(|e| e.lines()).take(lines).collect();
    text.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::latest;

    #[test]
    fn the_newest_event_is_shown_whole_and_older_ones_while_they_fit() {
        let entries = [
            "a".to_string(),
            "b\n · b1".to_string(),
            "c\n · c1\n · c2".to_string(),
        ];
        assert_eq!(latest(&entries, 6), "a\nb\n · b1\nc\n · c1\n · c2\n");
        assert_eq!(latest(&entries, 5), "b\n · b1\nc\n · c1\n · c2\n");
        assert_eq!(latest(&entries, 4), "c\n · c1\n · c2\n");
        assert_eq!(latest(&entries, 2), "c\n · c1\n");
    }
}
