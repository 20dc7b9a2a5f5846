// The chat page: the terminal client's features in a browser. It speaks the
// wire protocol (docs/protocol.md) over one WebSocket to /ws/NAME?token=KEY.
import { NAME, el, clock, store, backoff } from "/assets/common.js";

const $ = (id) => document.getElementById(id);
const ui = {
  join: $("join"), name: $("name"), tokenRow: $("token-row"), token: $("token"), joinError: $("join-error"),
  chat: $("chat"), log: $("log"), online: $("online"), onlineCount: $("online-count"), groups: $("groups"),
  send: $("send"), to: $("to"), message: $("message"),
  me: $("me"), state: $("state"), quit: $("quit"),
};

/** Entries kept in the log; older ones are dropped so a long lesson stays light. */
const MAX_ENTRIES = 400;

const HELP = [
  ["TEXT", "send TEXT to the person or #group in To"],
  ["/to bob | /to #g1", "talk to bob, or to group g1, from now on"],
  ["@bob TEXT", "send one message to bob"],
  ["#g1 TEXT", "send one message to group g1"],
  ["/msg bob TEXT", "send one message to bob"],
  ["/g g1 TEXT", "send one message to group g1"],
  ["/join g1", "join (or create) group g1"],
  ["/leave g1", "leave group g1 (/leave alone: the group in To)"],
  ["/block bob", "receive nothing from bob until /unblock"],
  ["/unblock bob", "receive bob's messages again"],
  ["/who", "list who is online"],
  ["/ping", "measure the round trip to the server"],
  ["/key", "show this name's key, to use the name on another device"],
  ["/help", "show this list"],
  ["/quit", "leave the chat"],
  ["//TEXT", "send TEXT that starts with a slash"],
];

const state = {
  name: null,
  token: null,
  socket: null,
  attempt: 0,
  everOpened: false,
  retryTimer: null,
  leaving: false,
  online: new Set(),
  groups: new Set(),
  pending: new Map(), // ref -> { entry, kind, target }
  nextRef: 1,
  pings: [], // send times of pings not yet answered, oldest first
  // Resume (protocol v1.1): the highest message id shown, the highest one
  // confirmed with `received`, and the server run they belong to. The server
  // holds each message until it is confirmed, so a phone that drops its
  // connection mid-flush gets the rest, and an id is never shown twice.
  shown: 0,
  confirmed: 0,
  epoch: null,
  resuming: true, // until a welcome without `resume` says otherwise
  unconfirmed: 0,
  confirmTimer: null,
  sentById: new Map(), // id of a message this page sent -> its entry, for the second tick
};

// At most one `received` per 100 ms or per 64 messages shown.
const CONFIRM_MS = 100;
const CONFIRM_BATCH = 64;

// ---------------------------------------------------------------- the log

