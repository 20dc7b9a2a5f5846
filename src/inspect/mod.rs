//! `vivachat inspect`: live tables of every structure and its operation counts.
//!
//! - `fetch.rs`: one HTTP GET of `/inspect`, decoded into the same typed
//!   [`Inspection`] document the server serialises.
//! - `render.rs`: the tables, as a pure function of a snapshot and the previous one.
//! - here: the one-shot, `--json` and `--watch` modes, and the terminal handling.

pub mod fetch;
pub mod render;

use std::time::Duration;

use clap::Args;

use crate::inspection::Inspection;
use crate::terminal::{interrupted, print_or_exit, Screen};
use fetch::{Endpoint, FetchError};
use render::RenderOptions;

/// What the tables show; the same flags on `inspect` and `serve --dashboard`.
#[derive(Debug, Args, Clone, Default)]
pub struct ViewArgs {
    /// Show only this structure (active_connections, presence, offline_messages,
    /// group_members, blocked_users; or connections, queue, groups, blocks), at
    /// full width, with its own operations.
    #[arg(long, value_name = "STRUCTURE", value_parser = crate::inspect::render::View::parse_structure)]
    pub only: Option<crate::core::Structure>,
    /// Show only this user's rows.
    #[arg(long, value_name = "NAME", value_parser = view_name)]
    pub user: Option<crate::names::Name>,
    /// Show only this group and its members' rows.
    #[arg(long, value_name = "NAME", value_parser = view_name, conflicts_with = "user")]
    pub group: Option<crate::names::Name>,
}

impl ViewArgs {
    pub fn view(&self) -> crate::inspect::render::View {
        crate::inspect::render::View {
            only: self.only,
            user: self.user.clone(),
            group: self.group.clone(),
        }
    }

    pub fn is_set(&self) -> bool {
        self.view() != crate::inspect::render::View::default()
    }
}

/// A user or group name for `--user`/`--group` (a leading `#` is allowed).
fn view_name(raw: &str) -> Result<crate::names::Name, String> {
    crate::names::Name::parse(raw.trim_start_matches('#')).map_err(|e| e.to_string())
}

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

async fn watch(request: &InspectRequest, interval: Duration) -> anyhow::Result<()> {
    let stop = interrupted()?;
    tokio::pin!(stop);
    let screen = Screen::enter(", or filter with --user / --group");
    let mut previous: Option<Inspection> = None;
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
                    .get_or_insert_with(|| crate::output::clock(crate::output::now_ms()))
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
