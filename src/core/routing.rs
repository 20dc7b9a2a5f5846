//! Where every message is routed: the rules of the chat, as methods of [`ChatCore`].
//!
//! Each method reads and writes the five structures through [`Structures`]
//! and returns an [`Outcome`]. Nothing here touches a socket or a clock: the
//! caller passes `now_ms` in, which makes every rule testable to the byte.

use std::sync::Arc;

use crate::core::{
    queued_cost, ChatCore, ConnHandle, ConnId, CoreConfig, Delivery, DiffSummary, DirectFacts,
    Disk, Event, Flush, Outcome, QueuedBytes, Relay, Step, Structures, Trace, Unavailable,
    DIFF_NAMES, QUEUED_ENTRY_BYTES,
};
use crate::names::{GroupId, UserId};
use crate::protocol::{
    AckStatus, Envelope, ErrorCode, Message, PresenceStatus, Ref, Request, RequestError,
    ServerFrame, Target,
};

/// Frames and deliveries being assembled for one outcome.
struct Plan<C> {
    frames: Vec<ServerFrame>,
    deliveries: Vec<Delivery<C>>,
    flush: Option<Flush<C>>,
}

impl<C: Clone> Plan<C> {
    fn new() -> Self {
        Plan {
            frames: Vec::new(),
            deliveries: Vec::new(),
            flush: None,
        }
    }

    fn frame(&mut self, frame: ServerFrame) -> usize {
        self.frames.push(frame);
        self.frames.len() - 1
    }

    fn send(&mut self, conn: &C, frame: usize) {
        self.deliveries.push(Delivery {
            conn: conn.clone(),
            frame,
        });
    }

    /// A frame for exactly one connection (acks, errors, replies).
    fn reply(&mut self, conn: &C, frame: ServerFrame) {
        let index = self.frame(frame);
        self.send(conn, index);
    }

    fn finish(self, event: Event, trace: Trace) -> Outcome<C> {
        Outcome {
            frames: self.frames,
            deliveries: self.deliveries,
            event,
            trace,
            changes: Vec::new(),
            flush: self.flush,
        }
    }
}

/// A group message's copies as `fan_out` planned them. `connections` and
/// `queued` are what really happened (the event log); `would_reach` and
/// `would_queue` what would have, had no member blocked the sender (the ack).
struct Fanout<C> {
    connections: usize,
    queued: usize,
    blocked: usize,
    would_reach: usize,
    would_queue: usize,
    /// Members whose copy is kept in their deque.
    kept_for: Vec<UserId>,
    /// Live copies to devices that resumed: sent once `keep` has settled the id.
    held: Vec<C>,
}

impl<C> Default for Fanout<C> {
    fn default() -> Self {
        Fanout {
            connections: 0,
            queued: 0,
            blocked: 0,
            would_reach: 0,
            would_queue: 0,
            kept_for: Vec::new(),
            held: Vec::new(),
        }
    }
}

/// What one node of a cluster (`serve --redis`) publishes to another, to be
/// carried out on that node's own sockets.
#[derive(Debug, Clone, PartialEq)]
pub enum Relayed {
    /// A frame for `user`'s devices there. `held`: the routing node also kept
    /// it in the user's deque (a device of theirs resumed), so a copy that
    /// finds no device must not be queued a second time.
    /// `except`: the device that sent it (a group message is not sent back
    /// to it; connection ids are unique across the nodes).
    ToUser {
        user: UserId,
        frame: ServerFrame,
        held: bool,
        except: Option<ConnId>,
    },
    /// A presence frame about `about`, for every device there but theirs
    /// that was registered before the change (its `order`).
    ToEveryone {
        about: UserId,
        frame: ServerFrame,
        order: u64,
    },
    /// A message was queued for `user` while a device of theirs was online
    /// there (it connected while the router looked): the queue is theirs to take.
    TakeQueue { user: UserId },
    /// Not from another node: a chat message this node published for `user`
    /// reached no node (the one with their socket died), so it is queued.
    Undeliverable { user: UserId, message: Message },
}

/// Who sent a request, on which connection, with which `ref`, and when.
struct Sender<'a, C> {
    user: &'a UserId,
    conn: &'a C,
    reference: Ref,
    now_ms: u64,
}

/// An accepted message, with the id the structures issued for it. One
/// counter serves direct and group messages, so ids increase in the order
/// messages were accepted.
fn stamp(
    id: u64,
    from: &UserId,
    target: Target,
    (text, receipt): (Arc<str>, bool),
    ts: u64,
) -> Message {
    Message {
        id,
        from: from.clone(),
        target,
        text,
        ts,
        receipt,
    }
}

/// Whether what is routed to these devices must be held until confirmed:
/// yes when one of them resumed (v1.1). A scan of the user's one to three
/// handles, not a structure operation, so v1 users pay nothing for it.
fn holds<C: ConnHandle>(devices: &[C]) -> bool {
    devices.iter().any(|d| d.resume().is_some())
}

/// The refusal of something that must be written to disk while it cannot be.
fn unavailable(why: &str, what: &str, reference: Ref) -> RequestError {
    RequestError::new(
        ErrorCode::Unavailable,
        format!(
            "cannot {what} now: {why}. Nothing was kept; send it again later \
             (messages to online users still work)"
        ),
        reference,
    )
}

