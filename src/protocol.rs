//! The wire protocol (v1): what clients send, what the server answers.
//!
//! Parsing is strict and total: every text a client can send maps either to a
//! [`Request`] or to a [`RequestError`] carrying the exact error code the
//! contract (docs/protocol.md) names. Nothing here can panic on input.

use std::sync::Arc;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::names::{GroupId, Name, UserId};

/// A request from a client, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `receipt`: the sender asks to be told when the recipient's client confirms it (v1.1).
    Message {
        to: UserId,
        text: Arc<str>,
        receipt: bool,
    },
    GroupJoin {
        group: GroupId,
    },
    GroupLeave {
        group: GroupId,
    },
    GroupMessage {
        group: GroupId,
        text: Arc<str>,
        receipt: bool,
    },
    Block {
        user: UserId,
    },
    Unblock {
        user: UserId,
    },
    Who,
    Ping,
    /// v1.1 resume: this client has every message up to and including `id`,
    /// so the server may stop holding them (cumulative, like a TCP ack).
    Received {
        id: u64,
    },
}

/// The optional `ref` of a request, echoed unchanged in its reply.
pub type Ref = Option<RefValue>;

/// A `ref` exactly as the client wrote it: kept as its raw JSON text and
/// written back byte for byte, so `123456789012345678901234567890` does not
/// come back as `1.2345678901234568e29` (a parsed number would be an f64).
/// Cloning it is one atomic increment.
#[derive(Clone, Debug)]
pub struct RefValue(std::sync::Arc<RawValue>);

impl RefValue {
    /// The raw JSON text, as received.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The ref as an unsigned integer, if it is one (the client's own refs are).
    pub fn as_u64(&self) -> Option<u64> {
        self.get().parse().ok()
    }
}

impl From<Box<RawValue>> for RefValue {
    fn from(raw: Box<RawValue>) -> RefValue {
        RefValue(raw.into())
    }
}

/// A ref made from a JSON value (clients and tests; the server keeps the raw text).
impl From<Value> for RefValue {
    fn from(value: Value) -> RefValue {
        let raw = serde_json::value::to_raw_value(&value).expect("a JSON value serialises");
        RefValue::from(raw)
    }
}

impl From<u64> for RefValue {
    fn from(n: u64) -> RefValue {
        RefValue::from(Value::from(n))
    }
}

impl PartialEq for RefValue {
    fn eq(&self, other: &RefValue) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RefValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// For clients reading replies: through a `Value`, because a raw value cannot
/// pass through the buffering of an internally tagged enum (the client's refs
/// are small integers, which a `Value` keeps exactly).
impl<'de> Deserialize<'de> for RefValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RefValue, D::Error> {
        Value::deserialize(d).map(RefValue::from)
    }
}

/// A parsed request together with its `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub reference: Ref,
    pub request: Request,
}

/// The error codes of the contract, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    MissingField,
    InvalidUser,
    InvalidGroup,
    NotMember,
    InboxFull,
    TooLarge,
    RateLimited,
    LimitReached,
    /// Durable mode: the data file cannot be written now, so nothing that
    /// must be kept (a queued message, a join, a block) is accepted.
    Unavailable,
}

/// Writes an enum as its wire spelling (`not_member`, `queued`, `online`):
/// serde's `rename_all` is the one place those words are written.
fn write_wire<T: Serialize>(value: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let quoted = serde_json::to_string(value).map_err(|_| std::fmt::Error)?;
    f.write_str(quoted.trim_matches('"'))
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_wire(self, f)
    }
}

/// A request that was refused, with everything needed to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub detail: String,
    pub reference: Ref,
}

impl RequestError {
    pub fn new(code: ErrorCode, detail: impl Into<String>, reference: Ref) -> Self {
        RequestError {
            code,
            detail: detail.into(),
            reference,
        }
    }

    /// The answer to a binary frame, an empty frame, or text that is not a JSON object.
    pub fn bad_json(detail: impl Into<String>) -> Self {
        RequestError::new(ErrorCode::BadJson, detail, None)
    }
}

