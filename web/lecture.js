// Lecture mode (`vivachat replay`): the board, one step at a time. Each step
// is asked of the server (/lecture/step?k=K), which replays the recording
// to it; this page only draws it, highlights what the step changed, and
// keeps the presenter's place in the address (#K), so a reload stays there.
import { el } from "/assets/common.js";
import { render } from "/assets/board.js";

const $ = (id) => document.getElementById(id);

/** Each structure's entries on the board, by the region's list id. */
const LISTS = {
  active_connections: "active",
  presence: "presence",
  offline_messages: "offline",
  group_members: "groups",
  blocked_users: "blocked",
};

let view = null;
/** Predict: the next input is shown, its operations not yet. */
let predicting = false;
let loading = null;

function predictOn() {
  return $("predict").getAttribute("aria-checked") === "true";
}

function highlight(v) {
  for (const [structure, list] of Object.entries(LISTS)) {
    const keys = new Set(v.changed[structure]);
    for (const node of $(list).querySelectorAll(":scope > [data-key]")) {
      node.classList.toggle("changed", keys.has(node.dataset.key));
    }
    $(list).closest(".region").classList.toggle("step-changed", keys.size > 0);
  }
  const touched = new Set(v.touched_ops);
  for (const op of document.querySelectorAll("#ops [data-op]")) {
    op.classList.toggle("bumped", touched.has(op.dataset.op));
  }
}

function drawStep(v) {
  $("step-input").textContent =
    v.input ?? `Before the first input: the structures as the recording starts. ${v.steps} step(s) follow.`;
  $("step-event").textContent = v.event ?? "";
  const ops = v.operations.map((op) => el("li", {}, op));
  if (v.step > 0 && ops.length === 0) ops.push(el("li", { class: "none" }, "no structure operation"));
  $("step-ops").replaceChildren(...ops);
  $("step-time").textContent = v.step > 0 ? `at ${(v.board.uptime_ms / 1000).toFixed(3)} s` : "";
}

function show(v) {
  view = v;
  predicting = false;
  render(v.board);
  highlight(v);
  drawStep(v);
  $("position").textContent = `Step ${v.step} of ${v.steps}`;
  $("prev").disabled = v.step === 0;
  $("next").disabled = v.step >= v.steps;
  history.replaceState(null, "", `#${v.step}`);
}

function predict() {
  predicting = true;
  $("position").textContent = `Step ${view.step + 1} of ${view.steps}: predict`;
  $("step-input").textContent = view.next_input;
  $("step-event").textContent = "What will each structure do? Press Next step to see.";
  $("step-ops").replaceChildren(el("li", { class: "none" }, "operations hidden until the next press"));
  $("step-time").textContent = "";
}

/** Shows step `k`; presses that come while one loads wait for it, in order. */
function go(k) {
  const previous = loading ?? Promise.resolve();
  const mine = previous.then(async () => {
    const target = Math.max(0, Math.min(k(), view ? view.steps : Infinity));
    try {
      const response = await fetch(`/lecture/step?k=${target}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status} ${(await response.text()).trim()}`);
      show(await response.json());
    } catch (error) {
      $("position").textContent = `cannot load step ${target}: ${error.message}`;
    }
  });
  loading = mine;
  mine.finally(() => {
    if (loading === mine) loading = null;
  });
}

function next() {
  if (view && view.step >= view.steps) return;
  if (view && predictOn() && !predicting) {
    predict();
    return;
  }
  go(() => view.step + 1);
}

function previous() {
  if (predicting) {
    show(view);
    return;
  }
  go(() => view.step - 1);
}

$("next").addEventListener("click", next);
$("prev").addEventListener("click", previous);
$("predict").addEventListener("click", () => {
  const on = !predictOn();
  $("predict").setAttribute("aria-checked", String(on));
  if (!on && predicting) show(view);
});

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  // A focused button takes Space and Enter itself (a click).
  if (event.target instanceof HTMLButtonElement && (event.key === " " || event.key === "Enter")) return;
  const keys = {
    ArrowRight: next,
    " ": next,
    ArrowLeft: previous,
    Home: () => go(() => 0),
    End: () => go(() => view.steps),
  };
  const action = keys[event.key];
  if (!action || !view) return;
  event.preventDefault();
  action();
});

const start = Number.parseInt(location.hash.slice(1), 10);
go(() => (Number.isFinite(start) ? start : 0));