/// The memory budget's say on anything `from` sends, live or not. A sender
/// whose messages already fill their share of the offline deques (some were
/// put back there by connections that stopped reading) may send nothing more
/// until some are read; once the deques are full in all, neither may anyone
/// holding an eighth of that share. Everyone else, the class, chats on.
fn may_send(queued: QueuedBytes, config: &CoreConfig) -> Result<(), String> {
    let QueuedBytes { all, sender: mine } = queued;
    let share = config.max_queued_bytes_per_sender;
    let full = all >= config.max_queued_bytes;
    // "Filled": not even one more queued copy would fit.
    if mine + QUEUED_ENTRY_BYTES > share || (full && mine >= share / 8) {
        return Err(format!(
            "you have {:.1} MiB of messages waiting for users who are not reading them, \
             the most one sender may have now (--max-memory); wait until some are read",
            mine as f64 / (1024.0 * 1024.0)
        ));
    }
    Ok(())
}

/// The memory budget's say on keeping a copy of a `text_bytes` message from
/// `from`: Err with the words for the sender when the offline deques are at
/// `--max-memory`'s share, or `from` already has a sender's share waiting.
/// A copy queued for an offline user may fill three quarters of the deques'
/// budget; a copy `held` for an online, resuming one may also take the last
/// quarter. O(1): two counters the structures keep, read just before.
fn room_to_queue(
    queued: QueuedBytes,
    config: &CoreConfig,
    text_bytes: usize,
    held: bool,
) -> Result<(), String> {
    let cost = queued_cost(text_bytes);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let limit = match held {
        true => config.max_queued_bytes,
        false => config.max_offline_queued_bytes(),
    };
    if queued.all.saturating_add(cost) > limit {
        return Err(match held {
            true => format!(
                "the server's memory for held messages is full ({:.0} MiB, from --max-memory): \
                 try again in a moment",
                mib(limit)
            ),
            false => format!(
                "the server's memory for offline messages is full ({:.0} MiB, from --max-memory; \
                 the rest is kept for live chat): nothing more can be queued until some are \
                 read: try again later",
                mib(limit)
            ),
        });
    }
    if queued.sender.saturating_add(cost) > config.max_queued_bytes_per_sender {
        return Err(format!(
            "you already have {:.1} MiB of messages waiting for offline users, the most one \
             sender may have (--max-memory); wait until some are read",
            mib(queued.sender)
        ));
    }
    Ok(())
}

/// Why a request's rule stopped before its outcome: refused (the sender is
/// told why), or a backend step could not be carried out.
enum Stop {
    Refused(RequestError),
    Unavailable(Unavailable),
}

impl From<RequestError> for Stop {
    fn from(error: RequestError) -> Stop {
        Stop::Refused(error)
    }
}

impl From<Unavailable> for Stop {
    fn from(why: Unavailable) -> Stop {
        Stop::Unavailable(why)
    }
}

fn ack(reference: Ref, id: Option<u64>, status: AckStatus) -> ServerFrame {
    ServerFrame::Ack {
        reference,
        id,
        status,
    }
}

impl<S: Structures> ChatCore<S> {
    fn new_trace(&self) -> Trace {
        Trace::new(self.config.trace)
    }

    /// The outcome, with the durable changes the rule made (none unless the journal is on).
    fn finish(&mut self, plan: Plan<S::Conn>, event: Event, trace: Trace) -> Outcome<S::Conn> {
        let mut outcome = plan.finish(event, trace);
        outcome.changes = self.structures.take_changes();
        outcome
    }

    /// Sends one presence frame to every connection of every online user but `user`.
    /// O(n + total devices): the price of live presence, paid on first connect and last close.
    fn broadcast_presence(
        &mut self,
        plan: &mut Plan<S::Conn>,
        user: &UserId,
        status: PresenceStatus,
        others: &[UserId],
        trace: &mut Trace,
    ) -> Step<usize> {
        // Batched connections hear of it at the next tick: O(log k) here.
        self.presence_batch.changed(user, status, true);
        // With nobody on v1, no one's devices need looking up: a storm of
        // batched arrivals costs O(1) per arrival, not O(n).
        if !self.presence_batch.has_v1() {
            return Ok(0);
        }
        let frame = plan.frame(ServerFrame::Presence {
            user: user.clone(),
            status,
        });
        let others: Vec<UserId> = others.iter().filter(|o| *o != user).cloned().collect();
        let devices = self.structures.devices_of_all(&others, trace)?;
        let mut sent = 0;
        for conn in devices.iter().filter(|c| !c.presence_batched()) {
            plan.send(conn, frame);
            sent += 1;
        }
        Ok(sent)
    }