/// Parses one text frame. Fields are checked for presence and JSON type first,
/// then names for validity, as the contract orders it.
///
/// ```
/// use vivachat::protocol::{parse_request, ErrorCode, Request};
/// let ok = parse_request(r#"{"type":"who","ref":1}"#).unwrap();
/// assert_eq!(ok.request, Request::Who);
/// let err = parse_request(r#"{"type":"message","to":5,"text":"hi","ref":"a"}"#).unwrap_err();
/// assert_eq!(err.code, ErrorCode::MissingField);
/// assert_eq!(err.reference.unwrap().get(), r#""a""#);
/// ```
pub fn parse_request(text: &str) -> Result<Envelope, RequestError> {
    // A struct would also accept a JSON array (field by position): only objects are requests.
    if !text.trim_start().starts_with('{') {
        return Err(RequestError::bad_json(
            "frame must be a JSON object like {\"type\":\"ping\"}",
        ));
    }
    let raw: RawRequest<'_> = serde_json::from_str(text).map_err(|e| {
        RequestError::bad_json(format!(
            "frame is not a valid JSON object ({e}); send one JSON object per frame"
        ))
    })?;
    // Echoed as written, byte for byte; parsed once only to hold it to the
    // rules every field follows (no lone surrogate, serde_json's depth limit).
    let reference: Ref = match raw.reference {
        Some(r) => {
            serde_json::from_str::<Value>(r.get())
                .map_err(|e| RequestError::bad_json(format!("\"ref\" is not valid JSON ({e})")))?;
            Some(RefValue::from(r.to_owned()))
        }
        None => None,
    };
    let f = Fields {
        raw: &raw,
        reference: &reference,
    };
    let kind = f.string("type", raw.kind)?;
    let request = match &*kind {
        "message" => {
            let (to, text) = (f.string("to", raw.to)?, f.string("text", raw.text)?);
            Request::Message {
                to: f.user(&to)?,
                text: Arc::from(&*text),
                receipt: f.receipt()?,
            }
        }
        "group_join" => Request::GroupJoin {
            group: f.group(&f.string("group", raw.group)?)?,
        },
        "group_leave" => Request::GroupLeave {
            group: f.group(&f.string("group", raw.group)?)?,
        },
        "group_message" => {
            let (g, text) = (f.string("group", raw.group)?, f.string("text", raw.text)?);
            Request::GroupMessage {
                group: f.group(&g)?,
                text: Arc::from(&*text),
                receipt: f.receipt()?,
            }
        }
        "block" => Request::Block {
            user: f.user(&f.string("user", raw.user)?)?,
        },
        "unblock" => Request::Unblock {
            user: f.user(&f.string("user", raw.user)?)?,
        },
        "who" => Request::Who,
        "ping" => Request::Ping,
        "received" => Request::Received {
            id: raw
                .id
                .and_then(|v| v.get().parse::<u64>().ok())
                .ok_or_else(|| f.missing("id", "a message id, a whole number from 0 up"))?,
        },
        other => {
            return Err(RequestError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown type {other:?}; expected one of message, group_join, group_leave, \
                     group_message, block, unblock, who, ping, received"
                ),
                reference,
            ))
        }
    };
    Ok(Envelope { reference, request })
}

/// One request's fields, read with the error each rule gives: the `ref` is
/// echoed in every refusal.
struct Fields<'f, 'a> {
    raw: &'f RawRequest<'a>,
    reference: &'f Ref,
}

impl<'a> Fields<'_, 'a> {
    fn missing(&self, field: &str, what: &str) -> RequestError {
        RequestError::new(
            ErrorCode::MissingField,
            format!("field \"{field}\" is required and must be {what}"),
            self.reference.clone(),
        )
    }

    /// Present, not null, and a JSON string; borrowed from the frame unless it has escapes.
    fn string(
        &self,
        field: &str,
        value: Option<&'a RawValue>,
    ) -> Result<Cow<'a, str>, RequestError> {
        match value {
            // A string that does not decode (a lone surrogate escape) is broken JSON.
            Some(v) if v.get().starts_with('"') => serde_json::from_str(v.get()).map_err(|e| {
                RequestError::bad_json(format!("field \"{field}\" is not a valid string ({e})"))
            }),
            _ => Err(self.missing(field, "a string")),
        }
    }

    fn user(&self, raw: &str) -> Result<Name, RequestError> {
        self.name(raw, ErrorCode::InvalidUser, "user")
    }

    fn group(&self, raw: &str) -> Result<Name, RequestError> {
        self.name(raw, ErrorCode::InvalidGroup, "group")
    }

    /// A user and a group name follow one rule (`names.rs`); only the code differs.
    fn name(&self, raw: &str, code: ErrorCode, what: &str) -> Result<Name, RequestError> {
        Name::parse(raw).map_err(|e| {
            RequestError::new(
                code,
                format!("invalid {what} name {raw:?}: {e}"),
                self.reference.clone(),
            )
        })
    }

    /// Optional and false when absent; anything but a JSON boolean is refused.
    fn receipt(&self) -> Result<bool, RequestError> {
        match self.raw.receipt.map(RawValue::get) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(self.missing("receipt", "true or false")),
        }
    }
}

