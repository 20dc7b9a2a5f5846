//! `vivachat client`: an interactive terminal chat client, also scriptable.
//!
//! - `input.rs`: parsing what the user types (a plain function).
//! - `display.rs`: one line per frame received, plain or coloured.
//! - here: the connection (with reconnects and backoff), the prompt, and the
//!   scripted and one-shot (`--send`) modes.

pub mod display;
pub mod input;
pub mod position;
pub mod token;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::names::Name;
use crate::protocol::{parse_server_frame, Request, ServerFrame, Target};
use display::{frame_line, notice, unknown_line, Sent, Style};
use input::{parse_line, Command, HELP};
use position::{Position, CONFIRM_EVERY};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The first wait after a lost connection; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, after the input ends, to wait for outstanding acks.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// What `client` was asked to do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub name: Name,
    /// `ws://` or `wss://` base URL (already rewritten from http(s)).
    pub url: String,
    pub json: bool,
    pub color: bool,
    pub linger: Option<Duration>,
    /// The name's token, sent as `?token=` on every connection.
    pub token: Option<String>,
    /// Where the token was saved just now, if it was: announced once the
    /// server accepts it, taken back if the first connection fails.
    pub fresh_token: Option<std::path::PathBuf>,
    /// Resume (v1.1, the default): the server holds what it sends until this
    /// client confirms it, so a crash or a lost connection loses nothing.
    pub resume: bool,
}

/// `http(s)://` becomes `ws(s)://`; a bare `host:port` gets `ws://`. Returns the base URL.
pub fn base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) = raw.split_once("://").unwrap_or(("ws", raw));
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            bail!("{raw}: unknown scheme {other:?}; use ws://HOST:PORT or wss://HOST (a tunnel)")
        }
    };
    if rest.is_empty() {
        bail!("{raw}: no host; use ws://HOST:PORT");
    }
    // A URL copied from the server's banner may already end in /ws/NAME.
    let rest = match rest.find("/ws/") {
        Some(i) => &rest[..i],
        None => rest,
    };
    Ok(format!("{scheme}://{rest}"))
}

/// Everything but unreserved characters is escaped in a query value (a
/// `--token` may hold any character).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A presence diff is shared by every batched connection, so it may name
/// this client itself, which is not news here: that name is left out, and a
/// diff left empty is not shown at all (None).
fn not_about(frame: ServerFrame, me: &Name) -> Option<ServerFrame> {
    match frame {
        ServerFrame::PresenceDiff {
            mut online,
            mut offline,
        } => {
            online.retain(|u| u != me);
            offline.retain(|u| u != me);
            (!online.is_empty() || !offline.is_empty())
                .then_some(ServerFrame::PresenceDiff { online, offline })
        }
        other => Some(other),
    }
}

fn user_url(options: &ClientOptions, position: Option<&Position>) -> String {
    let (base, name) = (&options.url, &options.name);
    // v1.2: who came and went, at most one frame a tick (a server without
    // it ignores the word and sends a frame per change, shown the same way).
    let mut query: Vec<String> = vec!["presence=batched".to_string()];
    if let Some(token) = &options.token {
        let token = percent_encoding::utf8_percent_encode(token, QUERY_VALUE);
        query.push(format!("token={token}"));
    }
    if let Some(position) = position {
        query.push(position.query());
    }
    format!("{base}/ws/{name}?{}", query.join("&"))
}

/// Where this client resumes from, when it resumes.
fn position_of(options: &ClientOptions) -> Option<Position> {
    options
        .resume
        .then(|| Position::load(&options.url, options.name.as_str()))
}

/// The first connection: a new token is announced once the server accepted
/// it (the upgrade succeeded) and taken back if it did not.
async fn connect_first(options: &ClientOptions, position: Option<&Position>) -> anyhow::Result<Ws> {
    let result = connect(&user_url(options, position)).await;
    if let (Some(path), Some(token)) = (&options.fresh_token, &options.token) {
        match &result {
            Ok(_) => token::announce(&options.url, &options.name, path),
            Err(_) => token::forget(&options.url, &options.name, token),
        }
    }
    result
}