    /// A new connection: register the device, greet it, flush its queue FIFO,
    /// and announce the user if this is their first device.
    ///
    /// A v1 device takes the queue: each message is popped as it is sent, never
    /// sent twice. A resuming device (`?resume=N`) first releases what N
    /// confirms, then gets a copy of every held message after N, which stays
    /// held until a `received` covers it.
    pub fn connect(&mut self, user: &UserId, conn: S::Conn) -> Step<Outcome<S::Conn>> {
        let mut trace = self.new_trace();
        let mut plan = Plan::new();
        let resume = self.resume_position(&conn)?;
        let devices = self
            .structures
            .add_connection(user, conn.clone(), &mut trace)?;
        let first = devices == 1;
        if first {
            self.structures.set_online(user, &mut trace)?;
        }
        let mut others = self.structures.online_users(&mut trace)?;
        others.retain(|u| u != user);

        let mut released = 0;
        let flush = match resume {
            None => {
                let all = self.structures.queue_take_all(user, &mut trace)?;
                self.withheld.emptied(user);
                all
            }
            Some(position) => {
                released = self.release(&mut plan, user, position, &mut trace)?.0;
                self.structures
                    .queue_held_after(user, position, &mut trace)?
            }
        };
        plan.reply(
            &conn,
            ServerFrame::Welcome {
                user: user.clone(),
                online: others.clone(),
                queued: flush.len(),
                resume,
                epoch: resume.map(|_| self.epoch.clone()),
                batched: conn.presence_batched(),
            },
        );
        // Its welcome lists who is online now: what it knows until its first diff.
        self.presence_batch
            .greeted(conn.id(), conn.presence_batched());
        let flushed = flush.len();
        if let Some(position) = resume {
            let top = flush.iter().map(|m| m.id).max().unwrap_or(0);
            self.held_sent.insert(conn.id(), top.max(position));
        }
        // A v1 flush left the deque: its bytes stay charged until the
        // shell has handed it to the socket (`flushed`).
        let charged = match resume {
            None => flush.iter().map(|m| queued_cost(m.text.len())).sum(),
            Some(_) => 0,
        };
        self.flushing.charge(conn.id(), charged);
        let frames = flush
            .into_iter()
            .map(|message| ServerFrame::Chat {
                message,
                offline: true,
            })
            .collect();
        plan.flush = Some(Flush {
            conn: conn.clone(),
            frames,
            charged,
        });
        let notified = if first {
            self.broadcast_presence(&mut plan, user, PresenceStatus::Online, &others, &mut trace)?
        } else {
            0
        };
        let event = Event::Connected {
            user: user.clone(),
            conn: conn.id(),
            devices,
            flushed,
            notified,
            resume,
            released,
        };
        Ok(self.finish(plan, event, trace))
    }

    /// The shell has handed `conn`'s v1 flush to its socket: its bytes no
    /// longer count in the budget. O(1).
    pub fn flushed(&mut self, conn: ConnId) {
        self.flushing.release(conn);
    }

    /// The budget's counters as `from` meets them: with what blocks kept out
    /// of deques for them (`withheld.rs`), and the v1 flushes on their way.
    fn budget_seen_by(&self, from: &UserId, queued: QueuedBytes) -> QueuedBytes {
        let mut seen = self.withheld.as_seen_by(from, queued);
        seen.all += self.flushing.total();
        seen
    }

    /// Where a resuming device starts: its N, unless N cannot be this run's.
    /// An id this server never issued, or a position from another epoch
    /// (the server restarted without `--data`, so ids started again at 1),
    /// would skip messages the client never saw: it starts from 0 instead.
    fn resume_position(&self, conn: &S::Conn) -> Step<Option<u64>> {
        let Some(n) = conn.resume() else {
            return Ok(None);
        };
        let same_run = conn.resume_epoch().is_none_or(|e| e == self.epoch);
        let issued = n < self.structures.next_id(self.next_message_id)?;
        Ok(Some(if same_run && issued { n } else { 0 }))
    }

    /// Releases `user`'s held messages up to `upto` and sends a receipt for
    /// each one whose sender asked (to the sender's devices online now).
    /// Returns (released, receipts). One `pop_front` per message: O(k).
    fn release(
        &mut self,
        plan: &mut Plan<S::Conn>,
        user: &UserId,
        upto: u64,
        trace: &mut Trace,
    ) -> Step<(usize, usize)> {
        let s = &mut self.structures;
        let released = s.queue_release(user, upto, trace)?;
        // Every copy confirmed: what a block kept out would be confirmed too.
        if self.withheld.any_for(user) && s.queued_len(user, trace)? == 0 {
            self.withheld.emptied(user);
        }
        let mut receipts = 0;
        for message in released.iter().filter(|m| m.receipt) {
            let member = match &message.target {
                Target::Group(_) => Some(user.clone()),
                Target::User(_) => None,
            };
            let frame = plan.frame(ServerFrame::Receipt {
                id: message.id,
                user: member,
            });
            for device in s.connections(&message.from, trace)?.iter() {
                plan.send(device, frame);
                receipts += 1;
            }
        }
        Ok((released.len(), receipts))
    }

    /// A connection closed (or was evicted). `undelivered` are chat messages
    /// that were routed to it but never written to its socket: if it was the
    /// user's last device they go back to the front of the user's deque, so a
    /// message acknowledged `delivered` or `queued` is not lost while the server runs.
    pub fn disconnect(
        &mut self,
        user: &UserId,
        conn: ConnId,
        undelivered: Vec<Message>,
    ) -> Step<Outcome<S::Conn>> {
        let mut trace = self.new_trace();
        let mut plan = Plan::new();
        // Whatever of its flush it was not sent is in `undelivered`.
        self.flushing.release(conn);
        self.held_sent.remove(&conn);
        let s = &mut self.structures;
        let Some((devices, removed)) = s.remove_connection(user, conn, &mut trace)? else {
            let event = Event::AlreadyGone {
                user: user.clone(),
                conn,
            };
            return Ok(plan.finish(event, trace));
        };
        self.presence_batch.gone(conn, removed.presence_batched());
        let mut requeued = 0;
        let mut notified = 0;
        if devices == 0 {
            s.set_offline(user, &mut trace)?;
            // A v1 user's deque is empty while they are online (everything goes
            // live), so these go back at its back, oldest first. A resuming
            // device's unsent messages are still held: nothing to put back.
            // The --max-offline limit is not applied: these were already accepted.
            if removed.resume().is_none() {
                for message in undelivered {
                    requeued += usize::from(s.queue_put_back(user, message, &mut trace)?);
                }
            }
            let others = s.online_users(&mut trace)?;
            notified = self.broadcast_presence(
                &mut plan,
                user,
                PresenceStatus::Offline,
                &others,
                &mut trace,
            )?;
        }
        let event = Event::Disconnected {
            user: user.clone(),
            conn,
            devices,
            requeued,
            notified,
        };
        Ok(self.finish(plan, event, trace))
    }