function atBottom() {
  const log = ui.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

function append(node) {
  const follow = atBottom();
  ui.log.append(node);
  while (ui.log.childElementCount > MAX_ENTRIES) ui.log.firstElementChild.remove();
  if (follow) ui.log.scrollTop = ui.log.scrollHeight;
  return node;
}

function notice(text, kind = "") {
  return append(el("p", { class: `notice ${kind}` }, text));
}

function describeTarget(target) {
  return target.startsWith("#") ? target : target === state.name ? "you" : target;
}

function messageEntry({ mine, from, to, group, text, ts, offline }) {
  const where = group ? `#${group} · ${from}` : mine ? `you → ${to}` : `${from} → you`;
  const meta = el("span", { class: "meta" }, `${where} · ${clock(ts)}`);
  const entry = el(
    "article",
    { class: `entry${mine ? " mine" : ""}${group ? " group" : ""}${offline ? " offline" : ""}` },
    meta,
    offline ? el("span", { class: "tag" }, `sent ${clock(ts)} while you were offline`) : null,
    el("p", { class: "text" }, text),
  );
  return append(entry);
}

function setStatus(entry, text, kind) {
  let status = entry.querySelector(".status");
  if (!status) status = entry.appendChild(el("span", { class: "status" }));
  status.className = `status ${kind}`;
  status.textContent = text;
}

// ---------------------------------------------------------------- people

/** A name in a list: tapping it makes it the To of the next message. */
function pick(label, target) {
  return el("button", { type: "button", class: "pick", "data-to": target, title: `Write to ${target}` }, label);
}

function renderOnline() {
  const names = [...state.online].sort();
  ui.online.replaceChildren(
    ...names.map((n) => el("li", {}, pick(n, n), n === state.name ? el("span", { class: "you" }, " (you)") : null)),
  );
  ui.onlineCount.textContent = `(${names.length})`;
}

function renderGroups() {
  ui.groups.replaceChildren(...[...state.groups].sort().map((g) => el("li", {}, pick(g, `#${g}`))));
  store.set(`vivachat:groups:${state.name}`, JSON.stringify([...state.groups]));
  renderOnline();
}

// ---------------------------------------------------------------- connection

function setState(text, live) {
  ui.state.textContent = text;
  ui.state.className = `state ${live ? "live" : "down"}`;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = `&resume=${state.shown}${state.epoch ? `&epoch=${encodeURIComponent(state.epoch)}` : ""}`;
  // presence=batched (v1.2): who came and went arrives as one diff per tick.
  return `${scheme}://${location.host}/ws/${encodeURIComponent(state.name)}?token=${encodeURIComponent(state.token)}${resume}&presence=batched`;
}

// ---------------------------------------------------------------- resume

function savePosition() {
  store.set(`vivachat:resume:${state.name}`, JSON.stringify({ received: state.confirmed, epoch: state.epoch }));
}

function loadPosition(name) {
  try {
    const saved = JSON.parse(store.get(`vivachat:resume:${name}`) || "null");
    if (saved && Number.isSafeInteger(saved.received) && saved.received >= 0) {
      return { shown: saved.received, confirmed: saved.received, epoch: typeof saved.epoch === "string" ? saved.epoch : null };
    }
  } catch {
    // A damaged entry: start from 0 (the server re-sends what it holds).
  }
  return { shown: 0, confirmed: 0, epoch: null };
}

/** Tells the server everything up to the last message shown has arrived. */
function confirmReceived() {
  clearTimeout(state.confirmTimer);
  state.confirmTimer = null;
  if (!state.resuming || state.shown <= state.confirmed) return;
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  state.socket.send(JSON.stringify({ type: "received", id: state.shown }));
  state.confirmed = state.shown;
  state.unconfirmed = 0;
  savePosition();
}

/** A chat frame arrived: false if it was shown before (a re-send after a reconnect). */
function firstTime(frame) {
  if (!state.resuming) return true;
  if (!Number.isSafeInteger(frame.id) || frame.id <= state.shown) return false;
  state.shown = frame.id;
  state.unconfirmed += 1;
  if (state.unconfirmed >= CONFIRM_BATCH) confirmReceived();
  else if (!state.confirmTimer) state.confirmTimer = setTimeout(confirmReceived, CONFIRM_MS);
  return true;
}

function connect() {
  clearTimeout(state.retryTimer);
  setState(state.everOpened ? "reconnecting…" : "connecting…", false);
  const socket = new WebSocket(socketUrl());
  state.socket = socket;
  let opened = false;
  socket.onopen = () => {
    opened = true;
    state.everOpened = true;
    state.attempt = 0;
    setState("connected", true);
    showChat();
  };
  socket.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      notice(`The server sent something that is not JSON: ${String(event.data).slice(0, 200)}`, "error");
      return;
    }
    receive(frame);
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    for (const { entry } of state.pending.values()) {
      if (entry) setStatus(entry, "not confirmed: the connection closed", "failed");
    }
    state.pending.clear();
    state.pings = [];
    if (state.leaving) return;
    if (!opened && !state.everOpened) {
      explainRefusal();
      return;
    }
    if (event.code === 4001) {
      notice(`Another device claimed the name ${state.name} with its own key. Join with another name.`, "error");
      setState("name taken", false);
      return;
    }
    const why = {
      1001: "the server is restarting",
      1008: "this device fell behind (it did not read its messages in time)",
      1009: "a message was too large",
      1012: "this server node lost its place in the cluster",
      1013: "the server could not reach its shared store",
      4000: "the connection was silent too long",
    }[event.code];
    scheduleRetry(why);
  };
}

