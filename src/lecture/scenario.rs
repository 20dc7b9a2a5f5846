//! Scenarios a student writes: one action per line, in the terminal
//! client's own words, with the user in front (`alice> /to bob`). Playing
//! one through the real core gives a recording, which replays like any other.
//!
//! ```text
//! alice> /to bob            the client's commands (see `vivachat client --help`)
//! alice> hello              text for the conversation set with /to
//! bob> (connects)           a device opens (v1)
//! bob> (resumes 3)          a device opens and resumes after message 3 (v1.1)
//! bob> (reads)              the client reads what it was sent (a resuming one confirms it)
//! bob> (leaves)             it reads everything, then closes
//! carol> (crashes)          it closes before reading what it was sent
//! bob@laptop> (connects)    a second device of bob's, named laptop
//! # a comment
//! ```
//!
//! A user acting with no open device connects first (as the client does).
//! Until a device `(reads)`, what it was sent is unread: a crash sends the
//! unread messages back, as the server does with frames a socket never took.

use std::collections::{BTreeMap, HashMap};

use super::record::{Device, Header, Line, Recorded, Recording, FORMAT};
use super::replay::{apply, fresh_core, ReplayCore};
use crate::client::input::{parse_line, Command};
use crate::core::{ConnId, CoreConfig};
use crate::names::{Name, UserId};
use crate::protocol::{Message, Request, Target};

/// The time of a scenario's first line: one second passes per line.
const START_MS: u64 = 1_764_000_000_000;

/// A line that could not be played, with its number and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}\n  {text}\n  expected: {expected}")]
pub struct ScenarioError {
    pub line: usize,
    pub text: String,
    pub problem: String,
    pub expected: String,
}

const EXPECTED_LINE: &str =
    "USER> ACTION, e.g. `alice> hello`, `bob> (connects)`, `bob@laptop> /join g1`";
const EXPECTED_ACTION: &str = "a client command (/to bob, TEXT, @bob TEXT, #g1 TEXT, /join g1, /leave g1, /block bob, /unblock bob, /who, /ping, /quit) or (connects), (resumes N), (reads), (leaves), (crashes)";

/// One device of the scenario, and what it was sent and has not read.
struct Open {
    conn: ConnId,
    resume: Option<u64>,
    unread: Vec<Message>,
    /// The highest message id it has read (what a resuming client confirms).
    seen: u64,
    /// Its v1 flush is charged to the budget until the socket takes it.
    flush_pending: bool,
}

struct Player {
    core: ReplayCore,
    registry: HashMap<ConnId, Device>,
    open: BTreeMap<(UserId, String), Open>,
    conversation: HashMap<UserId, Target>,
    next_conn: ConnId,
    recording: Recording,
    t: u64,
}

/// What one line of the scenario does, before it is played.
enum Action {
    Connect(Option<u64>),
    Read,
    Leave,
    Crash,
    Client(Command),
}

fn parse_action(raw: &str) -> Result<Action, (String, &'static str)> {
    let raw = raw.trim();
    if let Some(event) = raw.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let mut words = event.split_whitespace();
        return match (words.next(), words.next(), words.next()) {
            (Some("connects"), None, _) => Ok(Action::Connect(None)),
            (Some("resumes"), Some(n), None) => n
                .parse::<u64>()
                .map(|n| Action::Connect(Some(n)))
                .map_err(|_| {
                    (
                        format!("{n:?} is not a message id"),
                        "(resumes N), N the highest id the device has: 0 the first time",
                    )
                }),
            (Some("reads"), None, _) => Ok(Action::Read),
            (Some("leaves"), None, _) => Ok(Action::Leave),
            (Some("crashes"), None, _) => Ok(Action::Crash),
            _ => Err((
                format!("({event}) is not a connection event"),
                EXPECTED_ACTION,
            )),
        };
    }
    match parse_line(raw) {
        Ok(Command::Nothing) => Err(("the action is empty".into(), EXPECTED_ACTION)),
        Ok(Command::Help) => Err((
            "/help shows help; it is not an action".into(),
            EXPECTED_ACTION,
        )),
        Ok(Command::Quit) => Ok(Action::Leave),
        Ok(command) => Ok(Action::Client(command)),
        Err(usage) => Err((usage.0, EXPECTED_ACTION)),
    }
}