    /// Cluster mode: carries out what another node routed to this one. A chat
    /// message for a user with no device here any more (they left while it
    /// was on its way) goes back to their queue, so it is never lost.
    pub fn relayed(&mut self, relayed: Relayed) -> Step<Outcome<S::Conn>> {
        let mut trace = self.new_trace();
        let mut plan = Plan::new();
        let s = &mut self.structures;
        let (user, what) = match &relayed {
            Relayed::ToUser { user, .. } => (user.clone(), Relay::ToUser),
            Relayed::ToEveryone { about, .. } => (about.clone(), Relay::ToEveryone),
            Relayed::TakeQueue { user } => (user.clone(), Relay::TakeQueue),
            Relayed::Undeliverable { user, .. } => (user.clone(), Relay::ToUser),
        };
        let mut connections = 0;
        let mut requeued = 0;
        match relayed {
            Relayed::ToUser {
                user,
                frame,
                held,
                except,
            } => {
                let mut devices = s.local_connections(&user, &mut trace)?.into_owned();
                devices.retain(|d| Some(d.id()) != except);
                let message = frame.chat_message().cloned();
                // A message routed while none of the user's devices had
                // resumed is not in their held order: a device that resumed
                // since gets only what is held for it (as on one server, it
                // connected after the message was routed).
                if message.is_some() && !held {
                    devices.retain(|d| d.resume().is_none());
                }
                // A held copy relayed late (this node's relay ran behind) can
                // reach a device that resumed here since and was sent higher
                // ids; its order comes first, so it gets no id at or below
                // what it was sent (a repeat, or a message its user's other
                // device confirmed meanwhile).
                if let (Some(message), true) = (&message, held) {
                    let held_sent = &mut self.held_sent;
                    devices.retain(|d| match held_sent.get_mut(&d.id()) {
                        Some(top) if message.id <= *top => false,
                        Some(top) => {
                            *top = message.id;
                            true
                        }
                        None => true,
                    });
                }
                if devices.is_empty() {
                    if let (Some(message), false) = (message, held) {
                        requeued += usize::from(s.queue_put_back(&user, message, &mut trace)?);
                    }
                } else {
                    let index = plan.frame(frame);
                    for device in &devices {
                        plan.send(device, index);
                    }
                    connections = devices.len();
                }
            }
            Relayed::ToEveryone {
                about,
                frame,
                order,
            } => {
                // Shown already (this node made it, or a later one), or news.
                let devices = match s.presence_is_news(&about, order) {
                    true => s.all_connections(&mut trace),
                    false => Vec::new(),
                };
                let theirs: Vec<ConnId> = s
                    .local_connections(&about, &mut trace)?
                    .iter()
                    .map(ConnHandle::id)
                    .collect();
                // News: this node's batched connections hear of it at its
                // next tick, the v1 ones by the frame below.
                if let ServerFrame::Presence { status, .. } = &frame {
                    if !devices.is_empty() {
                        self.presence_batch.changed(&about, *status, false);
                    }
                }
                let index = plan.frame(frame);
                for device in devices.iter().filter(|d| !d.presence_batched()) {
                    if !theirs.contains(&device.id()) && device.presence_order() < order {
                        plan.send(device, index);
                        connections += 1;
                    }
                }
            }
            Relayed::TakeQueue { user } => {
                let devices = s.local_connections(&user, &mut trace)?.into_owned();
                // A resuming user's deque is a window of held messages, not a queue to take.
                if !devices.is_empty() && !holds(&devices) {
                    let taken = s.queue_take_all(&user, &mut trace)?;
                    self.withheld.emptied(&user);
                    for message in taken {
                        let index = plan.frame(ServerFrame::Chat {
                            message,
                            offline: true,
                        });
                        for device in &devices {
                            plan.send(device, index);
                        }
                    }
                    connections = devices.len();
                }
            }
            Relayed::Undeliverable { user, message } => {
                requeued += usize::from(s.queue_put_back(&user, message, &mut trace)?);
            }
        }
        let event = Event::Relayed {
            user,
            what,
            connections,
            requeued,
        };
        Ok(self.finish(plan, event, trace))
    }