async fn connect(full_url: &str) -> anyhow::Result<Ws> {
    // Messages name the address without the token, which must never be printed.
    let url = full_url.split('?').next().unwrap_or(full_url);
    // Nagle off: a typed line should leave at once.
    let attempt = tokio_tungstenite::connect_async_with_config(full_url, None, true);
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {url} within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default();
                anyhow!(
                    "{url} refused the connection (HTTP {}): {body}",
                    resp.status().as_u16()
                )
            }
            // Nothing listens there: the server is not running, or the address is wrong.
            tokio_tungstenite::tungstenite::Error::Io(io) => anyhow!(
                "cannot connect to {url}: {io}. Is `vivachat serve` running there? (check --url)"
            ),
            other => anyhow!("cannot connect to {url}: {other}"),
        })?;
    Ok(ws)
}

/// Installs the TLS provider once, so `wss://` works (rustls with ring and bundled roots).
fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How an ack names the message it answers: `to bob: "see you at 3"`.
fn sent_label(target: &Target, text: &str) -> String {
    const PREVIEW: usize = 30;
    let mut preview: String = text.chars().take(PREVIEW).collect();
    if text.chars().count() > PREVIEW {
        preview.push('…');
    }
    format!("to {target}: {preview:?}")
}

/// The `ref` an ack or error carries back (this client sends numbers).
fn frame_ref(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Ack { reference, .. } => reference.as_ref()?.as_u64(),
        ServerFrame::Error(error) => error.reference.as_ref()?.as_u64(),
        _ => None,
    }
}

/// The commands, as `client --help` lists them.
pub fn help_text() -> String {
    let mut text = String::from("Commands at the prompt (or one per line on stdin):\n");
    for (usage, what) in HELP {
        text += &format!("  {usage:<22} {what}\n");
    }
    text += "\nExamples:\n  vivachat client alice\n  vivachat client bob --url ws://192.168.1.20:8000\n  \
             vivachat client alice --send bob \"hello\"\n  printf '/join g1\\n#g1 hi all\\n' | vivachat client carol";
    text
}

/// `vivachat client NAME --send TARGET TEXT`: one message, its ack, and out.
/// Messages flushed to NAME on connect are printed, not lost.
pub async fn send_once(options: &ClientOptions, to: &str, text: &str) -> anyhow::Result<()> {
    init_tls();
    let style = Style {
        color: options.color,
    };
    let target =
        input::target(to, "--send bob TEXT or --send '#g1' TEXT").map_err(|u| anyhow!(u.0))?;
    let mut position = position_of(options);
    let mut ws = connect_first(options, position.as_ref()).await?;
    let request = Request::chat(&target, text).to_json(Some(1));
    ws.send(Message::text(request)).await?;
    let sent = Sent {
        label: sent_label(&target, text),
    };
    let deadline = Instant::now() + ACK_WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "no acknowledgement from the server within {} s",
                    ACK_WAIT.as_secs()
                )
            })?;
        let text = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => bail!("the server closed the connection: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("connection failed: {e}"),
            None => bail!("the server closed the connection"),
        };
        let frame = match parse_server_frame(&text)
            .ok()
            .map(|f| not_about(f, &options.name))
        {
            Some(None) => continue,
            Some(Some(frame)) => Some(frame),
            None => None,
        };
        if let (Some(position), Some(frame)) = (position.as_mut(), &frame) {
            if !position.shows(frame) {
                continue;
            }
        }
        if matches!(frame, Some(ServerFrame::Welcome { .. })) && !options.json {
            continue;
        }
        let answer = frame.as_ref().and_then(frame_ref) == Some(1);
        let line = match &frame {
            _ if options.json => text.to_string(),
            Some(frame) => frame_line(frame, answer.then_some(&sent), None, style),
            None => unknown_line(&text),
        };
        if answer && matches!(frame, Some(ServerFrame::Error(_))) {
            let _ = ws.close(None).await;
            bail!("{line}");
        }
        println!("{line}");
        if answer {
            // What was printed is confirmed, so it is not sent again.
            if let Some(id) = position.as_mut().and_then(Position::confirm) {
                let _ = ws
                    .send(Message::text(Request::Received { id }.to_json(None)))
                    .await;
            }
            let _ = ws.close(None).await;
            return Ok(());
        }
    }
}

/// Where lines go: stdout, or above the prompt of the line editor.
enum Printer {
    Stdout,
    Editor(Box<dyn rustyline::ExternalPrinter + Send>),
}

impl Printer {
    fn line(&mut self, text: String) {
        match self {
            Printer::Stdout => println!("{text}"),
            Printer::Editor(p) => {
                // A person reads this in a terminal (often a narrow pane):
                // wrap at spaces, never in the middle of a word.
                let text = crate::terminal::wrap_lines(&text, crate::terminal::output_width());
                if p.print(format!("{text}\n")).is_err() {
                    println!("{text}");
                }
            }
        }
    }
}

