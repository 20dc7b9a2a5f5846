//! How each frame from the server is shown: one line, plain or coloured.
//!
//! Plain lines are stable (scripts and tests read them); colour only adds
//! emphasis. Pure functions of the frame and what was sent.

use std::time::Duration;

use colored::Colorize;
use serde_json::Value;

use crate::inspect::render::clock;

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

impl Style {
    fn paint(self, text: String, f: fn(&str) -> colored::ColoredString) -> String {
        if self.color {
            f(&text).to_string()
        } else {
            text
        }
    }
}

fn s<'a>(frame: &'a Value, key: &str) -> &'a str {
    frame.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn names(frame: &Value, key: &str) -> String {
    frame
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A chat message as "bob -> alice: hi" or "#g1 bob: hi", prefixed for flushed ones.
fn chat(frame: &Value, style: Style, group: bool) -> String {
    let body = if group {
        format!(
            "#{} {}: {}",
            s(frame, "group"),
            s(frame, "from"),
            s(frame, "text")
        )
    } else {
        format!(
            "{} -> {}: {}",
            s(frame, "from"),
            s(frame, "to"),
            s(frame, "text")
        )
    };
    let offline = frame.get("offline").and_then(Value::as_bool) == Some(true);
    let body = match (group, offline) {
        (false, false) => style.paint(body, |t| t.cyan().bold()),
        (true, false) => style.paint(body, |t| t.magenta().bold()),
        (_, true) => style.paint(body, |t| t.blue()),
    };
    if offline {
        let sent = frame
            .get("ts")
            .and_then(Value::as_u64)
            .map_or_else(|| "?".into(), clock);
        format!(
            "{} {body}",
            style.paint(format!("[offline, sent {sent}]"), |t| t.blue().dimmed())
        )
    } else {
        body
    }
}

/// The line for one frame. `sent` is the request this frame answers (by `ref`),
/// `rtt` the round trip of a `pong`.
pub fn frame_line(
    frame: &Value,
    sent: Option<&Sent>,
    rtt: Option<Duration>,
    style: Style,
) -> String {
    let about = sent.map(|r| format!(" ({})", r.label)).unwrap_or_default();
    match frame.get("type").and_then(Value::as_str).unwrap_or("") {
        "welcome" => {
            let online = names(frame, "online");
            let online = if online.is_empty() {
                "nobody else".to_string()
            } else {
                online
            };
            let queued = frame.get("queued").and_then(Value::as_u64).unwrap_or(0);
            style.paint(
                format!(
                    "welcome {}: online now: {online}; {queued} queued message(s) coming",
                    s(frame, "user")
                ),
                |t| t.green().bold(),
            )
        }
        "message" => chat(frame, style, false),
        "group_message" => chat(frame, style, true),
        "presence" => style.paint(
            format!("* {} is {}", s(frame, "user"), s(frame, "status")),
            |t| t.yellow(),
        ),
        "ack" => {
            let status = s(frame, "status");
            let id = frame
                .get("id")
                .and_then(Value::as_u64)
                .map(|i| format!(" #{i}"))
                .unwrap_or_default();
            let line = format!("✓ {status}{id}{about}");
            match status {
                "delivered" | "ok" => style.paint(line, |t| t.green()),
                "queued" => style.paint(line, |t| t.yellow()),
                _ => style.paint(line, |t| t.dimmed()),
            }
        }
        "error" => style.paint(
            format!("✗ {}: {}{about}", s(frame, "code"), s(frame, "detail")),
            |t| t.red().bold(),
        ),
        "who" => format!("online: {}", names(frame, "online")),
        "pong" => match rtt {
            Some(rtt) => format!("pong: round trip {:.2} ms", rtt.as_secs_f64() * 1000.0),
            None => "pong".into(),
        },
        _ => format!("? {frame}"),
    }
}

/// A line of the client's own (hints, connection state), marked with "!".
pub fn notice(text: &str, style: Style) -> String {
    style.paint(format!("! {text}"), |t| t.yellow().dimmed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Style = Style { color: false };

    fn line(v: Value) -> String {
        frame_line(&v, None, None, PLAIN)
    }

    #[test]
    fn every_frame_type_has_a_stable_plain_line() {
        assert_eq!(
            line(json!({"type":"welcome","user":"alice","online":["bob","carol"],"queued":2})),
            "welcome alice: online now: bob, carol; 2 queued message(s) coming"
        );
        assert_eq!(
            line(json!({"type":"welcome","user":"alice","online":[],"queued":0})),
            "welcome alice: online now: nobody else; 0 queued message(s) coming"
        );
        assert_eq!(
            line(json!({"type":"message","id":1,"from":"bob","to":"alice","text":"hi","ts":0})),
            "bob -> alice: hi"
        );
        assert_eq!(
            line(
                json!({"type":"message","id":1,"from":"bob","to":"alice","text":"hi","ts":3_723_000,"offline":true})
            ),
            "[offline, sent 01:02:03 UTC] bob -> alice: hi"
        );
        assert_eq!(
            line(
                json!({"type":"group_message","id":2,"group":"g1","from":"bob","text":"yo","ts":0})
            ),
            "#g1 bob: yo"
        );
        assert_eq!(
            line(json!({"type":"presence","user":"bob","status":"offline"})),
            "* bob is offline"
        );
        assert_eq!(
            line(json!({"type":"who","online":["a","b"]})),
            "online: a, b"
        );
        let sent = Sent {
            label: "to bob".into(),
        };
        assert_eq!(
            frame_line(
                &json!({"type":"ack","ref":1,"id":7,"status":"queued"}),
                Some(&sent),
                None,
                PLAIN
            ),
            "✓ queued #7 (to bob)"
        );
        assert_eq!(
            frame_line(
                &json!({"type":"error","code":"not_member","detail":"join first","ref":2}),
                Some(&sent),
                None,
                PLAIN
            ),
            "✗ not_member: join first (to bob)"
        );
        assert_eq!(
            frame_line(
                &json!({"type":"pong","ref":3}),
                None,
                Some(Duration::from_micros(420)),
                PLAIN
            ),
            "pong: round trip 0.42 ms"
        );
        assert_eq!(line(json!({"type":"surprise"})), r#"? {"type":"surprise"}"#);
        assert_eq!(
            line(json!(["not", "an", "object"])),
            r#"? ["not","an","object"]"#
        );
    }

    #[test]
    fn colour_only_adds_escape_codes() {
        let v = json!({"type":"presence","user":"bob","status":"online"});
        colored::control::set_override(true);
        let coloured = frame_line(&v, None, None, Style { color: true });
        assert!(coloured.contains("\u{1b}[") && coloured.contains("* bob is online"));
    }
}