/// The fields a request may have, each kept as unparsed JSON so its type can be
/// checked with the exact error code. Borrowing from the frame avoids building
/// a map per request: parsing is the largest cost of routing a message.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    text: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    group: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    receipt: Option<&'a RawValue>,
}

/// `Some` whenever the key is there, even as `null` (plain `Option` would read
/// `null` as absent, and `"ref": null` must be echoed).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Where a chat message goes: one user, or every member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// As people type it: `bob`, or `#g1` for a group.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::User(u) => write!(f, "{u}"),
            Target::Group(g) => write!(f, "#{g}"),
        }
    }
}

/// A chat message as the server accepted it. This is what an offline deque
/// holds; the text is shared, so fan-out to a group of 30 copies no bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub from: UserId,
    pub target: Target,
    pub text: Arc<str>,
    /// Unix time in milliseconds when the server accepted it.
    pub ts: u64,
    /// The sender asked for a receipt. Kept with the message (and on disk),
    /// never sent to the recipient: it is the sender's business.
    pub receipt: bool,
}

/// `delivered`, `queued`, `sent` or `ok`: what happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Pushed to at least one open connection of the recipient.
    Delivered,
    /// Stored in an offline deque.
    Queued,
    /// Accepted but given to nobody (the recipient blocks the sender, or no one else is there).
    Sent,
    /// group_join, group_leave, block, unblock.
    Ok,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl std::fmt::Display for AckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_wire(self, f)
    }
}

impl std::fmt::Display for PresenceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_wire(self, f)
    }
}

/// Everything the server sends. Chat messages keep their [`Message`] so the
/// network layer can put an undeliverable one back in the offline deque.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Chat {
        message: Message,
        offline: bool,
    },
    /// `resume`: the position this connection resumed from, and `epoch` the
    /// run it belongs to (v1.1; both absent in v1).
    /// `batched`: the connection asked for batched presence (v1.2), so it
    /// gets `presence_diff` frames instead of `presence` ones.
    Welcome {
        user: UserId,
        online: Vec<UserId>,
        queued: usize,
        resume: Option<u64>,
        epoch: Option<String>,
        batched: bool,
    },
    Presence {
        user: UserId,
        status: PresenceStatus,
    },
    /// v1.2: every presence change since the last tick, coalesced.
    PresenceDiff {
        online: Vec<UserId>,
        offline: Vec<UserId>,
    },
    Ack {
        reference: Ref,
        id: Option<u64>,
        status: AckStatus,
    },
    Error(RequestError),
    /// The recipient's client confirmed message `id` (the second tick).
    /// `user` names the member, for a group message.
    Receipt {
        id: u64,
        user: Option<UserId>,
    },
    /// Exactly the contract's shapes: a `ref` is echoed in acks and errors only.
    Who {
        online: Vec<UserId>,
    },
    Pong,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The wire shapes, borrowed from a [`ServerFrame`] only to be serialised.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire<'a> {
    Message {
        id: u64,
        from: &'a str,
        to: &'a str,
        text: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "is_false")]
        offline: bool,
    },
    GroupMessage {
        id: u64,
        group: &'a str,
        from: &'a str,
        text: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "is_false")]
        offline: bool,
    },
    Welcome {
        user: &'a str,
        online: &'a [UserId],
        queued: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<&'static str>,
    },
    Presence {
        user: &'a str,
        status: PresenceStatus,
    },
    PresenceDiff {
        online: &'a [UserId],
        offline: &'a [UserId],
    },
    Receipt {
        id: u64,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: &'a Ref,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        status: AckStatus,
    },
    Error {
        code: ErrorCode,
        detail: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: &'a Ref,
    },
    Who {
        online: &'a [UserId],
    },
    Pong,
}

