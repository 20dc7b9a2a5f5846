// The board: draws each frame of /board/feed (one JSON object per line, at
// most 10 a second, built by the server from one snapshot) as pictures of
// the five structures. Items are keyed, so what is new slides in and what
// left fades out instead of the whole picture being redrawn.
import { el, store, backoff } from "/assets/common.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "vivachat:admin-token";
/** Between items that enter or leave together, so their order can be seen. */
const STAGGER_MS = 120;

/** Render timings, for docs/performance.md (read by the browser tests too). */
const stats = { frames: 0, renderMsTotal: 0, renderMsMax: 0, lastSeq: 0 };
window.vivachatBoard = stats;

// ---------------------------------------------------------------- keyed lists

/**
 * Makes `container` show `items` in order, one child per key: existing
 * children are updated in place, new ones get `enter`, gone ones get
 * `leave` and are removed when it ends.
 */
function reconcile(container, items, key, create, update) {
  const old = new Map();
  for (const child of container.children) {
    if (child.dataset.key !== undefined && !child.classList.contains("leave")) old.set(child.dataset.key, child);
  }
  const wanted = new Set(items.map(key));
  // Several leaving at once (a deque flushed) go one after another, first
  // first, so the class sees pop_front take them from the front in order.
  let leaving = 0;
  for (const [k, child] of old) {
    if (!wanted.has(k)) {
      const delay = Math.min(leaving++, 12) * STAGGER_MS;
      child.style.animationDelay = `${delay}ms`;
      child.classList.add("leave");
      setTimeout(() => child.remove(), delay + 700);
    }
  }
  let entering = 0;
  let previous = null;
  for (const item of items) {
    const k = key(item);
    let node = old.get(k);
    if (node) {
      update?.(node, item);
    } else {
      node = create(item);
      node.dataset.key = k;
      if (container.childElementCount > 0 || stats.frames > 0) {
        node.style.animationDelay = `${Math.min(entering++, 12) * STAGGER_MS}ms`;
        node.classList.add("enter");
      }
    }
    // Move only what is out of place: moving restarts a node's animation.
    const want = previous ? previous.nextElementSibling : container.firstElementChild;
    if (want !== node) {
      // Leaving nodes stay where they were until they are gone.
      let anchor = want;
      while (anchor && anchor.classList.contains("leave") && anchor !== node) anchor = anchor.nextElementSibling;
      if (anchor !== node) container.insertBefore(node, anchor);
    }
    previous = node;
  }
}

function more(container, count, what) {
  let tail = container.querySelector(":scope > .more");
  if (count > 0) {
    if (!tail) tail = el("span", { class: "more" });
    tail.textContent = `+${count} more ${what}`;
    container.append(tail);
  } else if (tail) {
    tail.remove();
  }
}

/**
 * Nothing is cut: while `box` overflows its region, its last entries are
 * hidden, whole, and counted in "+N more" with those the server left out.
 */
function fit(box, leftOut, what) {
  const entries = [...box.querySelectorAll(":scope > [data-key]:not(.leave)")];
  for (const node of entries) node.hidden = false;
  let hidden = 0;
  while (box.scrollHeight > box.clientHeight + 1 && hidden < entries.length) {
    entries[entries.length - 1 - hidden].hidden = true;
    hidden += 1;
    more(box, leftOut + hidden, what);
  }
}

function emptyNote(container, isEmpty, text) {
  let note = container.querySelector(":scope > .empty");
  if (isEmpty && !note) container.append(el("span", { class: "empty" }, text));
  if (!isEmpty && note) note.remove();
}

// ---------------------------------------------------------------- the five structures

/**
 * One structure's region: a keyed node per entry (`row` makes it), `inner`
 * updates what is inside an entry, then "+N more" and the empty note.
 */
function drawStructure(id, shown, { key, row, inner, what, empty }) {
  const box = $(id);
  reconcile(box, shown.items, key, row);
  for (const item of inner ? shown.items : []) {
    inner(box.querySelector(`:scope > [data-key="${CSS.escape(key(item))}"]`), item);
  }
  more(box, shown.more, what);
  emptyNote(box, shown.items.length === 0, empty);
  fit(box, shown.more, what);
}

/** A keyed list of names inside `node`'s `selector`, each made by `make`. */
function names(node, selector, list, make) {
  reconcile(node.querySelector(selector), list, (n) => String(n.id ?? n), make);
}

function queuedBox(b) {
  return el(
    "span",
    { class: `box${b.group ? " group" : ""}`, title: b.group ? `#${b.group} from ${b.from}` : `from ${b.from}` },
    el("b", {}, `#${b.id}`),
    b.group ? `${b.from}→#${b.group}` : b.from,
  );
}

/** A deque's boxes, front first; a long deque's gap sits after its front boxes, keyed like a box. */
function drawDeque(row, d) {
  const items = d.boxes.map((b) => ({ key: String(b.id), b }));
  if (d.skipped > 0) items.splice(Math.min(4, items.length), 0, { key: "gap" });
  const boxes = row.querySelector(".boxes");
  reconcile(boxes, items, (i) => i.key, (i) => (i.b ? queuedBox(i.b) : el("span", { class: "gap" })));
  const gap = boxes.querySelector('[data-key="gap"]');
  if (gap) gap.textContent = `… ${d.skipped} more …`;
  row.querySelector(".len").textContent = `len ${d.len}`;
}

