//! How each frame from the server is shown: one line, plain or coloured.
//!
//! Plain lines are stable (scripts and tests read them); colour only adds
//! emphasis. Pure functions of the typed frame and what was sent.

use std::time::Duration;

use colored::Colorize;

use crate::names::UserId;
use crate::output::{clock, inert, paint};
use crate::protocol::{AckStatus, Message, PresenceStatus, ServerFrame, Target};

/// What a request was, remembered by its `ref` until its ack or error comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// "to bob", "to #g1", "join #g1", "who", ...
    pub label: String,
}

/// Colour or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

fn names(users: &[UserId]) -> String {
    users
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A chat message as "bob -> alice: hi" or "#g1 bob: hi", prefixed for flushed ones.
fn chat(message: &Message, offline: bool, style: Style) -> String {
    let c = style.color;
    let body = match &message.target {
        Target::User(to) => format!("{} -> {to}: {}", message.from, inert(&message.text)),
        Target::Group(g) => format!("#{g} {}: {}", message.from, inert(&message.text)),
    };
    let body = match (&message.target, offline) {
        (Target::User(_), false) => paint(body, c, |t| t.cyan().bold()),
        (Target::Group(_), false) => paint(body, c, |t| t.magenta().bold()),
        (_, true) => paint(body, c, |t| t.bright_blue()),
    };
    if offline {
        let sent = format!("[offline, sent {}]", clock(message.ts));
        format!("{} {body}", paint(sent, c, |t| t.bright_blue()))
    } else {
        body
    }
}

/// The line for one frame. `sent` is the request this frame answers (by `ref`),
/// `rtt` the round trip of a `pong`.
pub fn frame_line(
    frame: &ServerFrame,
    sent: Option<&Sent>,
    rtt: Option<Duration>,
    style: Style,
) -> String {
    let c = style.color;
    let about = sent.map(|r| format!(" ({})", r.label)).unwrap_or_default();
    match frame {
        ServerFrame::Welcome {
            user,
            online,
            queued,
            resume,
            ..
        } => {
            let online = match names(online) {
                none if none.is_empty() => "nobody else".to_string(),
                some => some,
            };
            let coming = match resume {
                None | Some(0) => format!("{queued} queued message(s) coming"),
                Some(n) => format!(
                    "{queued} message(s) you have not seen yet coming (after #{n}, the last you confirmed)"
                ),
            };
            let line = format!("welcome {user}: online now: {online}; {coming}");
            paint(line, c, |t| t.green().bold())
        }
        ServerFrame::Chat { message, offline } => chat(message, *offline, style),
        ServerFrame::Presence { user, status } => {
            paint(format!("* {user} is {status}"), c, |t| t.yellow())
        }
        // One line per change, as v1 shows them; the client's own name is not news.
        ServerFrame::PresenceDiff { online, offline } => {
            let changes = [
                (online, PresenceStatus::Online),
                (offline, PresenceStatus::Offline),
            ];
            let lines: Vec<String> = changes
                .iter()
                .flat_map(|(users, status)| users.iter().map(move |u| (u, *status)))
                .map(|(user, status)| paint(format!("* {user} is {status}"), c, |t| t.yellow()))
                .collect();
            lines.join("\n")
        }
        ServerFrame::Ack { id, status, .. } => {
            let id = id.map(|i| format!(" #{i}")).unwrap_or_default();
            let style: fn(&str) -> colored::ColoredString = match status {
                AckStatus::Delivered | AckStatus::Ok => |t| t.green(),
                AckStatus::Queued => |t| t.yellow(),
                AckStatus::Sent => |t| t.dimmed(),
            };
            paint(format!("✓ {status}{id}{about}"), c, style)
        }
        ServerFrame::Error(error) => {
            let line = format!("✗ {}: {}{about}", error.code, inert(&error.detail));
            paint(line, c, |t| t.red().bold())
        }
        ServerFrame::Who { online } => format!("online: {}", names(online)),
        ServerFrame::Receipt { id, user } => {
            let by = user
                .as_ref()
                .map(|u| format!(" by {u}"))
                .unwrap_or_default();
            paint(format!("✓✓ received #{id}{by}{about}"), c, |t| {
                t.green()
            })
        }
        ServerFrame::Pong => match rtt {
            Some(rtt) => format!("pong: round trip {:.2} ms", rtt.as_secs_f64() * 1000.0),
            None => "pong".into(),
        },
    }
}

/// A frame this client does not understand, shown as it came (made inert).
pub fn unknown_line(text: &str) -> String {
    format!("? {}", inert(text))
}

/// A line of the client's own (hints, connection state), marked with "!".
pub fn notice(text: &str, style: Style) -> String {
    paint(format!("! {text}"), style.color, |t| t.yellow().dimmed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_server_frame;

    const PLAIN: Style = Style { color: false };

    fn line(text: &str) -> String {
        frame_line(&parse_server_frame(text).unwrap(), None, None, PLAIN)
    }

    #[test]
    fn every_frame_type_has_a_stable_plain_line() {
        assert_eq!(
            line(r#"{"type":"welcome","user":"alice","online":["bob","carol"],"queued":2}"#),
            "welcome alice: online now: bob, carol; 2 queued message(s) coming"
        );
        assert_eq!(
            line(r#"{"type":"welcome","user":"alice","online":[],"queued":0}"#),
            "welcome alice: online now: nobody else; 0 queued message(s) coming"
        );
        assert_eq!(
            line(
                r#"{"type":"welcome","user":"alice","online":[],"queued":3,"resume":4,"epoch":"e"}"#
            ),
            "welcome alice: online now: nobody else; 3 message(s) you have not seen yet coming (after #4, the last you confirmed)"
        );
        assert_eq!(
            line(r#"{"type":"message","id":1,"from":"bob","to":"alice","text":"hi","ts":0}"#),
            "bob -> alice: hi"
        );
        assert_eq!(
            line(
                r#"{"type":"message","id":1,"from":"bob","to":"alice","text":"hi","ts":3723000,"offline":true}"#
            ),
            "[offline, sent 01:02:03 UTC] bob -> alice: hi"
        );
        assert_eq!(
            line(r#"{"type":"group_message","id":2,"group":"g1","from":"bob","text":"yo","ts":0}"#),
            "#g1 bob: yo"
        );
        assert_eq!(
            line(r#"{"type":"presence","user":"bob","status":"offline"}"#),
            "* bob is offline"
        );
        assert_eq!(line(r#"{"type":"who","online":["a","b"]}"#), "online: a, b");
        let sent = Sent {
            label: "to bob".into(),
        };
        let answered = |text: &str, rtt| {
            frame_line(&parse_server_frame(text).unwrap(), Some(&sent), rtt, PLAIN)
        };
        assert_eq!(
            answered(r#"{"type":"ack","ref":1,"id":7,"status":"queued"}"#, None),
            "✓ queued #7 (to bob)"
        );
        assert_eq!(
            answered(
                r#"{"type":"error","code":"not_member","detail":"join first","ref":2}"#,
                None
            ),
            "✗ not_member: join first (to bob)"
        );
        assert_eq!(
            frame_line(
                &ServerFrame::Pong,
                None,
                Some(Duration::from_micros(420)),
                PLAIN
            ),
            "pong: round trip 0.42 ms"
        );
        assert_eq!(
            unknown_line(r#"{"type":"surprise"}"#),
            r#"? {"type":"surprise"}"#
        );
    }

    #[test]
    fn colour_only_adds_escape_codes() {
        colored::control::set_override(true);
        let frame = parse_server_frame(r#"{"type":"presence","user":"bob","status":"online"}"#);
        let coloured = frame_line(&frame.unwrap(), None, None, Style { color: true });
        assert!(coloured.contains("\u{1b}[") && coloured.contains("* bob is online"));
    }
}