function scheduleRetry(why) {
  const delay = backoff(state.attempt);
  state.attempt += 1;
  const seconds = Math.ceil(delay / 1000);
  setState(`offline · retrying in ${seconds} s`, false);
  notice(`Disconnected${why ? `: ${why}` : ""}. Reconnecting in ${seconds} s (attempt ${state.attempt}); messages sent to you meanwhile wait in your offline queue.`);
  state.retryTimer = setTimeout(connect, delay);
}

/** A browser is never told why an upgrade was refused, so ask the server about the name. */
async function explainRefusal() {
  try {
    const reply = await fetch(`/names/${encodeURIComponent(state.name)}`, { cache: "no-store" });
    const info = await reply.json();
    if (info.error) return backToJoin(`That name cannot be used: ${info.error}`);
    if (info.claimed) {
      ui.tokenRow.hidden = false;
      return backToJoin(`The name ${state.name} is already taken by someone else's device. Choose another name, or enter this name's key.`);
    }
    backToJoin("The server refused the connection (it may be full or shutting down). Try again in a moment.");
  } catch {
    backToJoin("Could not reach the server. Check the address and the network, then try again.");
  }
}

function backToJoin(error) {
  state.socket = null;
  setState("not connected", false);
  ui.chat.hidden = true;
  ui.quit.hidden = true;
  ui.join.hidden = false;
  ui.joinError.textContent = error || "";
  ui.me.textContent = "";
  ui.name.focus();
}

function showChat() {
  ui.join.hidden = true;
  ui.chat.hidden = false;
  ui.quit.hidden = false;
  ui.me.textContent = state.name;
  document.title = `${state.name} · vivachat`;
  if (document.activeElement === document.body || !ui.chat.contains(document.activeElement)) {
    (ui.to.value ? ui.message : ui.to).focus();
  }
}

function sendFrame(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    notice("Not connected right now: wait for the connection to come back, then send again.", "error");
    return false;
  }
  state.socket.send(JSON.stringify(frame));
  return true;
}

function request(frame, pending) {
  const ref = `r${state.nextRef++}`;
  if (!sendFrame({ ...frame, ref })) return null;
  state.pending.set(ref, pending);
  return ref;
}

// ---------------------------------------------------------------- frames in

const ACK_WORDS = {
  delivered: ["delivered", "delivered"],
  queued: ["queued: delivered when they connect", "queued"],
  sent: ["sent: nobody else was there to get it", "sent"],
};