/// Plays a scenario's text through a fresh core and returns its recording.
pub fn play(text: &str) -> Result<Recording, ScenarioError> {
    let header = Header {
        vivachat_record: FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        epoch: "scenario".to_string(),
        limits: CoreConfig::default(),
        restored: None,
        node: None,
    };
    let recording = Recording {
        header,
        lines: Vec::new(),
    };
    let mut player = Player {
        core: fresh_core(&recording),
        registry: HashMap::new(),
        open: BTreeMap::new(),
        conversation: HashMap::new(),
        next_conn: 1,
        recording,
        t: START_MS,
    };
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |problem: String, expected: &str| ScenarioError {
            line: i + 1,
            text: raw.to_string(),
            problem,
            expected: expected.to_string(),
        };
        let Some((who, action)) = trimmed.split_once('>') else {
            return Err(error("no `>` after the user".into(), EXPECTED_LINE));
        };
        let (user, device) = match who.trim().split_once('@') {
            Some((user, device)) => (user, device.to_string()),
            None => (who.trim(), String::new()),
        };
        let user = Name::parse(user).map_err(|e| {
            error(
                format!("{user:?} is not a user name: {e}"),
                "a name of letters, digits, '-', '_' or '.', then `>`",
            )
        })?;
        if !device.is_empty() && Name::parse(&device).is_err() {
            return Err(error(
                format!("{device:?} is not a device name"),
                "USER@DEVICE>, the device a name like laptop",
            ));
        }
        let action = parse_action(action).map_err(|(p, e)| error(p, e))?;
        player
            .act(&user, device, action)
            .map_err(|(p, e)| error(p, e))?;
        player.t += 1000;
    }
    Ok(player.recording)
}

impl Player {
    /// Records `input` and plays it: every chat message it sends a device
    /// is unread there until that device reads.
    fn input(&mut self, input: Recorded) {
        let line = Line { t: self.t, input };
        if let Some(outcome) = apply(&mut self.core, &mut self.registry, &line) {
            for (conn, frame) in outcome.sends() {
                if let Some(message) = frame.chat_message() {
                    if let Some(open) = self.open.values_mut().find(|o| o.conn == conn.id) {
                        open.unread.push(message.clone());
                    }
                }
            }
            if let Some(flush) = &outcome.flush {
                if let Some(open) = self.open.values_mut().find(|o| o.conn == flush.conn.id) {
                    open.flush_pending = flush.charged > 0;
                }
            }
        }
        self.recording.lines.push(line);
    }

    fn connect(&mut self, user: &UserId, device: &str, resume: Option<u64>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.open.insert(
            (user.clone(), device.to_string()),
            Open {
                conn,
                resume,
                unread: Vec::new(),
                seen: resume.unwrap_or(0),
                flush_pending: false,
            },
        );
        self.input(Recorded::Connect {
            user: user.clone(),
            conn,
            resume,
            epoch: resume.map(|_| self.recording.header.epoch.clone()),
            batched: false,
        });
    }

    fn read(&mut self, user: &UserId, key: &(UserId, String)) {
        let Some(open) = self.open.get_mut(key) else {
            return;
        };
        let read = std::mem::take(&mut open.unread);
        let (conn, pending, resume) = (open.conn, open.flush_pending, open.resume);
        open.flush_pending = false;
        let highest = read.iter().map(|m| m.id).max().unwrap_or(0).max(open.seen);
        let confirm = resume.is_some() && highest > open.seen;
        open.seen = highest;
        if pending {
            self.input(Recorded::Flushed { conn });
        }
        if confirm {
            self.input(Recorded::request(
                user,
                conn,
                &Request::Received { id: highest },
            ));
        }
    }

