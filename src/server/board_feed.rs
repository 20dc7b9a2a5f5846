//! What routing leaves for the board's feed (`board.rs`): the latest
//! events, kept while a board watches or the server narrates, and the latest frame built from
//! them. A leaf, so the hub can hold it without importing the feed's code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::watch;

use crate::board::{DiffShown, EVENT_LINES};
use crate::core::{Event, Trace};
use crate::inspection::BoardStats;

/// What routing leaves for the board: the latest events, kept only while watched.
#[derive(Default)]
pub(crate) struct Recent {
    pub lines: VecDeque<(Duration, Event, Trace)>,
    /// The latest chat message, whose path the board lights.
    pub last_chat: Option<(Event, Trace)>,
    /// The latest batched-presence tick, which the presence region shows.
    pub last_diff: Option<DiffShown>,
    /// Events recorded ever: a change counter.
    pub events: u64,
}

pub(crate) struct BoardFeed {
    pub viewers: AtomicUsize,
    pub recent: Mutex<Recent>,
    pub frames: watch::Sender<Option<Bytes>>,
    started: Instant,
    /// Frames built, and the time they took (µs), for docs/performance.md.
    pub built: AtomicU64,
    pub build_us: AtomicU64,
}

impl Default for BoardFeed {
    fn default() -> Self {
        BoardFeed {
            viewers: AtomicUsize::new(0),
            recent: Mutex::default(),
            frames: watch::Sender::new(None),
            started: Instant::now(),
            built: AtomicU64::new(0),
            build_us: AtomicU64::new(0),
        }
    }
}

impl BoardFeed {
    /// Is a board open? Routing traces and records events then (and while
    /// the server narrates, see `deliver.rs`).
    pub fn watched(&self) -> bool {
        self.viewers.load(Ordering::Relaxed) > 0
    }

    /// Keeps `event` for the next frame. Called by the core's owner, so it
    /// only clones into a ring of [`EVENT_LINES`]: O(1), formatting is later.
    pub fn record(&self, event: &Event, trace: &Trace) {
        let at = self.started.elapsed();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.events += 1;
        if matches!(event, Event::Message { .. } | Event::GroupMessage { .. }) {
            recent.last_chat = Some((event.clone(), trace.clone()));
        }
        if let Some(diff) = DiffShown::of(event, recent.events) {
            recent.last_diff = Some(diff);
        }
        if recent.lines.len() == EVENT_LINES {
            recent.lines.pop_front();
        }
        recent.lines.push_back((at, event.clone(), trace.clone()));
    }

    /// What the feed has cost so far, for `/inspect`.
    pub fn stats(&self) -> BoardStats {
        let frames = self.built.load(Ordering::Relaxed);
        let us = self.build_us.load(Ordering::Relaxed);
        BoardStats {
            viewers: self.viewers.load(Ordering::Relaxed),
            frames,
            mean_build_us: us.checked_div(frames).unwrap_or(0),
        }
    }
}
