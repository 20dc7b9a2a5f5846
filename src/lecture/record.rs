//! A recording: every input the core received, in the order its owner
//! applied them, one JSON line each after a header (`serve --record FILE`).
//!
//! The core is deterministic and reads no clock, so these inputs are all it
//! needs to go through exactly the same states again (`replay.rs`). What the
//! shell decided on its own (which frames a socket never got, whether the
//! disk could be written) is recorded as the input it became.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::{ConnHandle, ConnId, CoreConfig, DurableState};
use crate::names::{GroupId, UserId};
use crate::protocol::{ErrorCode, Message};

/// The first line's `vivachat_record`: bumped when the format changes.
pub const FORMAT: u32 = 1;

/// The first line: what a replay must set up before the first input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub vivachat_record: u32,
    /// The version of vivachat that recorded it.
    pub version: String,
    /// The run's epoch, which a resume position is checked against.
    pub epoch: String,
    /// The core's limits in force (`usize::MAX` is "none").
    pub limits: CoreConfig,
    /// With `--data`: what the server loaded from its data file before the
    /// first input (a replay starts from it, not from empty structures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
    /// On a cluster: the node that recorded it (each node records its own inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A message as a recording keeps it: its wire frame, and whether the
/// sender asked for a receipt (which the wire frame never shows, but the
/// core acts on when the copy is confirmed).
#[derive(Debug, Clone, PartialEq)]
pub struct Kept(pub Message);

#[derive(Serialize)]
struct KeptOut<'a> {
    #[serde(flatten)]
    message: &'a Message,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    receipt: bool,
}

#[derive(Deserialize)]
struct KeptIn {
    #[serde(flatten)]
    message: Message,
    #[serde(default)]
    receipt: bool,
}

impl Serialize for Kept {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        KeptOut {
            message: &self.0,
            receipt: self.0.receipt,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Kept {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kept, D::Error> {
        let KeptIn {
            mut message,
            receipt,
        } = KeptIn::deserialize(d)?;
        message.receipt = receipt;
        Ok(Kept(message))
    }
}

fn kept(messages: &[Message]) -> Vec<Kept> {
    messages.iter().cloned().map(Kept).collect()
}

fn messages(kept: &[Kept]) -> Vec<Message> {
    kept.iter().map(|k| k.0.clone()).collect()
}

/// [`DurableState`] as a recording writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub queues: Vec<(UserId, Vec<Kept>)>,
    pub groups: Vec<(GroupId, Vec<UserId>)>,
    pub blocks: Vec<(UserId, Vec<UserId>)>,
    pub released: Vec<(UserId, u64)>,
    pub next_message_id: u64,
}

impl From<&DurableState> for Restored {
    fn from(s: &DurableState) -> Restored {
        Restored {
            queues: s.queues.iter().map(|(u, q)| (u.clone(), kept(q))).collect(),
            groups: s.groups.clone(),
            blocks: s.blocks.clone(),
            released: s.released.clone(),
            next_message_id: s.next_message_id,
        }
    }
}

impl Restored {
    pub fn durable_state(&self, epoch: &str) -> DurableState {
        DurableState {
            queues: self
                .queues
                .iter()
                .map(|(u, q)| (u.clone(), messages(q)))
                .collect(),
            groups: self.groups.clone(),
            blocks: self.blocks.clone(),
            released: self.released.clone(),
            next_message_id: self.next_message_id,
            epoch: Some(epoch.to_string()),
        }
    }
}

/// One input with the wall-clock time (Unix ms) its owner applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub t: u64,
    #[serde(flatten)]
    pub input: Recorded,
}