    /// v1.2: the presence tick. Every change since the last, coalesced, as
    /// one `presence_diff` frame, built once and sent to every batched
    /// connection: one `active_connections.iterate`, O(cap), per tick with
    /// changes, and nothing on a quiet one.
    pub fn presence_tick(&mut self) -> Option<Outcome<S::Conn>> {
        let diff = self.presence_batch.tick()?;
        let mut trace = self.new_trace();
        let mut plan = Plan::new();
        let first = |names: &[UserId]| names.iter().take(DIFF_NAMES).cloned().collect();
        let mut summary = DiffSummary {
            online: diff.online.len(),
            offline: diff.offline.len(),
            first_online: first(&diff.online),
            first_offline: first(&diff.offline),
            connections: 0,
        };
        let frame = plan.frame(ServerFrame::PresenceDiff {
            online: diff.online,
            offline: diff.offline,
        });
        for conn in self.structures.all_connections(&mut trace) {
            if conn.presence_batched() && conn.is_local() {
                plan.send(&conn, frame);
                summary.connections += 1;
            }
        }
        let event = Event::PresenceDiff(summary);
        Some(self.finish(plan, event, trace))
    }

    /// Whether the next presence tick has anything to do (a change to send,
    /// or a welcome to forget): the shell skips, and does not record, the rest.
    pub fn presence_tick_due(&self) -> bool {
        self.presence_batch.due()
    }

    /// Cluster mode: `node` stopped renewing its heartbeat (killed, or cut
    /// off). Its devices are swept from the shared structures, and each user
    /// who had no device anywhere else is announced `offline`, as if their
    /// last connection had closed. Their queues stay: they reconnect elsewhere.
    pub fn node_lost(&mut self, node: &str) -> Step<Outcome<S::Conn>> {
        let mut trace = self.new_trace();
        let mut plan = Plan::new();
        let gone = self.structures.sweep_node(node, &mut trace)?;
        let mut notified = 0;
        if !gone.is_empty() {
            let others = self.structures.online_users(&mut trace)?;
            for user in &gone {
                notified += self.broadcast_presence(
                    &mut plan,
                    user,
                    PresenceStatus::Offline,
                    &others,
                    &mut trace,
                )?;
            }
        }
        let event = Event::NodeLost {
            node: node.to_string(),
            offline: gone,
            notified,
        };
        Ok(self.finish(plan, event, trace))
    }

    /// Answers a frame that could not be parsed: the error goes to the sender only.
    pub fn refuse(&self, user: &UserId, conn: &S::Conn, error: RequestError) -> Outcome<S::Conn> {
        self.refuse_traced(user, conn, error, self.new_trace())
    }

    /// A refusal after some look-ups were made (`inbox_full`, `not_member`): they are narrated too.
    fn refuse_traced(
        &self,
        user: &UserId,
        conn: &S::Conn,
        error: RequestError,
        trace: Trace,
    ) -> Outcome<S::Conn> {
        let mut plan = Plan::new();
        let event = Event::Refused {
            user: user.clone(),
            code: error.code,
            detail: error.detail.clone(),
        };
        plan.reply(conn, ServerFrame::Error(error));
        plan.finish(event, trace)
    }

    /// Carries out one request from `user` on connection `conn`, at time `now_ms`.
    pub fn handle(
        &mut self,
        user: &UserId,
        conn: &S::Conn,
        envelope: Envelope,
        now_ms: u64,
    ) -> Step<Outcome<S::Conn>> {
        let Envelope { reference, request } = envelope;
        let sender = Sender {
            user,
            conn,
            reference,
            now_ms,
        };
        let mut trace = self.new_trace();
        if let Err(error) = self.check_text(&request, &sender.reference) {
            return Ok(self.refuse_traced(user, conn, error, trace));
        }
        let mut plan = Plan::new();
        let routed = match self.check_disk(&request, &sender.reference, &mut trace) {
            Ok(()) => self.route(&mut plan, sender, request, &mut trace),
            Err(stop) => Err(stop),
        };
        match routed {
            Ok(event) => Ok(self.finish(plan, event, trace)),
            Err(Stop::Refused(error)) => Ok(self.refuse_traced(user, conn, error, trace)),
            Err(Stop::Unavailable(why)) => Err(why),
        }
    }

    /// The rule of each request type: the replies and deliveries it plans,
    /// and its event; a refusal when the request is refused (nothing was changed).
    fn route(
        &mut self,
        plan: &mut Plan<S::Conn>,
        sender: Sender<'_, S::Conn>,
        request: Request,
        trace: &mut Trace,
    ) -> Result<Event, Stop> {
        let (user, conn) = (sender.user, sender.conn);
        Ok(match request {
            Request::Message { to, text, receipt } => {
                self.route_message(plan, sender, to, (text, receipt), trace)?
            }
            Request::GroupMessage {
                group,
                text,
                receipt,
            } => self.route_group_message(plan, sender, group, (text, receipt), trace)?,
            Request::GroupJoin { group } => {
                self.may_join(&group, user, sender.reference.clone(), trace)?;
                let members = self.structures.join_group(&group, user, trace)?;
                plan.reply(conn, ack(sender.reference, None, AckStatus::Ok));
                Event::Joined {
                    user: user.clone(),
                    group,
                    members,
                }
            }
            Request::GroupLeave { group } => {
                let was_member = self.structures.leave_group(&group, user, trace)?;
                plan.reply(conn, ack(sender.reference, None, AckStatus::Ok));
                Event::Left {
                    user: user.clone(),
                    group,
                    was_member,
                }
            }
            Request::Block { user: whom } => {
                self.may_block(user, &whom, sender.reference.clone(), trace)?;
                self.structures.block(user, &whom, trace)?;
                plan.reply(conn, ack(sender.reference, None, AckStatus::Ok));
                Event::Blocked {
                    by: user.clone(),
                    whom,
                }
            }
            Request::Unblock { user: whom } => {
                self.structures.unblock(user, &whom, trace)?;
                plan.reply(conn, ack(sender.reference, None, AckStatus::Ok));
                Event::Unblocked {
                    by: user.clone(),
                    whom,
                }
            }
            Request::Who => {
                let online = self.structures.online_users(trace)?;
                let count = online.len();
                plan.reply(conn, ServerFrame::Who { online });
                Event::Who {
                    user: user.clone(),
                    online: count,
                }
            }
            Request::Ping => {
                plan.reply(conn, ServerFrame::Pong);
                Event::Ping { user: user.clone() }
            }
            // No answer: a confirmation is the client's ack, not a request.
            // On a connection that did not resume (v1) it does nothing: its
            // messages were never held, so there is nothing to release.
            Request::Received { .. } if conn.resume().is_none() => Event::Received {
                user: user.clone(),
                upto: None,
                released: 0,
                receipts: 0,
            },
            // An id this run never issued confirms only what it did issue.
            Request::Received { id } => {
                let upto = id.min(self.structures.next_id(self.next_message_id)? - 1);
                let (released, receipts) = self.release(plan, user, upto, trace)?;
                Event::Received {
                    user: user.clone(),
                    upto: Some(upto),
                    released,
                    receipts,
                }
            }
        })
    }