function receive(frame) {
  switch (frame.type) {
    case "welcome": {
      // Where the server resumed from: our position, or 0 if it could not
      // trust it (it restarted, and its ids now mean other messages).
      // No `resume` in the welcome: the server did not resume (a v1
      // server), so ids may arrive out of order: none is skipped, and
      // nothing is confirmed on this connection.
      state.resuming = Number.isSafeInteger(frame.resume);
      if (state.resuming) {
        state.shown = frame.resume;
        state.confirmed = frame.resume;
        state.unconfirmed = 0;
        state.epoch = typeof frame.epoch === "string" ? frame.epoch : null;
        savePosition();
      }
      state.online = new Set([...(frame.online || []), state.name]);
      renderOnline();
      const others = (frame.online || []).length;
      notice(`Connected as ${frame.user}. ${others === 0 ? "Nobody else is online yet." : `${others} other(s) online.`}${frame.queued ? ` ${frame.queued} message(s) waited for you:` : ""}`);
      break;
    }
    case "message":
      if (!firstTime(frame)) break;
      messageEntry({ mine: false, from: frame.from, to: frame.to, text: frame.text, ts: frame.ts, offline: frame.offline });
      break;
    case "group_message":
      if (!firstTime(frame)) break;
      messageEntry({ mine: frame.from === state.name, from: frame.from, group: frame.group, text: frame.text, ts: frame.ts, offline: frame.offline });
      break;
    case "receipt": {
      // The second tick: the recipient's device confirmed it arrived.
      const sent = state.sentById.get(frame.id);
      if (!sent) break;
      if (frame.user) sent.readers.add(frame.user);
      const who = sent.readers.size ? ` by ${[...sent.readers].sort().join(", ")}` : "";
      setStatus(sent.entry, `✓✓ received${who}`, "received");
      break;
    }
    case "ack":
      acknowledged(frame);
      break;
    case "error":
      refused(frame);
      break;
    case "presence":
      if (frame.status === "online") state.online.add(frame.user);
      else state.online.delete(frame.user);
      renderOnline();
      notice(`${frame.user} ${frame.status === "online" ? "is online" : "went offline"}`);
      break;
    case "presence_diff":
      presenceDiff(frame);
      break;
    case "who":
      state.online = new Set(frame.online || []);
      state.online.add(state.name);
      renderOnline();
      notice(`Online (${state.online.size}): ${[...state.online].sort().join(", ")}`);
      break;
    case "pong": {
      const at = state.pings.shift();
      notice(at === undefined ? "pong" : `pong: ${Math.round(performance.now() - at)} ms round trip`);
      break;
    }
    default:
      notice(`The server sent a frame this page does not know: ${JSON.stringify(frame).slice(0, 200)}`);
  }
}

/** A tick's changes, applied as set operations: a repeat changes nothing,
 * and only what really changed here is said (one line each, or one line for
 * a crowd, so a class arriving at once does not flood the log). */
function presenceDiff(frame) {
  const came = (frame.online || []).filter((u) => u !== state.name && !state.online.has(u));
  const went = (frame.offline || []).filter((u) => u !== state.name && state.online.has(u));
  for (const u of came) state.online.add(u);
  for (const u of went) state.online.delete(u);
  if (came.length + went.length === 0) return;
  renderOnline();
  const say = (users, one, many) => {
    if (users.length <= 3) for (const u of users) notice(`${u} ${one}`);
    else notice(`${users.length} ${many}: ${users.slice(0, 8).join(", ")}${users.length > 8 ? ", …" : ""}`);
  };
  say(came, "is online", "came online");
  say(went, "went offline", "went offline");
}

function acknowledged(frame) {
  const pending = frame.ref !== undefined ? state.pending.get(frame.ref) : undefined;
  if (!pending) return;
  state.pending.delete(frame.ref);
  switch (pending.kind) {
    case "message": {
      const [words, kind] = ACK_WORDS[frame.status] || [frame.status, ""];
      setStatus(pending.entry, words, kind);
      if (Number.isSafeInteger(frame.id)) {
        state.sentById.set(frame.id, { entry: pending.entry, readers: new Set() });
        // Only the newest few hundred can still get a tick on screen.
        if (state.sentById.size > MAX_ENTRIES) state.sentById.delete(state.sentById.keys().next().value);
      }
      break;
    }
    case "join":
      state.groups.add(pending.target);
      renderGroups();
      notice(`You joined #${pending.target}. Messages to #${pending.target} now reach you, even while you are offline.`);
      break;
    case "leave":
      state.groups.delete(pending.target);
      renderGroups();
      notice(`You left #${pending.target}.`);
      break;
    case "block":
      notice(`You block ${pending.target}: nothing they send reaches you (they are not told).`);
      break;
    case "unblock":
      notice(`You no longer block ${pending.target}.`);
      break;
  }
}