enum Event {
    Frame(u64, String),
    Lost(u64, String),
    Connected(u64, Box<Ws>),
    ConnectFailed(String),
}

struct Session {
    options: ClientOptions,
    style: Style,
    out: Printer,
    conversation: Option<Target>,
    next_ref: u64,
    pending: HashMap<u64, (Sent, Instant)>,
    sink: Option<SplitSink<Ws, Message>>,
    /// Bumped on every new connection, so events of an old one are ignored.
    generation: u64,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    connecting: bool,
    events: mpsc::Sender<Event>,
    /// Resume: where this client is, and when the next `received` is due.
    position: Option<Position>,
    confirm_at: Option<Instant>,
    /// What each recent message this client sent was, by id, so its receipt
    /// (the second tick) can say which message it confirms.
    sent_ids: std::collections::BTreeMap<u64, Sent>,
}

/// Messages whose receipt can still be labelled; older ones get a bare id.
const LABELLED_RECEIPTS: usize = 1000;

impl Session {
    fn notice(&mut self, text: &str) {
        let line = notice(text, self.style);
        if self.options.json {
            eprintln!("{line}");
        } else {
            self.out.line(line);
        }
    }

    fn prompt(&self) -> String {
        match &self.conversation {
            Some(t) => format!("{}→{t}> ", self.options.name),
            None => format!("{}> ", self.options.name),
        }
    }

    fn start_connect(&mut self) {
        self.connecting = true;
        self.reconnect_at = None;
        // Resumes from the last message shown, not the last one saved.
        let url = user_url(&self.options, self.position.as_ref());
        let events = self.events.clone();
        let generation = self.generation + 1;
        tokio::spawn(async move {
            let event = match connect(&url).await {
                Ok(ws) => Event::Connected(generation, Box::new(ws)),
                Err(e) => Event::ConnectFailed(format!("{e:#}")),
            };
            let _ = events.send(event).await;
        });
    }