    /// The id of an accepted message: the one the backend issued already, or
    /// the next from its counter. The core's counter then moves past it, so a
    /// cluster node knows the highest id it issued even if Redis forgets.
    fn issue(&mut self, issued: Option<u64>, trace: &mut Trace) -> Step<u64> {
        let id = match issued {
            Some(id) => id,
            None => self.structures.issue_id(self.next_message_id, trace)?,
        };
        Ok(self.settle(id))
    }

    /// The id a message finally has (a cluster's `keep` may raise it): the
    /// core's counter moves past it.
    fn settle(&mut self, id: u64) -> u64 {
        self.next_message_id = self.next_message_id.max(id + 1);
        id
    }

    /// The seed's message flow: blocked? then online (push to every device) or
    /// offline (append to the deque). Exactly one `blocked_users.contains` and
    /// one `active_connections.get` per message, plus `len` and `push_back` when offline.
    fn route_message(
        &mut self,
        plan: &mut Plan<S::Conn>,
        sender: Sender<'_, S::Conn>,
        to: UserId,
        (text, receipt): (Arc<str>, bool),
        trace: &mut Trace,
    ) -> Result<Event, Stop> {
        let Sender {
            user: from,
            conn,
            reference,
            now_ms,
        } = sender;
        let s = &self.structures;
        let DirectFacts {
            queued,
            blocked,
            devices,
            id: issued,
        } = s.direct_facts(from, &to, trace)?;
        let queued = self.budget_seen_by(from, queued);
        if let Err(why) = may_send(queued, &self.config) {
            return Err(RequestError::new(ErrorCode::InboxFull, why, reference).into());
        }
        // Protocol v1.1: a block changes what happens, never what the sender is
        // told. The answer is decided exactly as if there were no block
        // (devices? disk? inbox full?); only then does the block stop the
        // message, so `delivered`, `queued` and `inbox_full` reveal nothing.
        // Live to a resuming user, the message is also held in their deque
        // until confirmed, so it is bounded like a queue (TCP's zero window:
        // the sender waits until the reader catches up).
        let hold = holds(&devices);
        let status = if !devices.is_empty() && !hold {
            AckStatus::Delivered
        } else if let Disk::Unavailable(why) = &self.disk {
            let what = if hold {
                "hold a message for a user whose client confirms receipt"
            } else {
                "queue a message for an offline user"
            };
            return Err(unavailable(why, what, reference).into());
        } else {
            self.room_to_keep(
                (from, &to),
                hold,
                queued,
                text.len(),
                reference.clone(),
                trace,
            )?
        };
        // Planned before the id is known (the frame is built after it), so the
        // devices can stay borrowed from the structures: no copy in memory.
        let live = status == AckStatus::Delivered && !blocked;
        let (first, frame) = (plan.deliveries.len(), plan.frames.len());
        if live {
            // Every device of the recipient; not the sender's other devices.
            for device in devices.iter() {
                plan.send(device, frame);
            }
        }
        drop(devices);
        let id = self.issue(issued, trace)?;
        let mut message = stamp(id, from, Target::User(to.clone()), (text, receipt), now_ms);
        let kept = status == AckStatus::Queued || hold;
        if kept && blocked {
            self.withheld
                .add(&to, from, queued_cost(message.text.len()));
        }
        // Kept: queued for an offline user, or held for a resuming one.
        if kept && !blocked {
            let copy =
                self.structures
                    .keep(message.clone(), std::slice::from_ref(&to), None, trace)?;
            message.id = self.settle(copy.id);
            // The backend sent it itself, in id order: the planned sends go.
            if copy.sent {
                plan.deliveries.truncate(first);
            }
        }
        if plan.deliveries.len() > first {
            plan.frame(ServerFrame::Chat {
                message: message.clone(),
                offline: false,
            });
        }
        let id = message.id;
        plan.reply(conn, ack(reference, Some(id), status));
        Ok(Event::Message {
            from: from.clone(),
            to,
            id,
            status,
            blocked,
            held: hold && !blocked,
        })
    }

