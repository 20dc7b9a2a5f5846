//! What the user typed, as a command: a plain function, tested on its own.

use crate::names::Name;
use crate::protocol::Target;

/// One line of input, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Plain text, for the current conversation.
    Say(String),
    /// `@bob text`, `#g1 text`, `/msg bob text`, `/g g1 text`: once, without changing the conversation.
    SendTo(Target, String),
    /// `/to bob`, `/to #g1`.
    Converse(Target),
    Join(Name),
    Leave(Name),
    Block(Name),
    Unblock(Name),
    Who,
    Ping,
    Help,
    Quit,
    /// An empty line.
    Nothing,
}

/// Every command with its usage, for `/help` and `--help`.
pub const HELP: &[(&str, &str)] = &[
    (
        "TEXT",
        "send TEXT to the current conversation (set with /to)",
    ),
    (
        "/to bob | /to #g1",
        "talk to bob, or to group g1, from now on",
    ),
    ("@bob TEXT", "send one message to bob"),
    ("#g1 TEXT", "send one message to group g1"),
    ("/msg bob TEXT", "send one message to bob"),
    ("/g g1 TEXT", "send one message to group g1"),
    ("/join g1", "join (or create) group g1"),
    ("/leave g1", "leave group g1"),
    ("/block bob", "receive nothing from bob until /unblock"),
    ("/unblock bob", "receive bob's messages again"),
    ("/who", "list who is online"),
    ("/ping", "measure the round trip to the server"),
    ("/help", "show this list"),
    ("/quit", "leave (Ctrl-D too)"),
    ("//TEXT", "send TEXT that starts with a slash"),
];

/// A one-line hint for a line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

fn name(raw: &str, what: &str, usage: &str) -> Result<Name, Usage> {
    if raw.is_empty() {
        return Err(Usage(format!("usage: {usage}")));
    }
    Name::parse(raw).map_err(|e| {
        Usage(format!(
            "{raw:?} is not a valid {what} name: {e} (usage: {usage})"
        ))
    })
}

/// A user (`bob`, `@bob`) or a group (`#g1`).
pub fn target(raw: &str, usage: &str) -> Result<Target, Usage> {
    match raw.strip_prefix('#') {
        Some(group) => name(group, "group", usage).map(Target::Group),
        None => name(raw.strip_prefix('@').unwrap_or(raw), "user", usage).map(Target::User),
    }
}

/// Splits "word rest of line" at the first run of spaces.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (s, ""),
    }
}

