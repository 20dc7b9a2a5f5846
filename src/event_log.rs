//! The event log: one readable line per event, naming the structure
//! operations it performed and their cost.
//!
//! Routing hands each event to a bounded channel and never waits; a separate
//! thread formats and prints. If the terminal cannot keep up, lines are
//! dropped (and counted) rather than slowing the chat down.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use colored::{ColoredString, Colorize};

use crate::core::{Event, Relay, Trace};
use crate::names::UserId;
use crate::output::paint;
use crate::protocol::AckStatus;

/// Lines waiting to be printed before new ones are dropped.
const BACKLOG: usize = 8192;

enum Item {
    Event(Duration, Event, Trace),
    Line(String),
    Flush(SyncSender<()>),
}

/// A handle to the printing thread. Cheap to call from the core's owner.
pub struct EventLog {
    tx: SyncSender<Item>,
    dropped: AtomicU64,
    started: Instant,
}

impl EventLog {
    /// Starts the printing thread, writing to `out`; `color` adds ANSI colours.
    /// When `width` gives one (a terminal's, asked before each burst so a
    /// resized or split window is followed), an event too long for it is
    /// printed as its summary and then one indented line per operation.
    pub fn spawn(
        out: Box<dyn Write + Send>,
        color: bool,
        width: fn() -> Option<usize>,
    ) -> EventLog {
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || print_loop(rx, out, color, width))
            .ok();
        EventLog {
            tx,
            dropped: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Records an event; never blocks.
    pub fn event(&self, event: Event, trace: Trace) {
        self.send(Item::Event(self.started.elapsed(), event, trace));
    }

    /// Prints a plain line (start-up, warnings); never blocks.
    pub fn line(&self, text: impl Into<String>) {
        self.send(Item::Line(text.into()));
    }

    fn send(&self, item: Item) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(item) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the output could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until everything recorded so far is printed.
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Item::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

fn print_loop(
    rx: Receiver<Item>,
    out: Box<dyn Write + Send>,
    color: bool,
    width: fn() -> Option<usize>,
) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(item) = rx.recv() {
        let width = width();
        let mut next = Some(item);
        // Write everything already waiting, then flush once: one syscall per burst.
        while let Some(item) = next {
            match item {
                Item::Event(at, event, trace) => {
                    let _ = writeln!(out, "{}", lay_out(at, &event, &trace, color, width));
                }
                Item::Line(text) => {
                    let _ = writeln!(out, "{}", crate::terminal::wrap_lines(&text, width));
                }
                Item::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

fn status(s: AckStatus) -> &'static str {
    match s {
        AckStatus::Delivered => "delivered",
        AckStatus::Queued => "queued",
        AckStatus::Sent => "sent (nobody else in the group)",
        AckStatus::Ok => "ok",
    }
}

/// The first words of a line: what happened, in the domain's terms.
pub fn summary(event: &Event) -> String {
    match event {
        Event::Connected { .. } => connected(event),
        Event::Disconnected {
            user,
            conn,
            devices,
            requeued,
            notified,
        } => {
            let mut s = format!("- {user} disconnected (conn {conn}, {devices} device(s) left)");
            if *devices == 0 {
                s += &format!(", offline: told {notified} connection(s)");
            }
            if *requeued > 0 {
                s += &format!(", {requeued} unsent message(s) back in the offline deque");
            }
            s
        }
        Event::AlreadyGone { user, conn } => format!("- {user} conn {conn} already closed"),
        Event::Received {
            user, upto: None, ..
        } => {
            format!("{user} sent `received` on a connection that did not resume: nothing is held for it, nothing to do")
        }
        Event::Received {
            user,
            upto: Some(upto),
            released,
            receipts,
        } => {
            let mut s = format!(
                "{user} confirmed up to message {upto}: released {released} from the window"
            );
            if *receipts > 0 {
                s += &format!(", {receipts} receipt(s) to senders");
            }
            s
        }
        Event::Message {
            from,
            to,
            id,
            status: st,
            blocked,
            held,
        } => {
            if *blocked {
                format!(
                    "{from} -> {to} (message {id}): {to} blocks {from}: dropped; {from} is told {}",
                    status(*st)
                )
            } else if *held {
                // The seed's deque, used as a window: why a live message is pushed too.
                format!(
                    "{from} -> {to} (message {id}): delivered, and kept at the back of {to}'s window (the offline deque, which also holds what {to}'s client has not confirmed)"
                )
            } else {
                format!("{from} -> {to} (message {id}): {}", status(*st))
            }
        }
        Event::GroupMessage { .. } => group_message(event),
        Event::Joined {
            user,
            group,
            members,
        } => format!("{user} joined #{group} ({members} member(s))"),
        Event::Left {
            user,
            group,
            was_member,
        } => {
            if *was_member {
                format!("{user} left #{group}")
            } else {
                format!("{user} left #{group} (was not a member: nothing to do)")
            }
        }
        Event::Blocked { by, whom } => format!("{by} blocks {whom}"),
        Event::Unblocked { by, whom } => format!("{by} unblocks {whom}"),
        Event::Who { user, online } => format!("{user} asked who is online ({online})"),
        Event::Ping { user } => format!("{user} ping"),
        Event::Refused { user, code, detail } => {
            format!("{user} refused {code}: {detail}")
        }
        Event::Shutdown { connections } => {
            format!("shutting down: closing {connections} connection(s) with 1001")
        }
        Event::PresenceDiff(diff) => format!(
            "~ presence diff of {} change(s) ({}; {}), built once and sent to {} batched connection(s)",
            diff.online + diff.offline,
            some_of(diff.online, "online", &diff.first_online),
            some_of(diff.offline, "offline", &diff.first_offline),
            diff.connections,
        ),
        Event::NodeLost { .. } | Event::Relayed { .. } => cluster_summary(event),
    }
}

/// `2 online: alice, bob`, or `12 online: ann, ..., hal and 4 more`, or `0 offline`.
fn some_of(count: usize, side: &str, first: &[UserId]) -> String {
    if count == 0 {
        return format!("0 {side}");
    }
    let names: Vec<&str> = first.iter().map(|u| u.as_str()).collect();
    let more = count.saturating_sub(first.len());
    match more {
        0 => format!("{count} {side}: {}", names.join(", ")),
        _ => format!("{count} {side}: {} and {more} more", names.join(", ")),
    }
}

/// A connect: the flush (FIFO for v1, the held window for a resume) and
/// whom the `online` went to. `summary` calls it with that event only.
fn connected(event: &Event) -> String {
    let Event::Connected {
        user,
        conn,
        devices,
        flushed,
        notified,
        resume,
        released,
    } = event
    else {
        return String::new();
    };
    let mut s = format!("+ {user} connected (conn {conn}, {devices} device(s) now)");
    match resume {
        None if *flushed > 0 => {
            s += &format!(", flushed {flushed} queued message(s) FIFO");
        }
        None => {}
        Some(from) => {
            s += &format!(", resuming after message {from}");
            if *released > 0 {
                s += &format!(": popped {released} it confirms from the front of its window");
            }
            if *flushed > 0 {
                s += &format!(
                    ", flush: re-sent {flushed} message(s) from the front of the window, oldest first (each is popped from the front once confirmed)"
                );
            } else {
                s += ", nothing held to re-send";
            }
        }
    }
    if *devices == 1 {
        s += &format!(", online: told {notified} connection(s)");
    }
    s
}

/// A group message: its fan-out. `summary` calls it with that event only.
fn group_message(event: &Event) -> String {
    let Event::GroupMessage {
        from,
        group,
        id,
        status: st,
        connections,
        queued,
        blocked,
    } = event
    else {
        return String::new();
    };
    let mut s = format!(
        "{from} -> #{group} (message {id}): {}, {connections} connection(s), {queued} queued",
        status(*st)
    );
    if *blocked > 0 {
        s += &format!(", {blocked} member(s) block {from}: skipped");
    }
    s
}

/// What only a cluster node logs: a dead node swept, a frame through Redis.
fn cluster_summary(event: &Event) -> String {
    match event {
        Event::NodeLost {
            node,
            offline,
            notified,
        } => {
            let names: Vec<&str> = offline.iter().map(|u| u.as_str()).collect();
            format!(
                "! node {node} missed its heartbeat: swept its devices; offline: {} (told {notified} connection(s))",
                if names.is_empty() { "nobody".to_string() } else { names.join(", ") }
            )
        }
        Event::Relayed {
            user,
            what,
            connections,
            requeued,
        } => {
            let mut s = match what {
                Relay::ToUser => format!("<< through Redis, for {user}: to {connections} connection(s) here"),
                Relay::ToEveryone => format!("<< through Redis, presence of {user}: to {connections} connection(s) here (none if already shown)"),
                Relay::TakeQueue => format!("<< through Redis: {user}'s queue grew while online here: flushed to {connections} connection(s)"),
            };
            if *requeued > 0 {
                s += &format!(", {requeued} put back in {user}'s queue (no device here any more)");
            }
            s
        }
        _ => String::new(),
    }
}

/// One full line: time, summary, then each structure operation with its Big-O.
pub fn format_event(at: Duration, event: &Event, trace: &Trace, color: bool) -> String {
    lay_out(at, event, trace, color, None)
}

/// The event as one line when it fits `width` (or there is no width), else
/// as its summary and then one operation per line, indented under it, so a
/// projector never wraps an operation in the middle.
pub fn lay_out(
    at: Duration,
    event: &Event,
    trace: &Trace,
    color: bool,
    width: Option<usize>,
) -> String {
    let painter: fn(&str) -> ColoredString = match event {
        Event::Connected { .. } => |s| s.green(),
        Event::Disconnected { .. } | Event::AlreadyGone { .. } => |s| s.yellow(),
        Event::Message { .. } => |s| s.cyan(),
        Event::GroupMessage { .. } => |s| s.magenta(),
        Event::Refused { .. } => |s| s.red(),
        _ => |s| s.normal(),
    };
    let time = format!("[{:>9.3}s]", at.as_secs_f64());
    let summary = summary(event);
    let mut ops: Vec<String> = trace.records().iter().map(|r| r.to_string()).collect();
    if trace.omitted() > 0 {
        ops.push(format!("... and {} more operation(s)", trace.omitted()));
    }
    let one_line = time.len()
        + 1
        + summary.chars().count()
        + ops.iter().map(|o| 3 + o.chars().count()).sum::<usize>();
    let hanging = " ".repeat(time.len() + 1);
    let summary = match width {
        // A summary longer than the screen wraps at spaces, under itself.
        Some(w) if time.len() + 1 + summary.chars().count() > w => {
            crate::terminal::wrap(&summary, w.saturating_sub(hanging.len()).max(20))
                .iter()
                .map(|part| paint(part.clone(), color, painter))
                .collect::<Vec<_>>()
                .join(&format!("\n{hanging}"))
        }
        _ => paint(summary, color, painter),
    };
    let mut line = format!("{} {summary}", paint(time, color, |s| s.dimmed()));
    // Continuation lines start with plain spaces (never an escape code):
    // that is how `LogRing` knows they belong to the line above.
    let (separator, mark) = match width {
        Some(w) if one_line > w => (format!("\n{hanging}"), "· "),
        _ => (String::new(), " | "),
    };
    // An operation longer than the screen (a cluster's adds its Redis
    // command) wraps at spaces, under itself.
    let indent = hanging.len() + mark.chars().count();
    let room = width.map(|w| w.saturating_sub(indent).max(20));
    for op in ops {
        line += &separator;
        line += &paint(mark, color, |s| s.dimmed());
        let parts = match room {
            Some(r) if one_line > width.unwrap_or(usize::MAX) && op.chars().count() > r => {
                crate::terminal::wrap(&op, r)
            }
            _ => vec![op],
        };
        let under = format!("\n{}", " ".repeat(indent));
        let painted: Vec<String> = parts
            .into_iter()
            .map(|part| paint(part, color, |s| s.bright_blue()))
            .collect();
        line += &painted.join(&under);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Op, Structure};
    use crate::names::Name;

    /// A storm's tick names its first arrivals and says how many it left out.
    #[test]
    fn a_presence_diff_names_its_first_users_and_counts_the_rest() {
        let names = |xs: &[&str]| xs.iter().map(|x| Name::parse(x).unwrap()).collect();
        let diff = Event::PresenceDiff(crate::core::DiffSummary {
            online: 10,
            offline: 1,
            first_online: names(&["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]),
            first_offline: names(&["zed"]),
            connections: 40,
        });
        assert_eq!(
            summary(&diff),
            "~ presence diff of 11 change(s) (10 online: a1, a2, a3, a4, a5, a6, a7, a8 and 2 more; \
             1 offline: zed), built once and sent to 40 batched connection(s)"
        );
        let quiet = Event::PresenceDiff(crate::core::DiffSummary {
            online: 1,
            offline: 0,
            first_online: names(&["bo"]),
            first_offline: Vec::new(),
            connections: 1,
        });
        assert!(summary(&quiet).contains("(1 online: bo; 0 offline)"));
    }

    /// alice writes to bob, who is offline: the four operations of the seed's flow.
    fn queued_for_bob() -> (Event, Trace) {
        let bob = Name::parse("bob").unwrap();
        let alice = Name::parse("alice").unwrap();
        let mut t = Trace::new(true);
        t.record(
            Structure::BlockedUsers,
            Op::Contains,
            Some(&bob),
            Some(&alice),
            None,
        );
        t.record(
            Structure::ActiveConnections,
            Op::Get,
            Some(&bob),
            None,
            Some(0),
        );
        t.record(
            Structure::OfflineMessages,
            Op::Len,
            Some(&bob),
            None,
            Some(2),
        );
        t.record(
            Structure::OfflineMessages,
            Op::PushBack,
            Some(&bob),
            None,
            Some(3),
        );
        let e = Event::Message {
            from: alice,
            to: bob,
            id: 7,
            status: AckStatus::Queued,
            blocked: false,
            held: false,
        };
        (e, t)
    }

    #[test]
    fn a_queued_message_reads_like_the_seed() {
        let (e, t) = queued_for_bob();
        let line = format_event(Duration::from_millis(1500), &e, &t, false);
        assert_eq!(
            line,
            "[    1.500s] alice -> bob (message 7): queued \
             | blocked_users[bob].contains(alice) O(1) \
             | active_connections.get(bob) O(1), 0 devices \
             | offline_messages.len(bob) O(1), len 2 \
             | offline_messages[bob].push_back O(1)*, len 3"
        );
    }

    #[test]
    fn a_long_event_becomes_an_indented_list_of_operations_at_a_terminal_s_width() {
        let (e, t) = queued_for_bob();
        let at = Duration::from_millis(1500);
        let wide = lay_out(at, &e, &t, false, Some(250));
        assert_eq!(wide, format_event(at, &e, &t, false), "it fits: one line");
        let narrow = lay_out(at, &e, &t, false, Some(60));
        assert_eq!(
            narrow,
            "[    1.500s] alice -> bob (message 7): queued\n\
             \x20            · blocked_users[bob].contains(alice) O(1)\n\
             \x20            · active_connections.get(bob) O(1), 0 devices\n\
             \x20            · offline_messages.len(bob) O(1), len 2\n\
             \x20            · offline_messages[bob].push_back O(1)*, len 3"
        );
        assert!(narrow.lines().all(|l| l.chars().count() <= 60), "{narrow}");
        // In colour too, a continuation line starts with a space: the
        // dashboard's ring keeps an event's lines together by it.
        colored::control::set_override(true);
        let painted = lay_out(at, &e, &t, true, Some(60));
        assert!(painted.contains('\x1b'), "{painted:?}");
        let mut ring = LogRing::default();
        writeln!(ring, "{painted}").unwrap();
        assert_eq!(ring.entries().0, vec![painted]);
    }

    #[test]
    fn a_cluster_s_long_operation_wraps_under_itself() {
        let (e, mut t) = queued_for_bob();
        t.via(|| "RPUSH vivachat:q:bob O(1), kept in id order by the push script".to_string());
        let at = Duration::from_millis(1500);
        let narrow = lay_out(at, &e, &t, false, Some(60));
        assert!(narrow.lines().all(|l| l.chars().count() <= 60), "{narrow}");
        let last: Vec<&str> = narrow.lines().skip(4).collect();
        assert_eq!(
            last,
            [
                "             · offline_messages[bob].push_back O(1)* ->",
                "               RPUSH vivachat:q:bob O(1), kept in id order",
                "               by the push script, len 3",
            ]
        );
    }

    #[test]
    fn printing_thread_writes_and_flushes() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink(Arc::new(Mutex::new(Vec::new())));
        let log = EventLog::spawn(Box::new(sink.clone()), false, || None);
        log.line("hello");
        log.event(
            Event::Ping {
                user: Name::parse("a").unwrap(),
            },
            Trace::new(true),
        );
        log.flush(Duration::from_secs(5));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("hello\n"), "{text}");
        assert!(text.trim_end().ends_with("a ping"), "{text}");
        assert_eq!(log.dropped(), 0);
    }
}

/// The last few events, kept in memory for `serve --dashboard`, which shows
/// them above its tables instead of scrolling them past. An event laid out
/// over several lines (its continuation lines are indented) is one entry.
#[derive(Clone, Debug, Default)]
pub struct LogRing {
    inner: std::sync::Arc<std::sync::Mutex<RingInner>>,
}

#[derive(Debug, Default)]
struct RingInner {
    entries: std::collections::VecDeque<String>,
    partial: String,
    /// Lines ever written: a change counter for the dashboard.
    written: u64,
}

/// Entries a [`LogRing`] keeps.
const RING_ENTRIES: usize = 10;

impl LogRing {
    /// The kept entries, oldest first, and how many lines were ever written.
    pub fn entries(&self) -> (Vec<String>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.entries.iter().cloned().collect(), inner.written)
    }
}

impl Write for LogRing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.partial.push_str(&String::from_utf8_lossy(buf));
        while let Some(end) = inner.partial.find('\n') {
            let line: String = inner.partial.drain(..=end).collect();
            let line = line.trim_end();
            match inner.entries.back_mut() {
                Some(last) if line.starts_with(' ') => {
                    last.push('\n');
                    last.push_str(line);
                }
                _ => inner.entries.push_back(line.to_string()),
            }
            if inner.entries.len() > RING_ENTRIES {
                inner.entries.pop_front();
            }
            inner.written += 1;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_and_counts_all_lines() {
        let mut ring = LogRing::default();
        for i in 0..15 {
            writeln!(ring, "line {i}").unwrap();
        }
        writeln!(ring, "   · an operation of line 14").unwrap();
        write!(ring, "partial").unwrap();
        let (entries, written) = ring.entries();
        assert_eq!(written, 16);
        assert_eq!(entries.len(), RING_ENTRIES);
        assert_eq!(entries.first().unwrap(), "line 5");
        assert_eq!(
            entries.last().unwrap(),
            "line 14\n   · an operation of line 14"
        );
    }
}