    fn attach(&mut self, generation: u64, ws: Ws) {
        self.generation = generation;
        self.connecting = false;
        self.backoff = FIRST_BACKOFF;
        let (sink, mut stream) = ws.split();
        self.sink = Some(sink);
        let events = self.events.clone();
        tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if events
                            .send(Event::Frame(generation, t.to_string()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        break match f {
                            Some(f) => {
                                format!("closed by the server ({} {})", u16::from(f.code), f.reason)
                            }
                            None => "closed by the server".into(),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection ended".into(),
                }
            };
            let _ = events.send(Event::Lost(generation, why)).await;
        });
    }

    fn schedule_reconnect(&mut self) {
        self.reconnect_at = Some(Instant::now() + self.backoff);
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Frame(g, text) if g == self.generation => self.on_frame(&text),
            Event::Lost(g, why) if g == self.generation && self.sink.is_some() => {
                self.sink = None;
                let unanswered = self.pending.len();
                self.pending.clear();
                let mut msg = format!(
                    "connection lost: {why}; reconnecting in {} s",
                    self.backoff.as_secs()
                );
                if unanswered > 0 {
                    msg += &format!(
                        " ({unanswered} request(s) got no answer: send them again if needed)"
                    );
                }
                self.notice(&msg);
                self.schedule_reconnect();
            }
            Event::Connected(g, ws) => {
                let again = self.generation > 0;
                self.attach(g, *ws);
                if again {
                    self.notice("reconnected");
                }
            }
            Event::ConnectFailed(why) => {
                self.connecting = false;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                let msg = format!(
                    "still disconnected ({why}); next try in {} s",
                    self.backoff.as_secs()
                );
                self.notice(&msg);
                self.schedule_reconnect();
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, text: &str) {
        let Ok(frame) = parse_server_frame(text) else {
            self.out.line(match self.options.json {
                true => text.to_string(),
                false => unknown_line(text),
            });
            return;
        };
        if let Some(position) = self.position.as_mut() {
            // A message already shown (re-sent after a reconnect) is skipped.
            if !position.shows(&frame) {
                return;
            }
            if position.batch_full() {
                self.confirm_at = Some(Instant::now());
            } else if position.pending() && self.confirm_at.is_none() {
                self.confirm_at = Some(Instant::now() + CONFIRM_EVERY);
            }
        }
        // Acks and errors carry our `ref`; `who` and `pong` do not (the
        // contract's exact shapes), but they answer requests in order.
        let answered = frame_ref(&frame)
            .and_then(|r| self.pending.remove(&r))
            .or_else(|| match frame {
                ServerFrame::Pong => self.take_oldest("ping"),
                ServerFrame::Who { .. } => self.take_oldest("who"),
                _ => None,
            });
        if self.options.json {
            self.out.line(text.to_string());
            return;
        }
        let rtt = match (&answered, &frame) {
            (Some((_, at)), ServerFrame::Pong) => Some(at.elapsed()),
            _ => None,
        };
        let about = match (&frame, &answered) {
            (ServerFrame::Receipt { id, .. }, _) => self.sent_ids.get(id).cloned(),
            (ServerFrame::Ack { id: Some(id), .. }, Some((sent, _))) => {
                self.sent_ids.insert(*id, sent.clone());
                if self.sent_ids.len() > LABELLED_RECEIPTS {
                    self.sent_ids.pop_first();
                }
                None
            }
            _ => None,
        };
        let sent = answered.as_ref().map(|(s, _)| s).or(about.as_ref());
        let Some(frame) = not_about(frame, &self.options.name) else {
            return;
        };
        let line = frame_line(&frame, sent, rtt, self.style);
        self.out.line(line);
    }

    /// The oldest outstanding request with this label.
    fn take_oldest(&mut self, label: &str) -> Option<(Sent, Instant)> {
        let oldest = self
            .pending
            .iter()
            .filter(|(_, (sent, _))| sent.label == label)
            .map(|(r, _)| *r)
            .min()?;
        self.pending.remove(&oldest)
    }

    async fn request(&mut self, request: Request, label: String) {
        let Some(sink) = self.sink.as_mut() else {
            let when = self
                .reconnect_at
                .map(|at| {
                    format!(
                        "next try in {} s",
                        at.saturating_duration_since(Instant::now()).as_secs() + 1
                    )
                })
                .unwrap_or_else(|| "trying now".into());
            self.notice(&format!("not connected ({when}): not sent"));
            return;
        };
        self.next_ref += 1;
        let r = self.next_ref;
        self.pending.insert(r, (Sent { label }, Instant::now()));
        if let Err(e) = sink.send(Message::text(request.to_json(Some(r)))).await {
            self.pending.remove(&r);
            self.notice(&format!("could not send: {e}"));
        }
    }

    /// Carries out one input line; returns false to quit.
    async fn on_line(&mut self, line: &str) -> bool {
        let command = match parse_line(line) {
            Ok(c) => c,
            Err(usage) => {
                self.notice(&usage.0);
                return true;
            }
        };
        match command {
            Command::Nothing => {}
            Command::Quit => return false,
            Command::Help => {
                for (usage, what) in HELP {
                    self.out.line(format!("  {usage:<22} {what}"));
                }
            }
            Command::Converse(target) => {
                self.notice(&format!("talking to {target}: plain text goes there now"));
                self.conversation = Some(target);
            }
            Command::Say(text) => match self.conversation.clone() {
                Some(target) => self.send_to(target, text).await,
                None => {
                    self.notice("no conversation yet: /to bob (or /to #g1) first, or @bob TEXT")
                }
            },
            Command::SendTo(target, text) => self.send_to(target, text).await,
            Command::Join(g) => {
                let label = format!("join #{g}");
                self.request(Request::GroupJoin { group: g }, label).await
            }
            Command::Leave(g) => {
                let label = format!("leave #{g}");
                self.request(Request::GroupLeave { group: g }, label).await
            }
            Command::Block(u) => {
                let label = format!("block {u}");
                self.request(Request::Block { user: u }, label).await
            }
            Command::Unblock(u) => {
                let label = format!("unblock {u}");
                self.request(Request::Unblock { user: u }, label).await
            }
            Command::Who => self.request(Request::Who, "who".into()).await,
            Command::Ping => self.request(Request::Ping, "ping".into()).await,
        }
        true
    }

    async fn send_to(&mut self, target: Target, text: String) {
        let label = sent_label(&target, &text);
        // A resuming client asks for the second tick; a v1 one (--no-resume) does not.
        let receipt = self.position.is_some();
        let request = Request::chat_with_receipt(&target, &text, receipt);
        self.request(request, label).await;
    }

    /// Sends the `received` that is due: the highest id shown so far.
    async fn confirm(&mut self) {
        self.confirm_at = None;
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if let Some(id) = self.position.as_mut().and_then(Position::confirm) {
            let _ = sink
                .send(Message::text(Request::Received { id }.to_json(None)))
                .await;
        }
    }

    async fn close(&mut self) {
        self.confirm().await;
        if let Some(mut sink) = self.sink.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
    }
}