    /// A direct message that is kept (queued for an offline user, or held for
    /// a resuming one) needs room in `to`'s deque (`--max-offline`, counting
    /// what a block kept out of it for `from`) and in the budget; then its status.
    fn room_to_keep(
        &self,
        (from, to): (&UserId, &UserId),
        hold: bool,
        queued: QueuedBytes,
        text_bytes: usize,
        reference: Ref,
        trace: &mut Trace,
    ) -> Result<AckStatus, Stop> {
        let max = self.config.max_offline;
        // The copies a block kept out count as if they were there.
        let withheld = self.withheld.copies(to, from);
        if self.structures.queued_len(to, trace)? + withheld >= max {
            let detail = if hold {
                format!(
                    "{to} has {max} messages their client has not confirmed yet \
                     (--max-offline); try again when it catches up"
                )
            } else {
                format!(
                    "{to}'s offline inbox is full ({max} messages); \
                     try again after they reconnect"
                )
            };
            return Err(RequestError::new(ErrorCode::InboxFull, detail, reference).into());
        }
        // Nothing was queued since `queued` was read: it is still true.
        if let Err(why) = room_to_queue(queued, &self.config, text_bytes, hold) {
            return Err(RequestError::new(ErrorCode::InboxFull, why, reference).into());
        }
        Ok(if hold {
            AckStatus::Delivered
        } else {
            AckStatus::Queued
        })
    }

    /// Fan-out to a group: every member's devices except the sending one;
    /// offline members get it queued (skipped if their deque is full);
    /// members who block the sender get nothing. O(m + their devices).
    fn route_group_message(
        &mut self,
        plan: &mut Plan<S::Conn>,
        sender: Sender<'_, S::Conn>,
        group: GroupId,
        (text, receipt): (Arc<str>, bool),
        trace: &mut Trace,
    ) -> Result<Event, Stop> {
        let Sender {
            user: from,
            conn,
            reference,
            now_ms,
        } = sender;
        if !self.structures.is_member(&group, from, trace)? {
            return Err(RequestError::new(
                ErrorCode::NotMember,
                format!("you are not a member of group {group}; send group_join first"),
                reference,
            )
            .into());
        }
        let budget = self.budget_seen_by(from, self.structures.queued_bytes_of(from)?);
        if let Err(why) = may_send(budget, &self.config) {
            return Err(RequestError::new(ErrorCode::InboxFull, why, reference).into());
        }
        let text_bytes = text.len();
        let id = self.issue(None, trace)?;
        let mut message = stamp(
            id,
            from,
            Target::Group(group.clone()),
            (text, receipt),
            now_ms,
        );
        // Built once the id is final (after `keep`); planned for now.
        let (first, frame) = (plan.deliveries.len(), plan.frames.len());
        let Fanout {
            connections,
            queued,
            blocked,
            would_reach,
            would_queue,
            kept_for,
            mut held,
        } = self.fan_out(
            plan,
            (&group, from, conn),
            frame,
            (budget, text_bytes),
            trace,
        )?;
        let s = &mut self.structures;
        if !kept_for.is_empty() {
            let kept = s.keep(message.clone(), &kept_for, Some(conn.id()), trace)?;
            message.id = self.settle(kept.id);
            if kept.sent {
                held.clear();
            }
        }
        for device in &held {
            plan.send(device, frame);
        }
        if plan.deliveries.len() > first {
            plan.frame(ServerFrame::Chat {
                message: message.clone(),
                offline: false,
            });
        }
        let id = message.id;
        let status = if would_reach > 0 {
            AckStatus::Delivered
        } else if would_queue > 0 {
            AckStatus::Queued
        } else {
            AckStatus::Sent
        };
        plan.reply(conn, ack(reference, Some(id), status));
        Ok(Event::GroupMessage {
            from: from.clone(),
            group,
            id,
            status,
            connections,
            queued,
            blocked,
        })
    }

    /// A group message's copies, member by member: planned live to each
    /// device (not the sending one), or kept in the member's deque when they
    /// are offline or resumed and it has room. The sender is told as if no
    /// member blocked them (v1.1: a block is undetectable); a blocking member
    /// gets nothing, and the copy a block kept out is counted (`withheld`).
    fn fan_out(
        &mut self,
        plan: &mut Plan<S::Conn>,
        (group, from, conn): (&GroupId, &UserId, &S::Conn),
        frame: usize,
        (mut budget, text_bytes): (QueuedBytes, usize),
        trace: &mut Trace,
    ) -> Step<Fanout<S::Conn>> {
        let (max, cost) = (self.config.max_offline, queued_cost(text_bytes));
        let s = &mut self.structures;
        let mut out = Fanout::default();
        for member in s.group_members(group, trace)? {
            // The sender's own devices get it too; she is never checked
            // against her own block set.
            let blocks = member != *from && s.is_blocked(&member, from, trace)?;
            out.blocked += usize::from(blocks);
            let devices = s.connections(&member, trace)?;
            let reach = devices.iter().filter(|d| d.id() != conn.id());
            // Held for a member when a device it goes to resumed (the
            // sending device gets nothing, so it does not count); a full
            // window skips them as a full queue skips an offline member.
            let hold = reach.clone().any(|d| d.resume().is_some());
            let online = !devices.is_empty();
            // A held or queued copy needs room in the member's deque (checked
            // only then: a live-only copy costs no `len`), and in the budget,
            // counting the copies kept for the members before.
            let withheld = self.withheld.copies(&member, from);
            let keep = (hold || !online)
                && s.queued_len(&member, trace)? + withheld < max
                && room_to_queue(budget, &self.config, text_bytes, hold).is_ok();
            if online && (keep || !hold) {
                for device in reach {
                    out.would_reach += 1;
                    if !blocks {
                        // A held copy waits for `keep`, which may send it itself.
                        match hold {
                            true => out.held.push(device.clone()),
                            false => plan.send(device, frame),
                        }
                        out.connections += 1;
                    }
                }
            } else if keep {
                out.would_queue += 1;
                out.queued += usize::from(!blocks);
            }
            drop(devices);
            if keep {
                budget.all += cost;
                budget.sender += cost;
                match blocks {
                    true => self.withheld.add(&member, from, cost),
                    false => out.kept_for.push(member),
                }
            }
        }
        Ok(out)
    }