impl Message {
    fn wire(&self, offline: bool) -> Wire<'_> {
        match &self.target {
            Target::User(to) => Wire::Message {
                id: self.id,
                from: self.from.as_str(),
                to: to.as_str(),
                text: &self.text,
                ts: self.ts,
                offline,
            },
            Target::Group(group) => Wire::GroupMessage {
                id: self.id,
                group: group.as_str(),
                from: self.from.as_str(),
                text: &self.text,
                ts: self.ts,
                offline,
            },
        }
    }
}

/// A message serialises as its live wire frame (used by `/inspect`).
impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire(false).serialize(s)
    }
}

/// The wire shape read back (by `vivachat inspect`, from a snapshot).
#[derive(Deserialize)]
struct WireMessageIn {
    #[serde(rename = "type")]
    kind: String,
    id: u64,
    from: UserId,
    to: Option<UserId>,
    group: Option<GroupId>,
    text: String,
    ts: u64,
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireMessageIn::deserialize(d)?;
        let target = match (w.kind.as_str(), w.to, w.group) {
            ("message", Some(to), None) => Target::User(to),
            ("group_message", None, Some(group)) => Target::Group(group),
            _ => {
                return Err(serde::de::Error::custom(
                    "expected a message with \"to\" or a group_message with \"group\"",
                ))
            }
        };
        Ok(Message {
            id: w.id,
            from: w.from,
            target,
            text: Arc::from(w.text),
            ts: w.ts,
            receipt: false,
        })
    }
}