/// Where input lines arrive (`None` at the end), how to hand the line editor
/// its next prompt (interactive only), and where to print.
struct Input {
    lines: mpsc::Receiver<Option<String>>,
    prompts: Option<std::sync::mpsc::Sender<String>>,
    printer: Printer,
}

/// Reads input lines: from the line editor on a terminal, else from stdin.
fn start_input(interactive: bool) -> anyhow::Result<Input> {
    let (lines_tx, lines_rx) = mpsc::channel(64);
    if !interactive {
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if lines_tx.send(Some(line)).await.is_err() {
                    return;
                }
            }
            let _ = lines_tx.send(None).await;
        });
        return Ok(Input {
            lines: lines_rx,
            prompts: None,
            printer: Printer::Stdout,
        });
    }
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let printer = editor
        .create_external_printer()
        .context("cannot print above the prompt")?;
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // One line at a time: the next prompt (which shows the conversation)
        // arrives only after the previous line was carried out.
        while let Ok(prompt) = prompt_rx.recv() {
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if lines_tx.blocking_send(Some(line)).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    // Ctrl-D, Ctrl-C, or the terminal went away: leave.
                    let _ = lines_tx.blocking_send(None);
                    return;
                }
            }
        }
    });
    Ok(Input {
        lines: lines_rx,
        prompts: Some(prompt_tx),
        printer: Printer::Editor(Box::new(printer)),
    })
}

/// The interactive (or scripted, when stdin is not a terminal) client.
pub async fn run(options: ClientOptions) -> anyhow::Result<()> {
    init_tls();
    let interactive =
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !options.json;
    // Connect first, so a wrong URL or name is one clear error.
    let position = position_of(&options);
    let first = connect_first(&options, position.as_ref()).await?;
    let (events_tx, mut events) = mpsc::channel(1024);
    let Input {
        mut lines,
        prompts: prompt_tx,
        printer: out,
    } = start_input(interactive)?;
    let mut session = Session {
        style: Style {
            color: options.color,
        },
        options,
        out,
        conversation: None,
        next_ref: 0,
        pending: HashMap::new(),
        sink: None,
        generation: 0,
        backoff: FIRST_BACKOFF,
        reconnect_at: None,
        connecting: false,
        events: events_tx,
        position,
        confirm_at: None,
        sent_ids: Default::default(),
    };
    session.attach(1, first);
    if interactive {
        session
            .notice("type /help for commands, /to NAME to start a conversation, Ctrl-D to leave");
    }
    let ask_for_line = |session: &Session| {
        if let Some(tx) = &prompt_tx {
            let _ = tx.send(session.prompt());
        }
    };
    ask_for_line(&session);
    let mut input_done: Option<Instant> = None;
    loop {
        // After the input ends: wait for outstanding acks (bounded), then linger.
        let exit_at = input_done.map(|at| {
            if !session.pending.is_empty() {
                at + ACK_WAIT
            } else {
                at + session.options.linger.unwrap_or_default()
            }
        });
        tokio::select! {
            Some(event) = events.recv() => {
                session.on_event(event).await;
                // While frames pour in (a long flush) the timer branch may
                // never be picked: a due confirmation goes out here.
                if session.confirm_at.is_some_and(|at| at <= Instant::now()) {
                    session.confirm().await;
                }
            }
            line = lines.recv(), if input_done.is_none() => match line.flatten() {
                Some(line) => {
                    if !session.on_line(&line).await {
                        break;
                    }
                    ask_for_line(&session);
                }
                None if interactive => break,
                None => input_done = Some(Instant::now()),
            },
            () = tokio::time::sleep_until(session.reconnect_at.unwrap_or_else(Instant::now)),
                if session.reconnect_at.is_some() && !session.connecting => session.start_connect(),
            () = tokio::time::sleep_until(session.confirm_at.unwrap_or_else(Instant::now)),
                if session.confirm_at.is_some() => session.confirm().await,
            () = tokio::time::sleep_until(exit_at.unwrap_or_else(Instant::now)), if exit_at.is_some() => {
                if !session.pending.is_empty() && input_done.is_some_and(|at| at.elapsed() >= ACK_WAIT) {
                    let n = session.pending.len();
                    session.close().await;
                    bail!("{n} request(s) were never acknowledged");
                }
                if session.pending.is_empty() {
                    break;
                }
            }
        }
    }
    session.close().await;
    Ok(())
}
