//! Resume (protocol v1.1), the client's half: where this client is in its
//! stream of messages, which frames are duplicates, and when to confirm.
//!
//! The server holds every message for a resuming client until a `received`
//! covers it, and re-sends what is held after the position the client names
//! on connect. So the client remembers the highest id it has shown (per
//! server and name, in `positions.json` beside its tokens), shows each id at
//! most once, and confirms in batches: at most one `received` per 100 ms or
//! per 64 messages, so a flush of 5,000 costs about 80 frames back, not 5,000.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// At most one `received` per this long...
pub const CONFIRM_EVERY: Duration = Duration::from_millis(100);
/// ...or per this many messages shown, whichever comes first.
pub const CONFIRM_BATCH: usize = 64;

const FILE: &str = "positions.json";

/// What is kept per server and name: the last id confirmed, and the server
/// run (epoch) it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub received: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// server base URL -> name -> position
type Positions = BTreeMap<String, BTreeMap<String, Saved>>;

/// One client's place in its stream.
#[derive(Debug, Clone)]
pub struct Position {
    /// The highest id shown to the user: anything at or below it is a duplicate.
    shown: u64,
    /// The highest id confirmed with `received`.
    confirmed: u64,
    epoch: Option<String>,
    /// Shown since the last `received`.
    unconfirmed: usize,
    /// Where it is saved (None: not saved, e.g. no config directory).
    file: Option<(PathBuf, String, String)>,
    /// The last welcome said the server resumed (false: a v1 connection).
    resuming: bool,
}

impl Position {
    /// Starts from what was saved for `name` on `url` (nothing saved: from 0).
    pub fn load(url: &str, name: &str) -> Position {
        let dir = super::token::config_dir().ok();
        let saved = dir
            .as_deref()
            .and_then(|d| super::token::read_json::<Positions>(&d.join(FILE)).ok())
            .and_then(|mut all| all.get_mut(url)?.remove(name))
            .unwrap_or_default();
        let mut position = Position::from_saved(saved);
        position.file = dir.map(|d| (d, url.to_string(), name.to_string()));
        position
    }

    fn from_saved(saved: Saved) -> Position {
        Position {
            resuming: true,
            shown: saved.received,
            confirmed: saved.received,
            epoch: saved.epoch,
            unconfirmed: 0,
            file: None,
        }
    }

    /// The query that resumes from here: `resume=N` (and `&epoch=E` once known).
    pub fn query(&self) -> String {
        match &self.epoch {
            Some(epoch) => format!("resume={}&epoch={epoch}", self.shown),
            None => format!("resume={}", self.shown),
        }
    }

    /// The welcome says where the server resumed from: our position, or 0
    /// when it did not trust it (another run of the server, whose ids meant
    /// other messages). From then on, ids at or below it are duplicates.
    pub fn welcome(&mut self, resume: Option<u64>, epoch: Option<&str>) {
        // No `resume` in the welcome: the server did not resume (a v1
        // server), so ids may arrive out of order and none is skipped;
        // nothing is confirmed on this connection.
        self.resuming = resume.is_some();
        let Some(from) = resume else { return };
        self.shown = from;
        self.confirmed = from;
        self.unconfirmed = 0;
        self.epoch = epoch.map(str::to_string);
        self.save();
    }

    /// Whether a frame is shown: everything but a chat message already shown.
    /// The welcome moves the position to where the server resumed from.
    pub fn shows(&mut self, frame: &crate::protocol::ServerFrame) -> bool {
        use crate::protocol::ServerFrame;
        match frame {
            ServerFrame::Welcome { resume, epoch, .. } => {
                self.welcome(*resume, epoch.as_deref());
                true
            }
            ServerFrame::Chat { message, .. } => self.arrived(message.id),
            _ => true,
        }
    }

    /// A chat message arrived: true if it is new and must be shown.
    pub fn arrived(&mut self, id: u64) -> bool {
        if !self.resuming {
            return true;
        }
        if id <= self.shown {
            return false;
        }
        self.shown = id;
        self.unconfirmed += 1;
        true
    }

    /// Whether a `received` is due now regardless of the timer (a full batch).
    pub fn batch_full(&self) -> bool {
        self.unconfirmed >= CONFIRM_BATCH
    }