impl ServerFrame {
    /// The JSON text of this frame, exactly as it goes on the wire.
    pub fn to_json(&self) -> String {
        let wire = match self {
            ServerFrame::Chat { message, offline } => message.wire(*offline),
            ServerFrame::Welcome {
                user,
                online,
                queued,
                resume,
                epoch,
                batched,
            } => Wire::Welcome {
                user: user.as_str(),
                online,
                queued: *queued,
                resume: *resume,
                epoch: epoch.as_deref(),
                presence: batched.then_some("batched"),
            },
            ServerFrame::PresenceDiff { online, offline } => Wire::PresenceDiff { online, offline },
            ServerFrame::Receipt { id, user } => Wire::Receipt {
                id: *id,
                status: "received",
                user: user.as_ref().map(UserId::as_str),
            },
            ServerFrame::Presence { user, status } => Wire::Presence {
                user: user.as_str(),
                status: *status,
            },
            ServerFrame::Ack {
                reference,
                id,
                status,
            } => Wire::Ack {
                reference,
                id: *id,
                status: *status,
            },
            ServerFrame::Error(e) => Wire::Error {
                code: e.code,
                detail: &e.detail,
                reference: &e.reference,
            },
            ServerFrame::Who { online } => Wire::Who { online },
            ServerFrame::Pong => Wire::Pong,
        };
        // Serialising these plain structs into a String cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The chat message inside, if this frame carries one.
    pub fn chat_message(&self) -> Option<&Message> {
        match self {
            ServerFrame::Chat { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The chat message this frame carries, taken out of it.
    pub fn into_chat_message(self) -> Option<Message> {
        match self {
            ServerFrame::Chat { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// What a client sends, borrowed from a [`Request`] only to be serialised.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireRequest<'a> {
    Message {
        to: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        receipt: bool,
    },
    GroupJoin {
        group: &'a str,
    },
    GroupLeave {
        group: &'a str,
    },
    GroupMessage {
        group: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        receipt: bool,
    },
    Block {
        user: &'a str,
    },
    Unblock {
        user: &'a str,
    },
    Who,
    Ping,
    Received {
        id: u64,
    },
}

#[derive(Serialize)]
struct WireEnvelope<'a> {
    #[serde(flatten)]
    request: WireRequest<'a>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<u64>,
}

impl Request {
    /// A message to a user or a group.
    pub fn chat(target: &Target, text: &str) -> Request {
        Request::chat_with_receipt(target, text, false)
    }

    /// A message that asks for a receipt when `receipt` is true.
    pub fn chat_with_receipt(target: &Target, text: &str, receipt: bool) -> Request {
        match target {
            Target::User(to) => Request::Message {
                to: to.clone(),
                text: Arc::from(text),
                receipt,
            },
            Target::Group(group) => Request::GroupMessage {
                group: group.clone(),
                text: Arc::from(text),
                receipt,
            },
        }
    }

    /// The JSON text a client sends, with `ref` when given: the inverse of
    /// [`parse_request`].
    pub fn to_json(&self, reference: Option<u64>) -> String {
        let request = match self {
            Request::Message { to, text, receipt } => WireRequest::Message {
                to: to.as_str(),
                text,
                receipt: *receipt,
            },
            Request::GroupJoin { group } => WireRequest::GroupJoin {
                group: group.as_str(),
            },
            Request::GroupLeave { group } => WireRequest::GroupLeave {
                group: group.as_str(),
            },
            Request::GroupMessage {
                group,
                text,
                receipt,
            } => WireRequest::GroupMessage {
                group: group.as_str(),
                text,
                receipt: *receipt,
            },
            Request::Block { user } => WireRequest::Block {
                user: user.as_str(),
            },
            Request::Unblock { user } => WireRequest::Unblock {
                user: user.as_str(),
            },
            Request::Who => WireRequest::Who,
            Request::Ping => WireRequest::Ping,
            Request::Received { id } => WireRequest::Received { id: *id },
        };
        let envelope = WireEnvelope { request, reference };
        serde_json::to_string(&envelope).expect("plain strings and numbers always serialise")
    }
}

/// Every frame but chat messages, as a client reads it back (a chat message
/// reads through [`Message`]'s own `Deserialize`, which `/inspect` uses too).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFrameIn {
    Welcome {
        user: UserId,
        online: Vec<UserId>,
        queued: usize,
        #[serde(default)]
        resume: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        presence: Option<String>,
    },
    Receipt {
        id: u64,
        #[serde(default)]
        user: Option<UserId>,
    },
    Presence {
        user: UserId,
        status: PresenceStatus,
    },
    PresenceDiff {
        online: Vec<UserId>,
        offline: Vec<UserId>,
    },
    Ack {
        #[serde(rename = "ref", default)]
        reference: Ref,
        #[serde(default)]
        id: Option<u64>,
        status: AckStatus,
    },
    Error {
        code: ErrorCode,
        detail: String,
        #[serde(rename = "ref", default)]
        reference: Ref,
    },
    Who {
        online: Vec<UserId>,
    },
    Pong,
}

/// Parses one frame from the server (the client's side of the contract).
/// A frame this version does not know is an error, which a client shows as it came.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    /// A chat frame: the message, and whether it was flushed from the queue.
    #[derive(Deserialize)]
    struct Chat {
        #[serde(flatten)]
        message: Message,
        #[serde(default)]
        offline: bool,
    }
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: FrameKind,
    }
    let head: Head = serde_json::from_str(text)?;
    if matches!(head.kind, FrameKind::Message | FrameKind::GroupMessage) {
        let Chat { message, offline } = serde_json::from_str(text)?;
        return Ok(ServerFrame::Chat { message, offline });
    }
    Ok(match serde_json::from_str(text)? {
        WireFrameIn::Welcome {
            user,
            online,
            queued,
            resume,
            epoch,
            presence,
        } => ServerFrame::Welcome {
            user,
            online,
            queued,
            resume,
            epoch,
            batched: presence.as_deref() == Some("batched"),
        },
        WireFrameIn::PresenceDiff { online, offline } => {
            ServerFrame::PresenceDiff { online, offline }
        }
        WireFrameIn::Receipt { id, user } => ServerFrame::Receipt { id, user },
        WireFrameIn::Presence { user, status } => ServerFrame::Presence { user, status },
        WireFrameIn::Ack {
            reference,
            id,
            status,
        } => ServerFrame::Ack {
            reference,
            id,
            status,
        },
        WireFrameIn::Error {
            code,
            detail,
            reference,
        } => ServerFrame::Error(RequestError::new(code, detail, reference)),
        WireFrameIn::Who { online } => ServerFrame::Who { online },
        WireFrameIn::Pong => ServerFrame::Pong,
    })
}

/// The type of a server frame, as a load generator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Message,
    GroupMessage,
    Welcome,
    Presence,
    PresenceDiff,
    Ack,
    Error,
    Who,
    Pong,
    Receipt,
    /// A type this version does not know.
    #[serde(other)]
    Other,
}

/// A cheap, typed look at a server frame: its type and the two fields a load
/// generator needs, borrowed from the text. `bench load` reads hundreds of
/// thousands of frames a second on the same cores as the server, so it does
/// not build a whole [`ServerFrame`] for each.
#[derive(Debug, Deserialize)]
pub struct FramePeek<'a> {
    #[serde(rename = "type")]
    pub kind: FrameKind,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    /// An ack's status; None for anything else (a presence frame's
    /// `"status":"online"` is not an ack status, and must not fail the peek).
    #[serde(default, deserialize_with = "ack_status")]
    pub status: Option<AckStatus>,
    /// A chat message's (or an ack's) id.
    #[serde(default)]
    pub id: Option<u64>,
}

fn ack_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AckStatus>, D::Error> {
    let raw = <&RawValue>::deserialize(d)?;
    Ok(serde_json::from_str(raw.get()).ok())
}

impl<'a> FramePeek<'a> {
    pub fn parse(text: &'a str) -> Option<FramePeek<'a>> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(text: &str) -> ErrorCode {
        parse_request(text).unwrap_err().code
    }

    #[test]
    fn parses_every_request_type() {
        let e = parse_request(r#"{"type":"message","to":"bob","text":"hi","ref":7}"#).unwrap();
        assert_eq!(e.reference, Some(json!(7).into()));
        assert_eq!(
            e.request,
            Request::Message {
                to: Name::parse("bob").unwrap(),
                text: Arc::from("hi"),
                receipt: false,
            }
        );
        let asks = r#"{"type":"group_message","group":"g","text":"x","receipt":true}"#;
        assert!(matches!(
            parse_request(asks).unwrap().request,
            Request::GroupMessage { receipt: true, .. }
        ));
        assert_eq!(
            parse_request(r#"{"type":"received","id":42}"#)
                .unwrap()
                .request,
            Request::Received { id: 42 }
        );
        for (text, want) in [
            (r#"{"type":"who"}"#, Request::Who),
            (r#"{"type":"ping","extra":[1,2]}"#, Request::Ping),
        ] {
            assert_eq!(parse_request(text).unwrap().request, want);
        }
        assert!(matches!(
            parse_request(r#"{"type":"group_message","group":"g1","text":""}"#)
                .unwrap()
                .request,
            Request::GroupMessage { .. }
        ));
        assert!(matches!(
            parse_request(r#"{"type":"unblock","user":"x"}"#)
                .unwrap()
                .request,
            Request::Unblock { .. }
        ));
    }

    #[test]
    fn bad_json_for_anything_that_is_not_an_object() {
        for text in ["", "not json", "[]", "42", "\"ping\"", "null", "{", "[1,2"] {
            let err = parse_request(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadJson, "{text:?}");
            assert_eq!(err.reference, None);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_or_ignored_never_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep), ErrorCode::BadJson);
        let deep_object = format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
        assert_eq!(code(&deep_object), ErrorCode::BadJson);
        // An unknown field is skipped whole, however deep (this is 60,000 levels).
        let deep_field = format!(
            r#"{{"type":"ping","x":{}1{}}}"#,
            "[".repeat(60_000),
            "]".repeat(60_000)
        );
        assert_eq!(parse_request(&deep_field).unwrap().request, Request::Ping);
        // A `ref` is echoed, so it is parsed, within serde_json's depth limit.
        let deep_ref = format!(
            r#"{{"type":"ping","ref":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(code(&deep_ref), ErrorCode::BadJson);
    }

    #[test]
    fn duplicate_keys_and_escapes() {
        assert_eq!(code(r#"{"type":"ping","type":"who"}"#), ErrorCode::BadJson);
        let e = parse_request(r#"{"type":"message","to":"b\u006fb","text":"\"hi\"\n"}"#).unwrap();
        assert_eq!(
            e.request,
            Request::Message {
                to: Name::parse("bob").unwrap(),
                text: Arc::from("\"hi\"\n"),
                receipt: false,
            }
        );
        assert_eq!(
            code(r#"{"type":"message","to":"bob","text":"\ud800"}"#),
            ErrorCode::BadJson
        );
    }

    #[test]
    fn type_rules() {
        assert_eq!(code(r#"{}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":null}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":""}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"Ping"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    }

    #[test]
    fn fields_are_checked_before_names() {
        assert_eq!(
            code(r#"{"type":"message","to":"bob"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"message","to":5,"text":"x"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"message","to":null,"text":"x"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"message","to":"b b","text":1}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"message","to":"b b","text":"x"}"#),
            ErrorCode::InvalidUser
        );
        assert_eq!(
            code(r##"{"type":"group_message","group":"#g","text":"x"}"##),
            ErrorCode::InvalidGroup
        );
        assert_eq!(
            code(r#"{"type":"group_join","group":""}"#),
            ErrorCode::InvalidGroup
        );
        assert_eq!(
            code(r#"{"type":"block","user":"no/slash"}"#),
            ErrorCode::InvalidUser
        );
        assert_eq!(code(r#"{"type":"unblock"}"#), ErrorCode::MissingField);
    }

    #[test]
    fn ref_is_echoed_with_its_json_type() {
        for r in [
            json!("abc"),
            json!(12),
            json!(1.5),
            json!(null),
            json!({"k":[1]}),
        ] {
            let text = json!({"type": "dance", "ref": r}).to_string();
            assert_eq!(parse_request(&text).unwrap_err().reference, Some(r.into()));
        }
    }

    #[test]
    fn ref_comes_back_byte_for_byte() {
        for raw in [
            "123456789012345678901234567890123456789",
            "18446744073709551616",
            "-0.000000000000000000001",
            "1.0",
            r#""caf\u00e9""#,
            r#"{"b": [1, 2.50]}"#,
        ] {
            let text = format!(r#"{{"type":"ping","ref":{raw}}}"#);
            let reference = parse_request(&text).unwrap().reference.unwrap();
            assert_eq!(reference.get(), raw);
            let ack = ServerFrame::Ack {
                reference: Some(reference),
                id: None,
                status: AckStatus::Ok,
            };
            assert_eq!(
                ack.to_json(),
                format!(r#"{{"type":"ack","ref":{raw},"status":"ok"}}"#)
            );
        }
    }

    #[test]
    fn wire_shapes() {
        let m = Message {
            id: 7,
            from: Name::parse("alice").unwrap(),
            target: Target::User(Name::parse("bob").unwrap()),
            text: Arc::from("hi \"there\""),
            ts: 1764000000000,
            receipt: true,
        };
        let live: Value = serde_json::from_str(
            &ServerFrame::Chat {
                message: m.clone(),
                offline: false,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            live,
            json!({"type":"message","id":7,"from":"alice","to":"bob","text":"hi \"there\"","ts":1764000000000u64})
        );
        let queued: Value = serde_json::from_str(
            &ServerFrame::Chat {
                message: m,
                offline: true,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(queued["offline"], json!(true));
        let ack: Value = serde_json::from_str(
            &ServerFrame::Ack {
                reference: None,
                id: None,
                status: AckStatus::Ok,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(ack, json!({"type":"ack","status":"ok"}));
        let err: Value = serde_json::from_str(
            &ServerFrame::Error(RequestError::new(
                ErrorCode::NotMember,
                "d",
                Some(json!("r").into()),
            ))
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            err,
            json!({"type":"error","code":"not_member","detail":"d","ref":"r"})
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        // v1.1: exactly the shapes docs/protocol.md shows.
        let receipt = ServerFrame::Receipt { id: 7, user: None };
        assert_eq!(
            receipt.to_json(),
            r#"{"type":"receipt","id":7,"status":"received"}"#
        );
        let v1 = ServerFrame::Welcome {
            user: Name::parse("bob").unwrap(),
            online: vec![],
            queued: 0,
            resume: None,
            epoch: None,
            batched: false,
        };
        assert_eq!(
            v1.to_json(),
            r#"{"type":"welcome","user":"bob","online":[],"queued":0}"#
        );
        // v1.2: exactly the shapes docs/protocol.md shows.
        let batched = ServerFrame::Welcome {
            user: Name::parse("bob").unwrap(),
            online: vec![Name::parse("alice").unwrap()],
            queued: 0,
            resume: None,
            epoch: None,
            batched: true,
        };
        assert_eq!(
            batched.to_json(),
            r#"{"type":"welcome","user":"bob","online":["alice"],"queued":0,"presence":"batched"}"#
        );
        let n = |s: &str| Name::parse(s).unwrap();
        let diff = ServerFrame::PresenceDiff {
            online: vec![n("carol"), n("dave")],
            offline: vec![n("alice")],
        };
        assert_eq!(
            diff.to_json(),
            r#"{"type":"presence_diff","online":["carol","dave"],"offline":["alice"]}"#
        );
    }

    #[test]
    fn received_and_receipt_are_checked_like_every_field() {
        for bad in [
            r#"{"type":"received"}"#,
            r#"{"type":"received","id":-1}"#,
            r#"{"type":"received","id":"7"}"#,
            r#"{"type":"received","id":1.5}"#,
            r#"{"type":"received","id":null}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::MissingField, "{bad}");
        }
        let bad = r#"{"type":"message","to":"bob","text":"x","receipt":"yes"}"#;
        assert_eq!(code(bad), ErrorCode::MissingField);
        let off = r#"{"type":"message","to":"bob","text":"x","receipt":false}"#;
        assert!(matches!(
            parse_request(off).unwrap().request,
            Request::Message { receipt: false, .. }
        ));
    }

    #[test]
    fn clients_speak_the_same_contract_in_both_directions() {
        let n = |s: &str| Name::parse(s).unwrap();
        let requests = [
            Request::chat(&Target::User(n("bob")), "hi \"there\""),
            Request::chat(&Target::Group(n("g1")), "all"),
            Request::GroupJoin { group: n("g1") },
            Request::GroupLeave { group: n("g1") },
            Request::Block { user: n("eve") },
            Request::Unblock { user: n("eve") },
            Request::Who,
            Request::Ping,
            Request::Received { id: 9 },
            Request::chat_with_receipt(&Target::User(n("bob")), "tick?", true),
        ];
        for (i, request) in requests.into_iter().enumerate() {
            let text = request.to_json(Some(i as u64));
            let parsed = parse_request(&text).unwrap();
            assert_eq!(parsed.request, request, "{text}");
            assert_eq!(parsed.reference, Some(serde_json::json!(i).into()));
        }
        assert_eq!(Request::Ping.to_json(None), r#"{"type":"ping"}"#);
        let frames = [
            ServerFrame::Welcome {
                user: n("alice"),
                online: vec![n("bob")],
                queued: 2,
                resume: None,
                epoch: None,
                batched: true,
            },
            ServerFrame::Welcome {
                user: n("alice"),
                online: vec![],
                queued: 0,
                resume: Some(41),
                epoch: Some("3fa9".into()),
                batched: false,
            },
            ServerFrame::PresenceDiff {
                online: vec![n("bob")],
                offline: vec![n("carol"), n("dave")],
            },
            ServerFrame::Receipt {
                id: 7,
                user: Some(n("bob")),
            },
            ServerFrame::Chat {
                message: Message {
                    id: 7,
                    from: n("bob"),
                    target: Target::Group(n("g1")),
                    text: Arc::from("yo"),
                    ts: 5,
                    receipt: false,
                },
                offline: true,
            },
            ServerFrame::Presence {
                user: n("bob"),
                status: PresenceStatus::Offline,
            },
            ServerFrame::Ack {
                reference: Some(serde_json::json!(3).into()),
                id: Some(7),
                status: AckStatus::Queued,
            },
            ServerFrame::Error(RequestError::new(ErrorCode::Unavailable, "disk", None)),
            ServerFrame::Who {
                online: vec![n("a")],
            },
            ServerFrame::Pong,
        ];
        for frame in frames {
            assert_eq!(parse_server_frame(&frame.to_json()).unwrap(), frame);
        }
        assert!(parse_server_frame(r#"{"type":"surprise"}"#).is_err());
        let peek = FramePeek::parse(
            r#"{"type":"message","id":1,"from":"a","to":"b","text":"1 2","ts":0}"#,
        );
        let peek = peek.unwrap();
        assert_eq!(
            (peek.kind, peek.text.as_deref()),
            (FrameKind::Message, Some("1 2"))
        );
        let ack = FramePeek::parse(r#"{"type":"ack","ref":1,"id":1,"status":"queued"}"#).unwrap();
        assert_eq!(
            (ack.kind, ack.status),
            (FrameKind::Ack, Some(AckStatus::Queued))
        );
        assert_eq!(
            FramePeek::parse(r#"{"type":"new"}"#).unwrap().kind,
            FrameKind::Other
        );
        let presence = FramePeek::parse(r#"{"type":"presence","user":"b","status":"online"}"#);
        assert_eq!(
            presence.map(|p| (p.kind, p.status)),
            Some((FrameKind::Presence, None))
        );
        assert_eq!(Target::Group(n("g1")).to_string(), "#g1");
        assert_eq!(ErrorCode::NotMember.to_string(), "not_member");
        assert_eq!(AckStatus::Queued.to_string(), "queued");
        assert_eq!(PresenceStatus::Offline.to_string(), "offline");
    }
}