function drawStructures(frame) {
  drawStructure("active", frame.active_connections, {
    key: (d) => d.user,
    row: (d) => el("span", { class: "key" }, el("span", { class: "user" }, d.user), el("span", { class: "chips" })),
    inner: (node, d) => names(node, ".chips", d.devices, (c) => el("span", { class: "chip", title: c.remote || "" }, `#${c.id}`)),
    what: "users",
    empty: "empty: nobody connected",
  });
  drawStructure("presence", frame.presence, {
    key: (u) => u,
    row: (u) => el("span", { class: "pill" }, u),
    what: "online",
    empty: "empty: nobody online",
  });
  drawDiff(frame.presence_diff);
  drawStructure("offline", frame.offline_messages, {
    key: (d) => d.user,
    row: (d) =>
      el(
        "div",
        { class: "deque" },
        // The length under the name, so a long deque wraps its boxes, never its len.
        el("span", { class: "owner" }, el("b", {}, d.user), el("span", { class: "len" })),
        el("span", { class: "end" }, "front"),
        el("span", { class: "boxes" }),
        el("span", { class: "end" }, "back"),
      ),
    inner: drawDeque,
    what: "deques",
    empty: "empty: no queued messages",
  });
  drawStructure("groups", frame.group_members, {
    key: (g) => g.group,
    row: (g) => el("span", { class: "set" }, el("span", { class: "gname" }, `#${g.group}`), el("span", { class: "members" })),
    inner: (node, g) => names(node, ".members", g.members, (m) => el("span", { class: "member" }, m)),
    what: "groups",
    empty: "empty: no groups (/join g1 makes one)",
  });
  drawStructure("blocked", frame.blocked_users, {
    key: (b) => b.by,
    row: (b) => el("div", { class: "block-row" }, el("span", { class: "by" }, b.by), el("span", { class: "arrow" }, "blocks"), el("span", { class: "whoms" })),
    inner: (node, b) => names(node, ".whoms", b.whom, (w) => el("span", { class: "whom" }, w)),
    what: "blockers",
    empty: "empty: nobody blocks anyone",
  });
}

let diffId = null;

/**
 * The latest batched-presence tick under the pills: who arrived (+) and left
 * (−), and that it was one frame, built once, for every batched connection.
 * A new tick flashes the line and lights the arrivals' pills.
 */
function drawDiff(diff) {
  const line = $("presence-diff");
  line.hidden = !diff;
  if (!diff || diff.id === diffId) return;
  diffId = diff.id;
  const side = (sign, cls, count, first) => {
    const shown = first.map((u) => el("span", { class: cls }, `${sign}${u}`));
    if (count > first.length) shown.push(el("span", { class: "more" }, `${sign}${count - first.length} more`));
    return shown;
  };
  const n = diff.connections;
  line.replaceChildren(
    el("span", { class: "label" }, "last tick:"),
    ...side("+", "arrived", diff.online, diff.first_online),
    ...side("−", "left", diff.offline, diff.first_offline),
    el("span", { class: "sent" }, `one diff, sent to ${n} connection${n === 1 ? "" : "s"}`),
  );
  line.classList.remove("flash");
  void line.offsetWidth; // restarts the animation
  line.classList.add("flash");
  const pills = $("presence");
  for (const u of diff.first_online) {
    const pill = pills.querySelector(`:scope > [data-key="${CSS.escape(u)}"]`);
    if (!pill) continue;
    pill.classList.remove("in-diff");
    void pill.offsetWidth;
    pill.classList.add("in-diff");
  }
}

// ---------------------------------------------------------------- flow, counts, log

let flowId = null;
let flowTimers = [];

function drawFlow(flow) {
  if (!flow || flow.id === flowId) return;
  flowId = flow.id;
  flowTimers.forEach(clearTimeout);
  $("flow-title").textContent = `#${flow.id}: ${flow.from} → ${flow.to}`;
  const steps = flow.steps.map((s, i) =>
    el("li", { class: "step" }, el("span", { class: "n" }, `${i + 1}`), el("span", {}, el("span", { class: "ask" }, `${s.structure}: ${s.ask}`), " ", el("span", { class: "answer" }, s.answer))),
  );
  steps.push(el("li", { class: "step" }, el("span", { class: "n" }, "✓"), el("span", {}, el("span", { class: "ask" }, `ack to ${flow.from}:`), " ", el("span", { class: "answer" }, flow.status))));
  $("flow").replaceChildren(...steps);
  // Light the path one step at a time, in the order the server took it.
  const taken = [...flow.steps.map((s) => s.taken), true];
  flowTimers = steps.map((node, i) => setTimeout(() => node.classList.add(taken[i] ? "lit" : "skipped"), 250 + i * 350));
}