/// Every call the shell makes into the core's rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Recorded {
    /// A device connected (`resume`: the position it resumed from, v1.1).
    Connect {
        user: UserId,
        conn: ConnId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// v1.2 `?presence=batched`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batched: bool,
    },
    /// A request, as the client's JSON frame (its `ref` left out: it is only
    /// echoed, and changes nothing).
    Request {
        user: UserId,
        conn: ConnId,
        frame: Frame,
    },
    /// A frame refused before routing (bad JSON, the rate limit).
    Refuse {
        user: UserId,
        conn: ConnId,
        code: ErrorCode,
        detail: String,
    },
    /// A device closed; `unsent` are the chat messages routed to it that its
    /// socket never got (they go back to the queue if it was the last device).
    Close {
        user: UserId,
        conn: ConnId,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unsent: Vec<Kept>,
    },
    /// The socket took the last of its v1 flush: the budget lets go of it.
    Flushed { conn: ConnId },
    /// v1.2's presence tick (recorded when it had something to do).
    PresenceTick,
    /// The name was claimed: its devices are looked up, to close those without the token.
    Claimed { user: UserId },
    /// Every connection was listed (shutdown, or an eviction for memory).
    AllConnections,
    /// The data file stopped (or started again) being writable.
    Disk {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unavailable: Option<String>,
    },
    /// Cluster: what another node routed here. It acted on the structures in
    /// Redis, which one node's inputs do not hold: a replay shows it and skips it.
    Relayed { summary: String },
}

impl Recorded {
    /// A close, with the messages its socket never got.
    pub fn close(user: &UserId, conn: ConnId, unsent: &[Message]) -> Recorded {
        Recorded::Close {
            user: user.clone(),
            conn,
            unsent: kept(unsent),
        }
    }

    /// The messages a recorded close hands back to the core.
    pub fn unsent(unsent: &[Kept]) -> Vec<Message> {
        messages(unsent)
    }

    /// The request frame of `request`, as recorded.
    pub fn request(user: &UserId, conn: ConnId, request: &crate::protocol::Request) -> Recorded {
        let json = request.to_json(None);
        Recorded::Request {
            user: user.clone(),
            conn,
            frame: Frame(RawValue::from_string(json).expect("to_json writes one JSON object")),
        }
    }
}

/// A request frame as the client sent it (its `ref` left out), kept as its
/// JSON text: written as is, with no tree built on the owner's path.
#[derive(Debug, Clone)]
pub struct Frame(pub Box<RawValue>);

impl Frame {
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl Serialize for Frame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Read back through a value: a tagged line is buffered by serde, which a
/// raw value cannot borrow from.
impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Frame, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        RawValue::from_string(value.to_string())
            .map(Frame)
            .map_err(serde::de::Error::custom)
    }
}

/// A recorded device, as the replay's `active_connections` holds it: its
/// id, and the position (and epoch) it resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: ConnId,
    pub resume: Option<u64>,
    pub epoch: Option<String>,
    pub batched: bool,
}

impl ConnHandle for Device {
    fn id(&self) -> ConnId {
        self.id
    }
    fn resume(&self) -> Option<u64> {
        self.resume
    }
    fn resume_epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }
    fn presence_batched(&self) -> bool {
        self.batched
    }
}

/// A whole recording, read back.
#[derive(Debug, Clone)]
pub struct Recording {
    pub header: Header,
    pub lines: Vec<Line>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read the recording {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is empty: a recording starts with a header line (serve --record FILE writes one)"
    )]
    Empty { path: PathBuf },
    #[error("{path}, line {line}: {what} ({source})")]
    Line {
        path: PathBuf,
        line: usize,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path} is a recording of format {found}; this vivachat reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path} already exists: choose another file for --record, or move it away (a recording is never overwritten)")]
    Exists { path: PathBuf },
    #[error("cannot create the recording {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Recording {
    pub fn read(path: &Path) -> Result<Recording, RecordError> {
        let read_error = |source| RecordError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut lines = std::io::BufReader::new(file).lines().enumerate();
        let Some((_, first)) = lines.next() else {
            return Err(RecordError::Empty {
                path: path.to_path_buf(),
            });
        };
        let header: Header =
            serde_json::from_str(&first.map_err(read_error)?).map_err(|source| {
                RecordError::Line {
                    path: path.to_path_buf(),
                    line: 1,
                    what: "not a recording's header",
                    source,
                }
            })?;
        if header.vivachat_record != FORMAT {
            return Err(RecordError::Format {
                path: path.to_path_buf(),
                found: header.vivachat_record,
            });
        }
        let mut inputs = Vec::new();
        for (i, line) in lines {
            let line = line.map_err(read_error)?;
            if line.trim().is_empty() {
                continue;
            }
            inputs.push(
                serde_json::from_str(&line).map_err(|source| RecordError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    what: "not a recorded input",
                    source,
                })?,
            );
        }
        Ok(Recording {
            header,
            lines: inputs,
        })
    }

    /// The recording as its file holds it.
    pub fn to_jsonl(&self) -> String {
        let mut out = serde_json::to_string(&self.header).expect("a header serialises");
        out.push('\n');
        for line in &self.lines {
            out += &serde_json::to_string(line).expect("an input serialises");
            out.push('\n');
        }
        out
    }
}

