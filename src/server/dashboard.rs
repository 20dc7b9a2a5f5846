//! `serve --dashboard`: the inspect tables, redrawn in the server's own
//! terminal whenever something changes, with the latest event-log lines
//! between the header and the tables.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::Dashboard;
use super::hub::Hub;
use crate::inspect::render::{render, RenderOptions};
use crate::inspection::Inspection;
use crate::terminal::Screen;

/// How often to look for a change; a frame is drawn only when there is one
/// (or once a second, so ages stay current).
const TICK: Duration = Duration::from_millis(200);
const REFRESH: Duration = Duration::from_secs(1);
/// Event-log lines shown above the tables.
const LOG_LINES: usize = 4;
/// Rows per table: with the compact layout, all five structures and the
/// operations fit 120x40 (tested in `inspect::render`).
const ROWS: usize = 4;

pub(crate) async fn run(hub: Arc<Hub>, dashboard: Dashboard, stop: CancellationToken) {
    let screen = Screen::enter(", or make the font smaller");
    let ring = dashboard.ring;
    let mut options = RenderOptions {
        color: dashboard.color,
        rows: ROWS,
        user: None,
        group: None,
        source: dashboard.banner,
        compact: true,
        width: None,
    };
    let mut previous: Option<Inspection> = None;
    let mut last_seen = (u64::MAX, u64::MAX);
    let mut last_draw = tokio::time::Instant::now();
    loop {
        let ops = hub.core().op_table().total();
        let (lines, written) = ring.lines();
        if (ops, written) != last_seen || last_draw.elapsed() >= REFRESH {
            let snapshot = hub.inspection();
            options.width = crate::terminal::output_width();
            // The event log goes under the header, so a short screen cuts
            // the long tables at the bottom rather than the latest events.
            let tables = render(&snapshot, previous.as_ref(), &options);
            let mut parts = tables.splitn(3, '\n');
            let mut frame = String::new();
            for _ in 0..2 {
                frame += parts.next().unwrap_or_default();
                frame.push('\n');
            }
            frame += "event log (latest last):\n";
            for line in lines.iter().rev().take(LOG_LINES).rev() {
                frame += line;
                frame.push('\n');
            }
            frame += parts.next().unwrap_or_default();
            screen.draw(&frame);
            last_seen = (ops, written);
            last_draw = tokio::time::Instant::now();
            previous = Some(snapshot);
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => break,
        }
    }
    drop(screen);
}