    /// The id to confirm, if anything was shown since the last confirmation;
    /// records it as confirmed (and saves it).
    pub fn confirm(&mut self) -> Option<u64> {
        if !self.resuming || self.shown <= self.confirmed {
            return None;
        }
        self.confirmed = self.shown;
        self.unconfirmed = 0;
        self.save();
        Some(self.confirmed)
    }

    pub fn pending(&self) -> bool {
        self.resuming && self.shown > self.confirmed
    }

    /// Written beside the tokens, under their lock; a failure costs at most
    /// some duplicates after a restart (which are skipped by id anyway), so it
    /// is not worth stopping the chat for.
    fn save(&self) {
        let Some((dir, url, name)) = &self.file else {
            return;
        };
        let saved = Saved {
            received: self.confirmed,
            epoch: self.epoch.clone(),
        };
        let _ = save_to(dir, url, name, saved);
    }
}

fn save_to(dir: &Path, url: &str, name: &str, saved: Saved) -> anyhow::Result<()> {
    super::token::locked(dir, || {
        let path = dir.join(FILE);
        let mut all: Positions = super::token::read_json(&path).unwrap_or_default();
        all.entry(url.to_string())
            .or_default()
            .insert(name.to_string(), saved);
        super::token::save(&path, &all)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_shown_once_and_confirmed_in_batches() {
        let mut p = Position::from_saved(Saved::default());
        assert_eq!(p.query(), "resume=0");
        p.welcome(Some(0), Some("e1"));
        assert_eq!(p.query(), "resume=0&epoch=e1");
        assert!(p.arrived(1) && p.arrived(2));
        assert!(!p.arrived(2) && !p.arrived(1), "duplicates are skipped");
        assert_eq!(p.confirm(), Some(2));
        assert_eq!(p.confirm(), None, "nothing new shown");
        for id in 3..3 + CONFIRM_BATCH as u64 {
            assert!(!p.batch_full());
            assert!(p.arrived(id));
        }
        assert!(p.batch_full());
        assert_eq!(p.confirm(), Some(2 + CONFIRM_BATCH as u64));
        assert_eq!(p.query(), format!("resume={}&epoch=e1", 2 + CONFIRM_BATCH));
    }

    #[test]
    fn a_server_that_does_not_resume_gets_every_message_shown_and_no_confirmation() {
        let mut p = Position::from_saved(Saved {
            received: 40,
            epoch: None,
        });
        // A cluster node answers `?resume=40` with a v1 welcome.
        p.welcome(None, None);
        // Two senders on two nodes: ids can arrive out of order, and at or
        // below the old position; every one is shown.
        assert!(p.arrived(7) && p.arrived(5) && p.arrived(41));
        assert!(!p.pending());
        assert_eq!(p.confirm(), None, "v1: nothing to confirm");
        // A later connection that does resume skips duplicates again.
        p.welcome(Some(41), None);
        assert!(!p.arrived(41) && p.arrived(42));
    }

    #[test]
    fn a_server_that_did_not_trust_the_position_starts_the_count_again() {
        let mut p = Position::from_saved(Saved {
            received: 500,
            epoch: Some("old".into()),
        });
        assert_eq!(p.query(), "resume=500&epoch=old");
        // The server restarted in memory: it resumed from 0, in a new epoch.
        p.welcome(Some(0), Some("new"));
        assert!(p.arrived(1), "id 1 of the new run is a new message");
        assert_eq!(p.query(), "resume=1&epoch=new");
    }

    #[test]
    fn positions_are_kept_per_server_and_name() {
        let dir = std::env::temp_dir().join(format!(
            "vivachat-positions-{}-{}",
            std::process::id(),
            crate::tokens::generate().unwrap()
        ));
        let saved = |received| Saved {
            received,
            epoch: Some("e".into()),
        };
        save_to(&dir, "ws://h:1", "bob", saved(7)).unwrap();
        save_to(&dir, "ws://h:1", "ann", saved(9)).unwrap();
        save_to(&dir, "ws://h:2", "bob", saved(3)).unwrap();
        let all: Positions = super::super::token::read_json(&dir.join(FILE)).unwrap();
        assert_eq!(all["ws://h:1"]["bob"], saved(7));
        assert_eq!(all["ws://h:1"]["ann"], saved(9));
        assert_eq!(all["ws://h:2"]["bob"], saved(3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