    fn act(
        &mut self,
        user: &UserId,
        device: String,
        action: Action,
    ) -> Result<(), (String, &'static str)> {
        let key = (user.clone(), device.clone());
        let open = self.open.contains_key(&key);
        let which = if device.is_empty() {
            user.to_string()
        } else {
            format!("{user}@{device}")
        };
        match action {
            Action::Connect(resume) => {
                if open {
                    return Err((
                        format!("{which} is connected already"),
                        "(connects) for a device that is not open; USER@DEVICE> opens another",
                    ));
                }
                self.connect(user, &device, resume);
            }
            Action::Read | Action::Leave | Action::Crash if !open => {
                return Err((format!("{which} has no open device"), "(connects) first"));
            }
            Action::Read => self.read(user, &key),
            Action::Leave => {
                self.read(user, &key);
                let conn = self.open.remove(&key).map_or(0, |o| o.conn);
                self.input(Recorded::Close {
                    user: user.clone(),
                    conn,
                    unsent: Vec::new(),
                });
            }
            Action::Crash => {
                let gone = self.open.remove(&key).expect("checked open above");
                self.input(Recorded::close(user, gone.conn, &gone.unread));
            }
            Action::Client(command) => {
                let request = match command {
                    Command::Converse(target) => {
                        self.conversation.insert(user.clone(), target);
                        return Ok(());
                    }
                    Command::Say(text) => match self.conversation.get(user) {
                        Some(target) => Request::chat(target, &text),
                        None => {
                            return Err((
                                format!("{user} has no conversation for {text:?}"),
                                "`/to bob` (or `/to #g1`) on an earlier line, or @bob TEXT",
                            ))
                        }
                    },
                    Command::SendTo(target, text) => Request::chat(&target, &text),
                    Command::Join(group) => Request::GroupJoin { group },
                    Command::Leave(group) => Request::GroupLeave { group },
                    Command::Block(whom) => Request::Block { user: whom },
                    Command::Unblock(whom) => Request::Unblock { user: whom },
                    Command::Who => Request::Who,
                    Command::Ping => Request::Ping,
                    Command::Help | Command::Quit | Command::Nothing => {
                        unreachable!("parse_action turns these into errors or (leaves)")
                    }
                };
                if !open {
                    self.connect(user, &device, None);
                }
                let conn = self.open[&key].conn;
                self.input(Recorded::request(user, conn, &request));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lecture::replay::Cursor;

    fn end(text: &str) -> crate::core::Snapshot {
        let recording = play(text).unwrap();
        let mut cursor = Cursor::new(std::sync::Arc::new(recording));
        cursor.seek(usize::MAX);
        cursor.snapshot()
    }

    #[test]
    fn the_seeds_message_flow_queues_then_flushes_on_connect() {
        let queued = end("alice> /to bob\nalice> hello\n");
        let q = &queued.structures.offline_messages;
        assert_eq!(q.len(), 1);
        assert_eq!(&*q.values().next().unwrap().messages[0].text, "hello");
        let flushed = end("alice> /to bob\nalice> hello\nbob> (connects)\n");
        assert!(flushed.structures.offline_messages.is_empty());
        assert_eq!(flushed.structures.presence.len(), 2);
    }

    #[test]
    fn a_crash_before_reading_sends_the_unread_messages_back_and_a_leave_does_not() {
        let script = "alice> /to bob\nalice> one\nalice> two\nbob> (connects)\nbob> ";
        let crashed = end(&format!("{script}(crashes)\n"));
        let back = &crashed.structures.offline_messages;
        assert_eq!(back.values().next().map(|q| q.len), Some(2), "{back:?}");
        let left = end(&format!("{script}(leaves)\n"));
        assert!(left.structures.offline_messages.is_empty());
    }

    #[test]
    fn a_resuming_device_confirms_what_it_read_and_the_window_empties() {
        let script = "alice> @bob one\nbob> (resumes 0)\n";
        let held = end(script);
        // Held until confirmed: the copy stays in the window.
        assert_eq!(held.structures.offline_messages.len(), 1);
        let read = end(&format!("{script}bob> (reads)\n"));
        assert!(read.structures.offline_messages.is_empty());
        assert_eq!(read.structures.released.values().next(), Some(&1));
    }

    #[test]
    fn a_second_device_is_named_and_both_are_in_active_connections() {
        let s = end("bob> (connects)\nbob@laptop> (connects)\n");
        assert_eq!(
            s.structures
                .active_connections
                .values()
                .next()
                .map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn a_bad_line_names_its_number_and_what_was_expected() {
        let e = play("alice> (connects)\n\nalice hello\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.expected.contains("USER> ACTION"), "{e}");
        let e = play("bob> (jumps)\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("(jumps)"), "{e}");
        let e = play("bob> hello\n").unwrap_err();
        assert!(e.expected.contains("/to bob"), "{e}");
        let e = play("bob> (connects)\nbob> (connects)\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = play("bob> (resumes x)\n").unwrap_err();
        assert!(e.problem.contains("\"x\""), "{e}");
        let e = play("carol> (crashes)\n").unwrap_err();
        assert!(e.problem.contains("no open device"), "{e}");
    }
}