/// Parses one input line. Never panics, whatever the line.
pub fn parse_line(line: &str) -> Result<Command, Usage> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Command::Nothing);
    }
    if let Some(text) = line.strip_prefix("//") {
        return Ok(Command::Say(format!("/{text}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        // "@bob hi" and "#g1 hi": one message, conversation unchanged.
        if line.starts_with('@') || line.starts_with('#') {
            let usage = if line.starts_with('@') {
                "@bob TEXT"
            } else {
                "#g1 TEXT"
            };
            let (who, text) = split_word(line);
            let to = target(who, usage)?;
            if text.is_empty() {
                return Err(Usage(format!("{who} needs a message: {usage}")));
            }
            return Ok(Command::SendTo(to, text.to_string()));
        }
        return Ok(Command::Say(line.to_string()));
    };
    let (verb, rest) = split_word(command);
    let one_name = |what: &str, usage: &str| -> Result<Name, Usage> {
        let (arg, extra) = split_word(rest);
        if !extra.is_empty() {
            return Err(Usage(format!("usage: {usage} (one name only)")));
        }
        let arg = if what == "group" {
            arg.trim_start_matches('#')
        } else {
            arg.trim_start_matches('@')
        };
        name(arg, what, usage)
    };
    let no_args = |cmd: Command, usage: &str| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Usage(format!("usage: {usage} (takes no arguments)")))
        }
    };
    match verb {
        "to" => {
            let (arg, extra) = split_word(rest);
            if !extra.is_empty() {
                return Err(Usage(
                    "usage: /to bob or /to #g1 (then type plain text)".into(),
                ));
            }
            target(arg, "/to bob or /to #g1").map(Command::Converse)
        }
        "msg" | "g" => {
            let usage = if verb == "msg" {
                "/msg bob TEXT"
            } else {
                "/g g1 TEXT"
            };
            let (who, text) = split_word(rest);
            let to = if verb == "g" {
                name(who.trim_start_matches('#'), "group", usage).map(Target::Group)?
            } else {
                target(who, usage)?
            };
            if text.is_empty() {
                return Err(Usage(format!("usage: {usage}")));
            }
            Ok(Command::SendTo(to, text.to_string()))
        }
        "join" => one_name("group", "/join g1").map(Command::Join),
        "leave" => one_name("group", "/leave g1").map(Command::Leave),
        "block" => one_name("user", "/block bob").map(Command::Block),
        "unblock" => one_name("user", "/unblock bob").map(Command::Unblock),
        "who" => no_args(Command::Who, "/who"),
        "ping" => no_args(Command::Ping, "/ping"),
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "" => Err(Usage(
            "a lone / is not a command; /help lists them (// sends a slash)".into(),
        )),
        other => Err(Usage(format!("unknown command /{other}; /help lists them"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn usage(line: &str) -> String {
        parse_line(line).unwrap_err().0
    }

    #[test]
    fn plain_text_and_escapes() {
        assert_eq!(
            parse_line("hello there"),
            Ok(Command::Say("hello there".into()))
        );
        assert_eq!(
            parse_line("  spaced  "),
            Ok(Command::Say("  spaced  ".into()))
        );
        assert_eq!(
            parse_line("//etc/passwd"),
            Ok(Command::Say("/etc/passwd".into()))
        );
        assert_eq!(parse_line(""), Ok(Command::Nothing));
        assert_eq!(parse_line("   \r\n"), Ok(Command::Nothing));
    }

    #[test]
    fn one_off_messages() {
        assert_eq!(
            parse_line("@bob hi you"),
            Ok(Command::SendTo(Target::User(n("bob")), "hi you".into()))
        );
        assert_eq!(
            parse_line("#g1 hi all"),
            Ok(Command::SendTo(Target::Group(n("g1")), "hi all".into()))
        );
        assert_eq!(
            parse_line("/msg bob  two  spaces"),
            Ok(Command::SendTo(
                Target::User(n("bob")),
                "two  spaces".into()
            ))
        );
        assert_eq!(
            parse_line("/msg #g1 x"),
            Ok(Command::SendTo(Target::Group(n("g1")), "x".into()))
        );
        assert_eq!(
            parse_line("/g g1 hello"),
            Ok(Command::SendTo(Target::Group(n("g1")), "hello".into()))
        );
        assert_eq!(
            parse_line("/g #g1 hello"),
            Ok(Command::SendTo(Target::Group(n("g1")), "hello".into()))
        );
    }

    #[test]
    fn conversations_and_membership() {
        assert_eq!(
            parse_line("/to bob"),
            Ok(Command::Converse(Target::User(n("bob"))))
        );
        assert_eq!(
            parse_line("/to #g1"),
            Ok(Command::Converse(Target::Group(n("g1"))))
        );
        assert_eq!(
            parse_line("/to @bob"),
            Ok(Command::Converse(Target::User(n("bob"))))
        );
        assert_eq!(parse_line("/join g1"), Ok(Command::Join(n("g1"))));
        assert_eq!(parse_line("/join #g1"), Ok(Command::Join(n("g1"))));
        assert_eq!(parse_line("/leave g1"), Ok(Command::Leave(n("g1"))));
        assert_eq!(parse_line("/block bob"), Ok(Command::Block(n("bob"))));
        assert_eq!(parse_line("/unblock bob"), Ok(Command::Unblock(n("bob"))));
        for (line, cmd) in [
            ("/who", Command::Who),
            ("/ping", Command::Ping),
            ("/help", Command::Help),
            ("/quit", Command::Quit),
            ("/exit", Command::Quit),
        ] {
            assert_eq!(parse_line(line), Ok(cmd));
        }
    }

    #[test]
    fn mistakes_get_one_line_hints() {
        assert_eq!(usage("/dance"), "unknown command /dance; /help lists them");
        assert!(usage("/").contains("/help"));
        assert_eq!(usage("/msg bob"), "usage: /msg bob TEXT");
        assert_eq!(usage("/msg"), "usage: /msg bob TEXT");
        assert_eq!(usage("/g g1"), "usage: /g g1 TEXT");
        assert!(usage("/to").starts_with("usage: /to bob"));
        assert!(usage("/to bob carol").contains("usage: /to bob"));
        assert!(usage("/join").contains("/join g1"));
        assert!(usage("/join a b").contains("one name only"));
        assert!(usage("/who now").contains("takes no arguments"));
        assert!(usage("@bob").contains("needs a message"));
        assert!(usage("#g1").contains("needs a message"));
        assert!(usage("@").contains("usage: @bob TEXT"));
        assert!(usage("/block b@d").contains("not a valid user name"));
        assert!(usage("/join g/1").contains("not a valid group name"));
        assert!(usage(&format!("@{} x", "a".repeat(40))).contains("at most 32"));
    }

    #[test]
    fn nothing_typed_can_panic() {
        let odd = [
            "/\u{0}",
            "@\u{fe0f} x",
            "#\u{200b}",
            "/msg \u{1F600} hi",
            "/g",
            "/to #",
            "@@bob x",
            "##g x",
            "/ /",
            "é",
            "\t/who",
        ];
        for line in odd {
            let _ = parse_line(line);
        }
        let mut seed: u32 = 7;
        for _ in 0..5000 {
            let line: String = (0..(seed % 12))
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ['/', '@', '#', ' ', 'a', 'b', 'é', '\u{0}', 'm', 's', 'g']
                        [(seed >> 16) as usize % 11]
                })
                .collect();
            let _ = parse_line(&line);
        }
    }
}