const STRUCTURES = ["active_connections", "presence", "offline_messages", "group_members", "blocked_users"];
const REGION = {
  active_connections: "r-active",
  presence: "r-presence",
  offline_messages: "r-offline",
  group_members: "r-groups",
  blocked_users: "r-blocked",
};
let lastCounts = new Map();

function drawOps(ops) {
  const rows = Array.isArray(ops) ? ops : [];
  const lines = STRUCTURES.map((s) => ({ s, ops: rows.filter((r) => r.structure === s) }));
  reconcile(
    $("ops"),
    lines,
    (l) => l.s,
    (l) => el("div", { class: "op-line" }, el("span", { class: "s" }, l.s), el("span", { class: "list" })),
  );
  for (const line of lines) {
    const node = $("ops").querySelector(`[data-key="${line.s}"] .list`);
    let touched = false;
    for (const r of line.ops) {
      const id = `${r.structure}.${r.op}`;
      let op = node.querySelector(`[data-op="${id}"]`);
      if (!op) {
        op = el("span", { class: "op", "data-op": id }, `${r.op} `, el("span", { class: "c" }), " ", el("span", { class: "cost" }, r.complexity));
        node.append(op);
      }
      const before = lastCounts.get(id);
      op.querySelector(".c").textContent = r.count.toLocaleString();
      op.classList.toggle("bumped", before !== undefined && r.count > before);
      if (before !== undefined && r.count > before) touched = true;
      lastCounts.set(id, r.count);
    }
    const region = $(REGION[line.s]);
    if (touched) {
      region.classList.add("touched");
      setTimeout(() => region.classList.remove("touched"), 120);
    }
  }
}

function drawEvents(lines) {
  // The server's event-log lines: what happened, then each operation it cost.
  const items = lines.slice(-5).map((line) => {
    const [what, ...ops] = line.split(" | ");
    return el("li", {}, el("b", {}, what), ops.length ? ` | ${ops.join(" | ")}` : "");
  });
  const box = $("events");
  box.replaceChildren(...items);
  // The newest line is at the bottom: the oldest go first when they do not fit.
  // (Laid out from the bottom, so a line that does not fit sticks out above.)
  const top = () => box.firstElementChild.getBoundingClientRect().top < box.getBoundingClientRect().top - 1;
  while (box.children.length > 1 && top()) box.firstElementChild.remove();
}

export function render(frame) {
  const started = performance.now();
  const t = frame.totals;
  $("totals").textContent =
    `${t.online} online · ${t.devices} device(s) · ${t.queued} queued in ${t.deques} deque(s) · ${t.groups} group(s) · ${t.blockers} blocker(s)`;
  if ($("join-url")) $("join-url").textContent = frame.join_url;
  drawStructures(frame);
  drawOps(frame.ops);
  if ($("events")) drawEvents(frame.events);
  drawFlow(frame.flow);
  // Reading a size makes the browser lay the page out now, so the time
  // measured includes layout, not only the script.
  void document.body.offsetHeight;
  const took = performance.now() - started;
  stats.frames += 1;
  stats.renderMsTotal += took;
  stats.renderMsMax = Math.max(stats.renderMsMax, took);
  stats.lastSeq = frame.seq;
  // What looking costs: building the frame on the server (of which the core
  // was held), and drawing it here.
  if (!$("feed-cost")) return;
  $("feed-cost").textContent =
    `frame ${frame.seq} (${frame.events_since} new event(s)) · server ${frame.build_us} µs, core held ${frame.hold_us} µs · page ${took.toFixed(1)} ms`;
}

// ---------------------------------------------------------------- the feed

let pending = null;
function schedule(frame) {
  // Draw at most once per display frame, always the newest.
  if (pending === null) requestAnimationFrame(() => { const f = pending; pending = null; render(f); });
  pending = frame;
}

function setFeed(text, live) {
  $("feed-state").textContent = text;
  $("feed-state").className = `feed-state${live ? " live" : ""}`;
}

function askForToken(error) {
  $("admin").hidden = false;
  $("admin-error").textContent = error || "";
  $("admin-token").focus();
  setFeed("needs the admin token", false);
}

let attempt = 0;
async function follow() {
  const token = store.get(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch("/board/feed", { headers, cache: "no-store" });
    if (response.status === 403) {
      if (token) store.remove(TOKEN_KEY);
      askForToken(token ? "That token was not accepted." : "");
      return;
    }
    if (!response.ok) throw new Error(`${response.status} ${(await response.text()).trim()}`);
    $("admin").hidden = true;
    setFeed("live", true);
    attempt = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (line) schedule(JSON.parse(line));
      }
    }
    throw new Error("the server closed the feed");
  } catch (error) {
    const delay = backoff(attempt++);
    setFeed(`reconnecting in ${Math.ceil(delay / 1000)} s`, false);
    setTimeout(follow, delay);
  }
}

// Lecture mode (lecture.js) draws the frames it asks for, step by step.
if (!document.body.classList.contains("lecture")) {
  $("admin").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("admin-token").value.trim();
    if (!token) return;
    store.set(TOKEN_KEY, token);
    $("admin-token").value = "";
    follow();
  });
  follow();
}