const ERROR_HINTS = {
  not_member: "join the group first with /join",
  inbox_full: "their offline queue is full; try again after they reconnect",
  rate_limited: "you are sending too fast; wait a moment",
  too_large: "the message is too long",
  invalid_user: "names are 1 to 32 letters, digits or _ . -",
  invalid_group: "group names are 1 to 32 letters, digits or _ . -",
  limit_reached: "a server limit was reached",
  unavailable: "the server cannot save right now; send it again later",
};

function refused(frame) {
  const pending = frame.ref !== undefined ? state.pending.get(frame.ref) : undefined;
  if (pending) state.pending.delete(frame.ref);
  const hint = ERROR_HINTS[frame.code];
  const text = `${frame.detail || frame.code}${hint ? ` (${hint})` : ""}`;
  if (pending && pending.entry) setStatus(pending.entry, `not sent: ${text}`, "failed");
  else notice(`Refused: ${text}`, "error");
}

// ---------------------------------------------------------------- what the user typed

/** A user (`bob`, `@bob`) or group (`#g1`), or an explanation of what is wrong. */
function parseTarget(raw) {
  const value = raw.trim();
  const group = value.startsWith("#");
  const name = value.replace(/^[#@]/, "");
  if (!name) return { error: "Say who it is for: a name in To, or #group." };
  if (!NAME.test(name)) return { error: `"${name}" is not a valid ${group ? "group" : "user"} name: 1 to 32 letters, digits or _ . -` };
  return { target: group ? `#${name}` : name };
}

function sendText(rawTarget, text) {
  const { target, error } = parseTarget(rawTarget);
  if (error) return notice(error, "error");
  if (!text.trim()) return null;
  const group = target.startsWith("#");
  // Every message asks for a receipt: "received" appears when it arrived.
  const frame = group
    ? { type: "group_message", group: target.slice(1), text, receipt: true }
    : { type: "message", to: target, text, receipt: true };
  const entry = messageEntry({ mine: true, from: state.name, to: describeTarget(target), group: group ? target.slice(1) : null, text, ts: Date.now() });
  setStatus(entry, "sending…", "");
  if (!request(frame, { kind: "message", entry })) setStatus(entry, "not sent: not connected", "failed");
  return entry;
}

function nameArg(arg, usage, what = "user") {
  const name = arg.trim().replace(what === "group" ? /^#/ : /^@/, "");
  if (!name) { notice(`usage: ${usage}`, "error"); return null; }
  if (!NAME.test(name)) { notice(`"${name}" is not a valid ${what} name (usage: ${usage})`, "error"); return null; }
  return name;
}

function command(line) {
  const [word, ...rest] = line.slice(1).split(/\s+/);
  const arg = rest.join(" ");
  const tail = line.slice(1 + word.length).replace(/^\s+/, "");
  switch (word.toLowerCase()) {
    case "to": {
      const { target, error } = parseTarget(arg);
      if (error) return notice(`${error} (usage: /to bob or /to #g1)`, "error");
      ui.to.value = target;
      store.set(`vivachat:to:${state.name}`, target);
      return notice(`Now talking to ${target}.`);
    }
    case "msg": {
      const [who, ...words] = tail.split(/\s+/);
      return sendText(who || "", words.join(" "));
    }
    case "g": {
      const [group, ...words] = tail.split(/\s+/);
      return sendText(`#${(group || "").replace(/^#/, "")}`, words.join(" "));
    }
    case "join": {
      const g = nameArg(arg, "/join g1", "group");
      if (g) request({ type: "group_join", group: g }, { kind: "join", target: g });
      return;
    }
    case "leave": {
      const fallback = ui.to.value.trim().startsWith("#") ? ui.to.value.trim() : "";
      const g = nameArg(arg || fallback, "/leave g1", "group");
      if (g) request({ type: "group_leave", group: g }, { kind: "leave", target: g });
      return;
    }
    case "block":
    case "unblock": {
      const u = nameArg(arg, `/${word} bob`);
      if (u) request({ type: word.toLowerCase(), user: u }, { kind: word.toLowerCase(), target: u });
      return;
    }
    case "who":
      return sendFrame({ type: "who" });
    case "ping":
      if (sendFrame({ type: "ping" })) state.pings.push(performance.now());
      return;
    case "key":
      return notice(`The key of ${state.name} is ${state.token}. To use this name on another device, join there as ${state.name} and enter this key. Anyone with it can use your name.`);
    case "help":
      return append(el("p", { class: "notice help" }, HELP.map(([u, d]) => `${u.padEnd(20)} ${d}`).join("\n")));
    case "quit":
      return leave();
    default:
      return notice(`Unknown command /${word}. Type /help for the list, or //text to send text that starts with a slash.`, "error");
  }
}

function submitLine() {
  const line = ui.message.value;
  if (!line.trim()) return;
  ui.message.value = "";
  if (line.startsWith("//")) return sendText(ui.to.value, line.slice(1));
  if (line.startsWith("/")) return command(line.trim());
  const direct = line.match(/^([@#])([^\s]+)\s+([\s\S]+)$/);
  if (direct) return sendText(`${direct[1] === "#" ? "#" : ""}${direct[2]}`, direct[3]);
  return sendText(ui.to.value, line);
}

// ---------------------------------------------------------------- joining and leaving

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function join(event) {
  event.preventDefault();
  const name = ui.name.value.trim();
  if (!NAME.test(name)) {
    ui.joinError.textContent = name ? `"${name}" is not a valid name: use 1 to 32 letters, digits or _ . -` : "Type your name first.";
    ui.name.focus();
    return;
  }
  const typedKey = ui.token.value.trim();
  const key = typedKey || store.get(`vivachat:token:${name}`) || randomKey();
  store.set(`vivachat:token:${name}`, key);
  store.set("vivachat:name", name);
  ui.joinError.textContent = "";
  ui.token.value = "";
  Object.assign(state, { name, token: key, attempt: 0, everOpened: false, leaving: false, unconfirmed: 0 }, loadPosition(name));
  state.sentById = new Map();
  state.online = new Set();
  state.groups = new Set(JSON.parse(store.get(`vivachat:groups:${name}`) || "[]"));
  ui.log.replaceChildren();
  ui.to.value = store.get(`vivachat:to:${name}`) || "";
  renderGroups();
  connect();
}

function leave() {
  confirmReceived();
  state.leaving = true;
  clearTimeout(state.retryTimer);
  if (state.socket) state.socket.close(1000, "left");
  state.socket = null;
  store.remove("vivachat:name");
  backToJoin("");
}

ui.join.addEventListener("submit", join);
ui.send.addEventListener("submit", (event) => {
  event.preventDefault();
  submitLine();
  ui.message.focus();
});
ui.to.addEventListener("change", () => store.set(`vivachat:to:${state.name}`, ui.to.value.trim()));
ui.quit.addEventListener("click", leave);
for (const list of [ui.online, ui.groups]) {
  list.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-to]");
    if (!target) return;
    ui.to.value = target.dataset.to;
    store.set(`vivachat:to:${state.name}`, ui.to.value);
    ui.message.focus();
  });
}
// A tab being closed confirms what it showed, so it is not sent again next time.
window.addEventListener("pagehide", confirmReceived);
// Back online (a phone leaving a tunnel, a laptop waking): try at once.
window.addEventListener("online", () => {
  if (state.everOpened && !state.socket && !state.leaving) connect();
});

ui.name.value = store.get("vivachat:name") || "";
ui.name.focus();
