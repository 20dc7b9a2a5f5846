// Helpers both pages share. Every piece of user text goes into the page
// through text nodes (never innerHTML), so a message is shown, never run.

/** A user or group name, as the server checks it. */
export const NAME = /^[A-Za-z0-9_.-]{1,32}$/;

/** Builds an element: attributes, then children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** "22:08" for a Unix time in milliseconds: 24-hour, as the terminal client
 * prints it (the page shows the device's local time; the client, UTC). */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

/** localStorage that keeps working (in memory) where storage is blocked. */
const memory = new Map();
export const store = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return memory.get(key) ?? null; }
  },
  set(key, value) {
    try { localStorage.setItem(key, value); } catch { memory.set(key, value); }
  },
  remove(key) {
    try { localStorage.removeItem(key); } catch { memory.delete(key); }
  },
};

/** Delay before reconnect attempt `n` (0-based): 0.5 s doubling to 15 s, with jitter
 * so a whole class does not reconnect in the same instant after a restart. */
export function backoff(n) {
  const base = Math.min(15000, 500 * 2 ** n);
  return Math.round(base * (0.75 + Math.random() * 0.5));
}