    /// While the disk cannot be written, refuses every request that changes
    /// durable state: joins, leaves, blocks, unblocks, and a group message that
    /// would be queued for an offline member (found by one look-up per member,
    /// paid only while the disk is failing). A direct message is checked in
    /// `route_message`, where it is known whether it would be queued.
    fn check_disk(
        &self,
        request: &Request,
        reference: &Ref,
        trace: &mut Trace,
    ) -> Result<(), Stop> {
        let Disk::Unavailable(why) = &self.disk else {
            return Ok(());
        };
        let what = match request {
            Request::GroupJoin { .. } => "join a group",
            Request::GroupLeave { .. } => "leave a group",
            Request::Block { .. } => "block a user",
            Request::Unblock { .. } => "unblock a user",
            Request::GroupMessage { group, .. } => {
                let s = &self.structures;
                let mut queues = false;
                for member in s.group_members(group, trace)? {
                    if s.connections(&member, trace)?.is_empty() {
                        queues = true;
                        break;
                    }
                }
                if !queues {
                    return Ok(());
                }
                "queue a group message for its offline members"
            }
            _ => return Ok(()),
        };
        Err(unavailable(why, what, reference.clone()).into())
    }

    /// `--max-text-chars`: counted in characters, as a reader would count them.
    /// O(n) in the text, which parsing has already paid for.
    fn check_text(&self, request: &Request, reference: &Ref) -> Result<(), RequestError> {
        let (Request::Message { text, .. } | Request::GroupMessage { text, .. }) = request else {
            return Ok(());
        };
        match self.config.max_text_chars {
            Some(max) if text.chars().count() > max => Err(RequestError::new(
                ErrorCode::LimitReached,
                format!(
                    "text of {} characters is over this server's limit of {max} (--max-text-chars); \
                     split it into shorter messages",
                    text.chars().count()
                ),
                reference.clone(),
            )),
            _ => Ok(()),
        }
    }

    /// `--max-group-size` and `--max-groups`. A member joining again is always
    /// fine (joining is idempotent). Costs one O(1) `len`, plus one more only
    /// when the group is new or full.
    fn may_join(
        &self,
        group: &GroupId,
        user: &UserId,
        reference: Ref,
        trace: &mut Trace,
    ) -> Result<(), Stop> {
        let s = &self.structures;
        let size = s.group_len(group, trace)?;
        let (max_size, max_groups) = (self.config.max_group_size, self.config.max_groups);
        let per_user = self.config.max_groups_per_user;
        let detail = if s.groups_of(user)? >= per_user && !s.is_member(group, user, trace)? {
            format!(
                "you are already in {per_user} groups, the most one user may be in \
                 (--max-groups-per-user); leave one first"
            )
        } else if size == 0 && s.group_count(trace)? >= max_groups {
            format!(
                "this server already has its maximum of {max_groups} groups (--max-groups); \
                 join an existing group instead"
            )
        } else if size >= max_size && !s.is_member(group, user, trace)? {
            format!("group {group} is full ({max_size} members, --max-group-size)")
        } else {
            return Ok(());
        };
        Err(RequestError::new(ErrorCode::LimitReached, detail, reference).into())
    }

    /// `--max-blocked`: how many users one user may block. Blocking someone
    /// already blocked is always fine.
    fn may_block(
        &self,
        by: &UserId,
        whom: &UserId,
        reference: Ref,
        trace: &mut Trace,
    ) -> Result<(), Stop> {
        let s = &self.structures;
        let max = self.config.max_blocked;
        if s.blocked_len(by, trace)? >= max && !s.is_blocked(by, whom, trace)? {
            return Err(RequestError::new(
                ErrorCode::LimitReached,
                format!("you already block {max} users (--max-blocked); unblock someone first"),
                reference,
            )
            .into());
        }
        Ok(())
    }

    /// One user's open connections (one `active_connections` look-up, counted).
    pub fn devices(&mut self, user: &UserId) -> Step<Vec<S::Conn>> {
        let mut trace = self.new_trace();
        Ok(self.structures.connections(user, &mut trace)?.into_owned())
    }

    /// Every open connection, for a graceful shutdown that closes each with 1001.
    pub fn all_connections(&self) -> Vec<S::Conn> {
        self.structures.all_connections(&mut Trace::new(false))
    }
}