/// Bytes the writer may fall behind by before the recording stops: bounded
/// memory, and the core's owner never waits for the disk.
const BACKLOG_BYTES: usize = 64 << 20;
/// How often the writer takes what the owner appended and writes it.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// What the owner appends to and the writer takes.
#[derive(Default)]
struct Shared {
    lines: Vec<u8>,
    /// The server stopped: write what is left and end.
    finished: bool,
}

/// `serve --record FILE`: the owner appends each input, as a JSON line, to
/// a buffer as it applies it; a thread of its own takes the buffer every
/// [`WRITE_EVERY`] and writes it, so no disk I/O happens while the core is
/// held, and no thread is woken per input.
pub struct Recorder {
    path: PathBuf,
    shared: std::sync::Arc<(Mutex<Shared>, std::sync::Condvar)>,
    writer: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    /// Inputs recorded so far: `/inspect` says it, so a test knows which
    /// replay step a live snapshot is.
    recorded: AtomicU64,
    stopped: AtomicBool,
}

/// A recorder dropped without `finish` (a server that panicked) still
/// writes what it has, and its thread ends.
impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("recorded", &self.recorded())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates FILE (never over an existing one). The server writes the
    /// header ([`Recorder::begin`]) once it knows the run's epoch.
    pub fn create(path: &Path) -> Result<Recorder, RecordError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => RecordError::Exists {
                    path: path.to_path_buf(),
                },
                _ => RecordError::Create {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let shared =
            std::sync::Arc::new((Mutex::new(Shared::default()), std::sync::Condvar::new()));
        let theirs = shared.clone();
        let writer = std::thread::Builder::new()
            .name("vivachat-record".into())
            .spawn(move || {
                let (lock, wake) = &*theirs;
                let mut taken = Vec::new();
                loop {
                    let finished = {
                        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
                        if !s.finished {
                            s = wake
                                .wait_timeout(s, WRITE_EVERY)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        std::mem::swap(&mut taken, &mut s.lines);
                        s.finished
                    };
                    file.write_all(&taken)?;
                    taken.clear();
                    if finished {
                        return file.flush();
                    }
                }
            })
            .map_err(|source| RecordError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Recorder {
            path: path.to_path_buf(),
            shared,
            writer: Mutex::new(Some(writer)),
            recorded: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    /// Appends one JSON line; false if the writer fell too far behind.
    fn append(&self, value: &impl Serialize) -> bool {
        let mut s = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.finished || s.lines.len() > BACKLOG_BYTES {
            return false;
        }
        serde_json::to_writer(&mut s.lines, value).expect("a recorded line serialises");
        s.lines.push(b'\n');
        true
    }

    /// The first line: written before any input.
    pub fn begin(&self, header: &Header) {
        if !self.append(header) {
            self.stopped.store(true, Ordering::Relaxed);
        }
    }

    /// Records one input, now. Returns a line for the event log when the
    /// recording had to stop (the disk fell [`BACKLOG_BYTES`] behind):
    /// what was recorded until then is a whole recording.
    pub fn record(&self, t: u64, input: Recorded) -> Option<String> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        if self.append(&Line { t, input }) {
            self.recorded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stopped.store(true, Ordering::Relaxed);
        Some(format!(
            "! --record stopped at input {}: writing {} fell {} MiB behind; the file holds every input up to there",
            self.recorded(),
            self.path.display(),
            BACKLOG_BYTES >> 20
        ))
    }

    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is left and closes the file (at shutdown).
    pub fn finish(&self) -> std::io::Result<()> {
        {
            let (lock, wake) = &*self.shared;
            lock.lock().unwrap_or_else(|p| p.into_inner()).finished = true;
            wake.notify_one();
        }
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match writer.map(JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(std::io::Error::other("the recording's writer panicked")),
            None => Ok(()),
        }
    }
}
