// aaeventd web UI: one WebSocket back to the daemon that served this page.
//
// Plain ES2020, no framework, no build step, nothing loaded from elsewhere.
// Every value that comes from an event is untrusted: it reaches the page only
// through textContent and setAttribute, never as HTML.
//
// State model (PROTOCOL §2): the `connected` frame is the truth about running
// skills and pending confirmations; stream events (each with a `seq`) move that
// state forward, in seq order, each applied once.  After a reconnect the page asks
// for `since=<last seq>&epoch=<epoch>`, so nothing is lost or shown twice.

"use strict";

const HISTORY_MAX = 8;
const LOG_MAX = 1000;
const PAUSED_MAX = 5000;
const TOASTS_MAX = 5;
const TOAST_MS = 8000;
const RESOLVED_LINGER_MS = 2500; // answered/expired dialogs stay this long
const FINISHED_LINGER_MS = 2500; // finished skill cards fade out over this long
// Reconnecting: the policy of every WebSocket watcher, WATCH_* in aaeventd/backoff.py
// (tests/test_ui.py runs backoff() below against that module's).  The first pause is
// random below 250 ms, then 250 ms doubling up to 5 s, each scaled by 0.8 to 1.2.
const BACKOFF = { initialMs: 250, minMs: 250, maxMs: 5000, factor: 2, jitter: 0.2 };
const HEARTBEAT_EVERY_MS = 25000;
const HEARTBEAT_GRACE_MS = 10000;

const HEAL_START = new Set(["heal_started", "auto_heal_triggered"]);
const HEAL_DONE = new Set(["heal_completed", "auto_heal_completed"]);
const SKILL_END_OK = new Set(["skill_completed"]);
const SKILL_END_FAIL = new Set(["skill_failed", "skill_error"]);
const SKILL_KEYS = ["skill_id", "session_id", "skill_name"];

// -- tiny DOM helpers -------------------------------------------------------------

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

/** An element with attributes and children; strings become text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** Any JSON value as short display text. */
function text(value, max = 160) {
  let out;
  if (value === null || value === undefined) out = "";
  else if (typeof value === "string") out = value;
  else if (typeof value === "number" || typeof value === "boolean") out = String(value);
  else {
    try {
      out = JSON.stringify(value);
    } catch {
      out = String(value);
    }
  }
  return out.length > max ? out.slice(0, max - 1) + "…" : out;
}

const isStr = (v) => typeof v === "string" && v !== "";
const isInt = (v) => Number.isInteger(v) && v >= 0;

function duration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "";
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  const rest = String(Math.floor(s % 60)).padStart(2, "0");
  if (m < 60) return `${m} m ${rest} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
}

function parseTime(value) {
  const ms = typeof value === "string" ? Date.parse(value) : NaN;
  return Number.isFinite(ms) ? ms : null;
}

function clock(ms) {
  return ms === null ? "" : new Date(ms).toLocaleTimeString([], { hour12: false });
}

// -- type filter: comma/space separated fnmatch globs, "!glob" excludes --------------
// The daemon's rules (aaeventd/protocol/filters.py, PROTOCOL §2): a type passes when it
// matches a plain glob (or there is none) and no "!" glob; tests/fixtures/type_filters.json
// holds the cases both must agree on.

// Python's fnmatch.translate(): "[" with no closing "]" is literal, "[!…]" negates, a "]"
// right after "[" or "[!" is a member, and a set the regex engine refuses matches nothing.
function globToRegExp(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      let start = i + 1;
      if (glob[start] === "!") start++;
      if (glob[start] === "]") start++;
      const end = glob.indexOf("]", start);
      if (end < 0) {
        re += "\\[";
        continue;
      }
      // Backslashes are members in fnmatch; "]" can only be the first member here.
      let body = glob
        .slice(i + 1, end)
        .replace(/\\/g, "\\\\")
        .replace(/]/g, "\\]");
      if (body.startsWith("!")) body = "^" + body.slice(1);
      else if (body.startsWith("^") || body.startsWith("[")) body = "\\" + body;
      re += `[${body}]`;
      i = end;
    } else re += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
  }
  return new RegExp(`^(?:${re})$`, "s");
}

const NEVER = /(?!)/;

function compileFilter(textValue) {
  const include = [];
  const exclude = [];
  for (const part of textValue.split(/[\s,]+/)) {
    if (!part || part === "!") continue;
    const negated = part.startsWith("!");
    let re;
    try {
      re = globToRegExp(negated ? part.slice(1) : part);
    } catch {
      // A set the engine refuses (a reversed range such as "[z-a]") is no error worth
      // showing: it matches nothing (an empty set in fnmatch), still as a plain glob.
      re = NEVER;
    }
    (negated ? exclude : include).push(re);
  }
  return (type) =>
    (include.length === 0 || include.some((re) => re.test(type))) &&
    !exclude.some((re) => re.test(type));
}

// -- page state -------------------------------------------------------------------

const state = {
  ws: null,
  connectedOnce: false,
  epoch: null,
  lastSeq: null,
  snapshotSeq: 0,
  delays: null, // backoff(), new after each connection
  retryAt: 0,
  retryTimer: null,
  heartbeatTimer: null,
  lastAck: 0,
  ackWaiters: [],
  skills: new Map(), // key -> skill record, in start order
  fading: new Map(), // key -> finished card still fading out
  confirmations: new Map(), // id -> confirmation record (pending or just resolved)
  filter: compileFilter(""),
  filterText: "",
  logPaused: false,
  pausedBuffer: [],
  logTotal: 0,
};

const ui = {};

// -- connection -------------------------------------------------------------------

function wsUrl() {
  const page = new URL(location.href);
  const url = new URL("ws", page);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  const token = page.searchParams.get("token");
  if (token) url.searchParams.set("token", token);
  if (state.lastSeq !== null && state.epoch !== null) {
    url.searchParams.set("since", String(state.lastSeq));
    url.searchParams.set("epoch", state.epoch);
  }
  return url.href;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.ws) return;
  setConn("connecting", state.connectedOnce ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.addEventListener("message", (ev) => {
    if (state.ws !== ws) return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return; // the daemon only sends JSON; anything else is not ours to show
    }
    if (msg && typeof msg === "object" && !Array.isArray(msg)) onMessage(msg);
  });
  ws.addEventListener("close", () => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearInterval(state.heartbeatTimer);
    for (const waiter of state.ackWaiters.splice(0)) waiter(false);
    scheduleReconnect();
  });
}

/** The pauses (ms) before each reconnection attempt: aaeventd/backoff.py's backoff(). */
function* backoff(policy = BACKOFF, random = Math.random) {
  yield random() * policy.initialMs;
  let delay = policy.minMs;
  for (;;) {
    const spread = policy.jitter ? 1 + policy.jitter * (2 * random() - 1) : 1;
    yield Math.min(delay, policy.maxMs) * spread;
    delay *= policy.factor;
  }
}

function scheduleReconnect() {
  if (state.delays === null) state.delays = backoff();
  const delay = Math.round(state.delays.next().value);
  state.retryAt = performance.now() + delay;
  state.retryTimer = setTimeout(connect, delay);
  updateRetryText();
  ui.reconnectNow.hidden = false;
}

function updateRetryText() {
  if (state.retryTimer === null) return;
  const secs = Math.max(0, Math.ceil((state.retryAt - performance.now()) / 1000));
  setConn("reconnecting", `Disconnected · retrying in ${secs} s`);
}

function setConn(stateName, label) {
  const el = ui.conn;
  if (el.dataset.state !== stateName) el.dataset.state = stateName;
  if (el.textContent !== label) el.textContent = label;
}

function send(obj) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(obj));
  return true;
}

/** Resolves once the daemon has handled everything sent before it (heartbeat barrier). */
function barrier() {
  return new Promise((resolve) => {
    if (!send({ type: "heartbeat" })) {
      resolve(false);
      return;
    }
    state.ackWaiters.push(resolve);
  });
}

function startHeartbeat() {
  clearInterval(state.heartbeatTimer);
  state.lastAck = performance.now();
  state.heartbeatTimer = setInterval(() => {
    if (performance.now() - state.lastAck > HEARTBEAT_EVERY_MS + HEARTBEAT_GRACE_MS) {
      state.ws?.close(4000, "no heartbeat_ack"); // a dead link: reconnect with since
      return;
    }
    barrier();
  }, HEARTBEAT_EVERY_MS);
}

// -- incoming frames --------------------------------------------------------------

function onMessage(msg) {
  switch (msg.type) {
    case "connected":
      onConnected(msg);
      return;
    case "heartbeat_ack":
      state.lastAck = performance.now();
      state.ackWaiters.shift()?.(true);
      return;
    case "replay_gap":
      showGap(msg);
      return;
    case "error":
      onServerError(msg);
      return;
    case "subscribed":
      return;
    default:
      if (Number.isInteger(msg.seq)) onEvent(msg);
  }
}

function onConnected(msg) {
  const epoch = typeof msg.epoch === "string" ? msg.epoch : "";
  const seq = Number.isInteger(msg.seq) ? msg.seq : 0;
  const newEpoch = state.epoch !== null && state.epoch !== epoch;
  if (state.lastSeq === null || newEpoch || seq < state.lastSeq) {
    if (state.lastSeq !== null) logSeparator("The daemon's journal changed: a new sequence starts");
    state.lastSeq = seq;
  }
  state.epoch = epoch;
  state.snapshotSeq = seq;
  state.connectedOnce = true;
  ui.version.textContent = isStr(msg.version) ? `v${text(msg.version, 20)}` : "";
  state.delays = null;
  ui.reconnectNow.hidden = true;
  setConn("live", "Live");
  showSeq();
  rebuildSkills(Array.isArray(msg.running_skills) ? msg.running_skills : []);
  rebuildConfirmations(Array.isArray(msg.pending_confirmations) ? msg.pending_confirmations : []);
  startHeartbeat();
}

function onEvent(ev) {
  if (state.lastSeq !== null && ev.seq <= state.lastSeq) return; // seen already
  state.lastSeq = ev.seq;
  showSeq();
  const type = String(ev.type);
  const line = summary(ev, findSkill(ev)); // before the event changes which skills run
  if (type === "skill_started") skillStarted(ev);
  else if (type === "step_started" || type === "step_completed" || type === "step_failed")
    stepEvent(type, ev);
  else if (SKILL_END_OK.has(type) || SKILL_END_FAIL.has(type)) skillEnded(type, ev);
  else if (type === "confirmation_required") confirmationRequired(ev);
  else if (type === "confirmation_answered") confirmationResolved(ev, "answered");
  else if (type === "confirmation_expired") confirmationResolved(ev, "expired");
  else if (HEAL_START.has(type) || HEAL_DONE.has(type)) healToast(type, ev);
  else if (type === "persona_changed") personaChanged(ev);
  else if (type === "tools_list_changed") toolsChanged(ev);
  logEvent(ev, line);
}

function onServerError(msg) {
  const code = text(msg.code, 40);
  let answering = 0;
  if (code === "unknown_confirmation" || code === "invalid_response") {
    for (const rec of state.confirmations.values()) {
      if (rec.state !== "answering") continue;
      answering += 1;
      setConfirmationState(rec, "pending");
      if (!rec.pointerInside) setPointer(rec, false); // resume what the click paused
    }
    // A pause or resume that crossed the confirmation's end is not worth a toast.
    if (answering === 0 && code === "unknown_confirmation") return;
  }
  toast("error", "The daemon refused a request", `${code}: ${text(msg.message, 200)}`);
}

function showSeq() {
  ui.seq.textContent = state.lastSeq === null ? "–" : String(state.lastSeq);
}

function showGap(msg) {
  let message;
  if (msg.reason === "epoch_changed") {
    message =
      "The daemon's journal was reset (new epoch): earlier events could not be replayed. " +
      "Skills and confirmations are rebuilt from the daemon's current state.";
  } else {
    const range = msg.from === msg.to ? `${text(msg.from)}` : `${text(msg.from)}–${text(msg.to)}`;
    message =
      `Events ${range} are no longer kept by the daemon and were not replayed. ` +
      "Skills and confirmations are rebuilt from the daemon's current state.";
  }
  ui.gapText.textContent = message;
  ui.gap.dataset.reason = text(msg.reason, 40);
  ui.gap.hidden = false;
}

// -- skills -----------------------------------------------------------------------

function skillKey(ev) {
  for (const name of SKILL_KEYS) if (isStr(ev[name])) return ev[name];
  return null;
}

/** PROTOCOL §2.1: the first key the event carries that matches (latest start wins). */
function findSkill(ev) {
  const records = [...state.skills.values()].reverse();
  for (const name of SKILL_KEYS) {
    const value = ev[name];
    if (!isStr(value)) continue;
    const hit = records.find((r) => r[name] === value);
    if (hit) return hit;
  }
  return null;
}

function newSkill(key, src, startedAt) {
  const old = state.skills.get(key);
  if (old) old.el.remove();
  state.fading.get(key)?.remove();
  state.fading.delete(key);
  const rec = {
    key,
    skill_id: isStr(src.skill_id) ? src.skill_id : null,
    session_id: isStr(src.session_id) ? src.session_id : null,
    skill_name: isStr(src.skill_name) ? src.skill_name : null,
    total: isInt(src.total_steps) ? src.total_steps : null,
    current: null,
    stepName: null,
    done: 0,
    stepOk: null,
    error: null,
    startedAt: startedAt ?? Date.now(),
    finished: null, // "completed" | "failed" once it ended
    took: null,
    el: null,
    parts: null,
  };
  state.skills.delete(key);
  state.skills.set(key, rec);
  renderSkillCard(rec);
  ui.skills.append(rec.el);
  return rec;
}

function skillStarted(ev) {
  const key = skillKey(ev);
  if (key === null) return;
  newSkill(key, ev, parseTime(ev.timestamp));
  updateSkillCounts();
}

function stepEvent(type, ev) {
  const rec = findSkill(ev);
  if (!rec) return; // not a running skill (PROTOCOL §2.1): the log still shows it
  if (isInt(ev.total_steps)) rec.total = ev.total_steps;
  const index = isInt(ev.step_index) ? ev.step_index : null;
  if (type === "step_started") {
    // The current step is the latest step_started's (PROTOCOL §2.1), as in the
    // daemon's snapshot: a reconnect must not change what the card says.
    rec.current = index;
    rec.stepName = isStr(ev.step_name) ? ev.step_name : null;
    rec.done = Math.max(rec.done, index ?? 0);
    rec.stepOk = null;
    rec.error = null;
  } else if (type === "step_completed") {
    rec.done = Math.max(rec.done, (index ?? -1) + 1);
    if (index === rec.current) rec.stepOk = true;
  } else {
    rec.stepOk = false;
    rec.error = text(ev.error, 300) || "step failed";
  }
  renderSkill(rec);
}

function skillEnded(type, ev) {
  const ok = SKILL_END_OK.has(type);
  const rec = findSkill(ev);
  const name = rec ? skillLabel(rec) : text(ev.skill_name || ev.skill_id || ev.session_id, 80);
  const endedAt = parseTime(ev.timestamp) ?? Date.now();
  let took = Number.isFinite(ev.total_duration_ms) ? ev.total_duration_ms : null;
  if (took === null && rec) took = endedAt - rec.startedAt;
  const error = ok ? null : text(ev.error, 300) || "failed";
  addHistory({ key: rec ? rec.key : (skillKey(ev) ?? ""), name, ok, took, endedAt, error });
  if (!rec) return;
  state.skills.delete(rec.key);
  if (ok) {
    if (rec.total !== null) rec.done = rec.total;
    rec.stepOk = true;
  } else {
    rec.stepOk = false;
    rec.error = error;
  }
  rec.finished = ok ? "completed" : "failed";
  rec.took = took;
  renderSkill(rec);
  // The card fades out where it stood; the history keeps the outcome.
  rec.el.classList.add("is-finishing");
  state.fading.get(rec.key)?.remove();
  state.fading.set(rec.key, rec.el);
  const el = rec.el;
  setTimeout(() => {
    el.remove();
    if (state.fading.get(rec.key) === el) state.fading.delete(rec.key);
    updateSkillCounts();
  }, FINISHED_LINGER_MS);
  updateSkillCounts();
}

function rebuildSkills(snapshot) {
  const seen = new Set();
  for (const item of snapshot) {
    if (!item || typeof item !== "object") continue;
    const key = skillKey(item);
    if (key === null) continue;
    seen.add(key);
    let rec = state.skills.get(key);
    if (!rec) rec = newSkill(key, item, parseTime(item.started_at));
    if (isInt(item.total_steps)) rec.total = item.total_steps;
    if (isInt(item.current_step)) {
      if (rec.current !== item.current_step) rec.stepOk = null;
      rec.current = item.current_step;
      rec.done = Math.max(rec.done, item.current_step);
    }
    if (isStr(item.current_step_name)) rec.stepName = item.current_step_name;
    renderSkill(rec);
  }
  for (const [key, rec] of [...state.skills]) {
    if (!seen.has(key)) {
      rec.el.remove();
      state.skills.delete(key);
    }
  }
  updateSkillCounts();
}

function skillLabel(rec) {
  return rec.skill_name || rec.skill_id || rec.session_id || rec.key;
}

function renderSkillCard(rec) {
  const fill = h("div", { class: "progress-fill" });
  const parts = {
    name: h("span", { class: "skill-name", "data-testid": "skill-name" }),
    id: h("span", { class: "skill-id" }),
    elapsed: h("span", { class: "skill-elapsed", "data-testid": "elapsed" }),
    progress: h(
      "div",
      { class: "progress", role: "progressbar", "data-testid": "progress", "aria-valuemin": 0 },
      fill,
    ),
    fill,
    step: h("div", { class: "skill-step", "data-testid": "step-text" }),
    error: h("div", { class: "skill-error", "data-testid": "skill-error", hidden: true }),
  };
  rec.parts = parts;
  rec.el = h(
    "li",
    { class: "skill card", "data-testid": `skill-${rec.key}`, "data-status": "running" },
    h("div", { class: "skill-head" }, parts.name, parts.id, parts.elapsed),
    parts.progress,
    parts.step,
    parts.error,
  );
  renderSkill(rec);
}

function renderSkill(rec) {
  const p = rec.parts;
  const label = skillLabel(rec);
  p.name.textContent = label;
  const idText = rec.key !== label ? rec.key : "";
  p.id.textContent = idText;
  p.id.hidden = !idText;
  const total = rec.total;
  const bar = p.progress;
  bar.setAttribute("aria-label", `${label} progress`);
  if (total !== null && total > 0) {
    const done = Math.min(rec.done, total);
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(done));
    bar.classList.remove("is-indeterminate");
    p.fill.style.setProperty("width", `${(100 * done) / total}%`);
  } else {
    bar.removeAttribute("aria-valuemax");
    bar.removeAttribute("aria-valuenow");
    bar.classList.toggle("is-indeterminate", !rec.finished);
    p.fill.style.setProperty("width", rec.finished ? "100%" : "");
  }
  let line;
  if (rec.finished === "completed")
    line = `Completed${rec.took !== null ? ` in ${duration(rec.took)}` : ""}`;
  else if (rec.finished === "failed") line = "Failed";
  else if (rec.current === null) line = "Starting…";
  else {
    const n = rec.current + 1;
    line = total !== null ? `Step ${n} of ${total}` : `Step ${n}`;
    if (rec.stepName) line += ` · ${rec.stepName}`;
    if (rec.stepOk === true) line += " ✓";
  }
  p.step.textContent = line;
  p.error.textContent = rec.error ?? "";
  p.error.hidden = !rec.error;
  const status = rec.finished ?? (rec.stepOk === false ? "step-failed" : "running");
  rec.el.dataset.status = status;
  updateElapsed(rec);
}

function updateElapsed(rec) {
  const ms = rec.finished ? rec.took : Date.now() - rec.startedAt;
  const shown = duration(Math.max(0, ms ?? 0));
  if (rec.parts.elapsed.textContent !== shown) rec.parts.elapsed.textContent = shown;
}

function addHistory(item) {
  const li = h(
    "li",
    {
      class: `history-item ${item.ok ? "is-ok" : "is-failed"}`,
      "data-testid": "history-item",
      "data-key": item.key,
      "data-status": item.ok ? "completed" : "failed",
    },
    h("span", { class: "history-icon", "aria-hidden": "true", text: item.ok ? "✓" : "✗" }),
    h("span", { class: "history-name", text: item.name || "(unnamed skill)" }),
    h("span", {
      class: "history-outcome",
      text: item.ok ? "completed" : "failed",
    }),
    h("span", { class: "history-took", text: item.took !== null ? duration(item.took) : "" }),
    h("time", { class: "history-time", text: clock(item.endedAt) }),
    item.error ? h("span", { class: "history-error", text: item.error }) : null,
  );
  ui.history.prepend(li);
  while (ui.history.children.length > HISTORY_MAX) ui.history.lastElementChild.remove();
  ui.historyEmpty.hidden = true;
}

function updateSkillCounts() {
  ui.skillsCount.textContent = String(state.skills.size);
  ui.skillsEmpty.hidden = ui.skills.children.length > 0;
}

// -- confirmations ----------------------------------------------------------------

let domIds = 0;

function confirmationRequired(ev) {
  if (!isStr(ev.id)) return;
  // A replayed request (seq <= the snapshot's) that the snapshot does not list is
  // already answered or expired: the replay brings that outcome next.
  if (ev.seq <= state.snapshotSeq) return;
  const existing = state.confirmations.get(ev.id);
  if (existing && (existing.state === "pending" || existing.state === "answering")) return;
  const timeout = Number.isFinite(ev.timeout_seconds) ? ev.timeout_seconds : 60;
  addConfirmation(ev, timeout, timeout, false);
}

function addConfirmation(info, timeout, remaining, pausedElsewhere) {
  const old = state.confirmations.get(info.id);
  if (old) old.el.remove();
  const options =
    Array.isArray(info.options) && info.options.length
      ? info.options.filter((o) => typeof o === "string")
      : ["yes", "no"];
  const rec = {
    id: info.id,
    options,
    default: typeof info.default === "string" ? info.default : null,
    timeoutMs: timeout * 1000,
    remainingMs: remaining * 1000,
    anchor: performance.now(),
    localPaused: false,
    pausedElsewhere,
    pointerInside: false,
    sent: null,
    state: "pending",
    el: null,
    parts: null,
  };
  state.confirmations.set(rec.id, rec);
  renderConfirmation(rec, info);
  ui.confirmations.append(rec.el);
  tickConfirmation(rec);
  const active = document.activeElement;
  if (!active || active === document.body || ui.confirmations.contains(active)) {
    (rec.parts.defaultButton ?? rec.parts.buttons[0])?.focus({ preventScroll: true });
  }
}

function renderConfirmation(rec, info) {
  const n = ++domIds;
  const promptId = `confirm-${n}-prompt`;
  const context = [
    isStr(info.skill_name) ? info.skill_name : null,
    isStr(info.step_name) ? `step ${info.step_name}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
  const buttons = rec.options.map((option) => {
    const isDefault = option === rec.default;
    const button = h(
      "button",
      {
        type: "button",
        class: `btn option${isDefault ? " is-default" : ""}`,
        "data-testid": `option-${option}`,
        "data-default": isDefault ? "true" : null,
        "aria-label": isDefault ? `${option} (default)` : null,
      },
      option,
    );
    button.addEventListener("click", () => answer(rec, option));
    return button;
  });
  const fill = h("div", { class: "countdown-fill" });
  const parts = {
    buttons,
    defaultButton: buttons.find((b) => b.dataset.default === "true") ?? null,
    countText: h("span", { class: "countdown-text", "data-testid": "countdown" }),
    fill,
    status: h("p", { class: "confirm-status", "data-testid": "confirm-status", hidden: true }),
  };
  rec.parts = parts;
  const prompt = text(info.prompt ?? info.message, 2000);
  rec.el = h(
    "article",
    {
      class: "confirm card",
      role: "alertdialog",
      "aria-labelledby": promptId,
      "data-testid": `confirm-${rec.id}`,
      "data-state": "pending",
      "data-paused": rec.pausedElsewhere ? "true" : "false",
    },
    h(
      "header",
      { class: "confirm-head" },
      h("span", { class: "confirm-kicker", text: "Confirmation needed" }),
      context ? h("span", { class: "confirm-context", text: context }) : null,
    ),
    h("p", {
      class: "confirm-prompt",
      id: promptId,
      "data-testid": "confirm-prompt",
      text: prompt,
    }),
    isStr(info.claude_suggestion)
      ? h(
          "p",
          { class: "confirm-suggestion", "data-testid": "confirm-suggestion" },
          h("span", { class: "suggestion-label", text: "Suggestion" }),
          text(info.claude_suggestion, 1000),
        )
      : null,
    h("div", { class: "confirm-options", role: "group", "aria-label": "Answers" }, ...buttons),
    h(
      "footer",
      { class: "confirm-foot" },
      h("div", { class: "countdown-bar", "aria-hidden": "true" }, fill),
      parts.countText,
    ),
    parts.status,
  );
  // Holding the pointer on the dialog stops its countdown, on the daemon too (§2.2).
  rec.el.addEventListener("pointerenter", () => setPointer(rec, true));
  rec.el.addEventListener("pointerleave", () => setPointer(rec, false));
}

function remainingMs(rec) {
  if (rec.localPaused || rec.pausedElsewhere) return rec.remainingMs;
  return Math.max(0, rec.remainingMs - (performance.now() - rec.anchor));
}

function setPointer(rec, inside) {
  rec.pointerInside = inside;
  if (rec.state !== "pending") return;
  if (inside === rec.localPaused) return;
  rec.remainingMs = remainingMs(rec);
  rec.anchor = performance.now();
  rec.localPaused = inside;
  if (!inside) rec.pausedElsewhere = false; // our resume resumes it for everyone
  send({ type: inside ? "pause_timer" : "resume_timer", id: rec.id });
  tickConfirmation(rec);
  // data-paused follows the daemon: set once it has handled the message.
  barrier().then((ok) => {
    if (ok && rec.state === "pending" && rec.localPaused === inside) {
      rec.el.dataset.paused = inside ? "true" : "false";
    }
  });
}

function answer(rec, option) {
  if (rec.state !== "pending") return;
  const sent = send({
    type: "confirmation_response",
    id: rec.id,
    response: option,
    remember: "none",
  });
  if (!sent) {
    toast("error", "Not connected", "The answer was not sent; try again once the page is live.");
    return;
  }
  rec.sent = option;
  setConfirmationState(rec, "answering");
  for (const b of rec.parts.buttons) b.classList.toggle("is-chosen", b.textContent === option);
  showConfirmStatus(rec, `Sending “${option}”…`);
}

function setConfirmationState(rec, next) {
  rec.state = next;
  rec.el.dataset.state = next;
  const open = next === "pending";
  for (const b of rec.parts.buttons) b.disabled = !open;
  if (open) {
    rec.parts.status.hidden = true;
    for (const b of rec.parts.buttons) b.classList.remove("is-chosen");
  }
}

function showConfirmStatus(rec, message) {
  rec.parts.status.textContent = message;
  rec.parts.status.hidden = false;
}

function confirmationResolved(ev, how) {
  if (!isStr(ev.id)) return;
  const rec = state.confirmations.get(ev.id);
  if (!rec || rec.state === "answered" || rec.state === "expired") return;
  const response = typeof ev.response === "string" ? ev.response : null;
  let message;
  if (how === "answered") {
    const by = ev.answered_by && typeof ev.answered_by === "object" ? ev.answered_by : {};
    message =
      rec.sent !== null && rec.sent === response
        ? `You answered “${response}”.`
        : `Answered “${text(response, 80)}” in another window` +
          (isStr(by.user_agent) ? ` (${text(by.user_agent, 60)})` : "") +
          ".";
  } else {
    const reasons = {
      timeout: "time ran out",
      source_gone: "the asking program went away",
      shutdown: "the daemon stopped",
    };
    message = `Expired: ${reasons[ev.reason] ?? text(ev.reason, 60)}.`;
    if (response !== null) message += ` The default “${response}” applies.`;
  }
  setConfirmationState(rec, how);
  for (const b of rec.parts.buttons) b.classList.toggle("is-chosen", b.textContent === response);
  showConfirmStatus(rec, message);
  tickConfirmation(rec);
  const hadFocus = rec.el.contains(document.activeElement);
  setTimeout(() => {
    if (state.confirmations.get(rec.id) === rec) state.confirmations.delete(rec.id);
    rec.el.remove();
    if (hadFocus) focusNextConfirmation();
  }, RESOLVED_LINGER_MS);
}

function focusNextConfirmation() {
  const next = ui.confirmations.querySelector('.confirm[data-state="pending"] .option');
  next?.focus({ preventScroll: true });
}

function rebuildConfirmations(snapshot) {
  const seen = new Set();
  for (const item of snapshot) {
    if (!item || typeof item !== "object" || !isStr(item.id)) continue;
    seen.add(item.id);
    const timeout = Number.isFinite(item.timeout_seconds) ? item.timeout_seconds : 60;
    const remaining = Number.isFinite(item.remaining_seconds) ? item.remaining_seconds : timeout;
    const paused = item.paused === true;
    const rec = state.confirmations.get(item.id);
    if (rec && (rec.state === "pending" || rec.state === "answering")) {
      rec.remainingMs = remaining * 1000;
      rec.anchor = performance.now();
      rec.pausedElsewhere = paused && !rec.localPaused;
      if (rec.state === "answering") setConfirmationState(rec, "pending");
      tickConfirmation(rec);
    } else {
      addConfirmation(item, timeout, remaining, paused);
    }
  }
  for (const [id, rec] of [...state.confirmations]) {
    if (!seen.has(id) && (rec.state === "pending" || rec.state === "answering")) {
      state.confirmations.delete(id);
      rec.el.remove();
    }
  }
}

function tickConfirmation(rec) {
  const p = rec.parts;
  if (rec.state === "answered" || rec.state === "expired") {
    p.countText.textContent = rec.state === "answered" ? "Answered" : "Expired";
    p.fill.style.setProperty("width", "0%");
    return;
  }
  const left = remainingMs(rec);
  const secs = Math.ceil(left / 1000);
  let label;
  if (rec.localPaused) label = `Paused · ${secs} s left`;
  else if (rec.pausedElsewhere) label = `Paused in another window · ${secs} s left`;
  else if (left <= 0) label = "Time is up…";
  else label = `${secs} s left`;
  if (p.countText.textContent !== label) p.countText.textContent = label;
  const pct = rec.timeoutMs > 0 ? Math.max(0, Math.min(100, (100 * left) / rec.timeoutMs)) : 0;
  p.fill.style.setProperty("width", `${pct}%`);
  rec.el.classList.toggle("is-urgent", left < 10000 && !rec.localPaused);
  rec.el.classList.toggle("is-paused", rec.localPaused || rec.pausedElsewhere);
}

// -- toasts, persona, tools --------------------------------------------------------

function healToast(type, ev) {
  const tool = isStr(ev.tool_name) ? ev.tool_name : null;
  const fix = isStr(ev.fix_action) ? ev.fix_action : null;
  if (HEAL_START.has(type)) {
    const body = [text(ev.error ?? ev.error_snippet, 160), fix ? `fix: ${fix}` : ""]
      .filter(Boolean)
      .join(" → ");
    toast("warning", `Auto-heal started${tool ? `: ${tool}` : ""}`, body, type);
    return;
  }
  const what = [tool, fix ? `fix: ${fix}` : null].filter(Boolean).join(" · ");
  if (ev.success === true) toast("success", "Auto-heal succeeded", what, type);
  else if (ev.success === false) toast("error", "Auto-heal failed", what, type);
  else toast("info", "Auto-heal finished", what, type);
}

function personaChanged(ev) {
  const persona = text(ev.persona, 80);
  ui.persona.textContent = persona || "–";
  const body = isStr(ev.previous) ? `${text(ev.previous, 80)} → ${persona}` : `Now ${persona}`;
  toast("info", "Persona changed", body, "persona_changed");
}

function toolsChanged(ev) {
  let count = null;
  if (isInt(ev.count)) count = ev.count;
  else if (Array.isArray(ev.tools)) count = ev.tools.length;
  if (count !== null) ui.tools.textContent = String(count);
}

function toast(kind, title, body, eventType = "") {
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const el = h(
    "div",
    {
      class: `toast is-${kind}`,
      "data-testid": "toast",
      "data-kind": kind,
      "data-event": eventType,
      role: "status",
    },
    h(
      "div",
      { class: "toast-body" },
      h("strong", { class: "toast-title", text: title }),
      body ? h("p", { class: "toast-text", text: body }) : null,
    ),
    close,
  );
  let timer = null;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => el.remove(), kind === "error" ? TOAST_MS * 1.5 : TOAST_MS);
  };
  close.addEventListener("click", () => el.remove());
  el.addEventListener("pointerenter", () => clearTimeout(timer));
  el.addEventListener("pointerleave", arm);
  arm();
  ui.toasts.append(el);
  while (ui.toasts.children.length > TOASTS_MAX) ui.toasts.firstElementChild.remove();
}

// -- event log --------------------------------------------------------------------

/** One line for the log; `rec` is the running skill the event belongs to, if any. */
function summary(ev, rec) {
  const type = String(ev.type);
  const label = () =>
    text(rec ? skillLabel(rec) : (ev.skill_name ?? ev.skill_id ?? ev.session_id), 60);
  const step = () => {
    const i = isInt(ev.step_index) ? ev.step_index + 1 : "?";
    const total = isInt(ev.total_steps) ? ev.total_steps : rec?.total;
    return `step ${i}${isInt(total) ? ` of ${total}` : ""} · ${text(ev.step_name, 60)}`;
  };
  switch (type) {
    case "skill_started":
      return `${label()} started${isInt(ev.total_steps) ? ` (${ev.total_steps} steps)` : ""}`;
    case "step_started":
      return `${label()} · ${step()}`;
    case "step_completed":
      return `${label()} · ${step()} ✓${Number.isFinite(ev.duration_ms) ? ` ${duration(ev.duration_ms)}` : ""}`;
    case "step_failed":
      return `${label()} · ${step()} ✗ ${text(ev.error, 100)}`;
    case "skill_completed":
      return `${label()} completed${Number.isFinite(ev.total_duration_ms) ? ` in ${duration(ev.total_duration_ms)}` : ""}`;
    case "skill_failed":
    case "skill_error":
      return `${label()} failed: ${text(ev.error, 100)}`;
    case "confirmation_required":
      return text(ev.prompt ?? ev.message, 140);
    case "confirmation_answered":
      return `“${text(ev.response, 40)}” (${text(ev.id, 40)})`;
    case "confirmation_expired":
      return `${text(ev.reason, 30)} (${text(ev.id, 40)})`;
    case "persona_changed":
      return isStr(ev.previous)
        ? `${text(ev.previous, 40)} → ${text(ev.persona, 40)}`
        : text(ev.persona, 60);
    case "tools_list_changed":
      return `${isInt(ev.count) ? ev.count : Array.isArray(ev.tools) ? ev.tools.length : "?"} tools`;
    default:
      if (HEAL_START.has(type) || HEAL_DONE.has(type)) {
        const parts = [
          text(ev.tool_name, 40),
          text(ev.error, 80),
          ev.fix_action ? `fix: ${text(ev.fix_action, 40)}` : "",
        ];
        if (typeof ev.success === "boolean") parts.push(ev.success ? "succeeded" : "failed");
        return parts.filter(Boolean).join(" · ");
      }
      return otherFields(ev);
  }
}

function otherFields(ev) {
  const rest = {};
  for (const [k, v] of Object.entries(ev))
    if (k !== "type" && k !== "seq" && k !== "timestamp") rest[k] = v;
  return Object.keys(rest).length ? text(rest, 140) : "";
}

function category(type) {
  if (type.startsWith("skill_") || type.startsWith("step_")) return "skill";
  if (type.startsWith("confirmation_")) return "confirm";
  if (HEAL_START.has(type) || HEAL_DONE.has(type)) return "heal";
  if (type === "persona_changed" || type === "tools_list_changed") return "system";
  return "other";
}

function logEvent(ev, line) {
  if (state.logPaused) {
    state.pausedBuffer.push([ev, line]);
    if (state.pausedBuffer.length > PAUSED_MAX) state.pausedBuffer.shift();
    updatePauseButton();
    return;
  }
  appendLog(ev, line);
}

function appendLog(ev, line) {
  const type = String(ev.type);
  const failed =
    type === "step_failed" ||
    SKILL_END_FAIL.has(type) ||
    (HEAL_DONE.has(type) && ev.success === false);
  const row = h(
    "button",
    { type: "button", class: "log-row", "aria-expanded": "false", title: "Show the full event" },
    h("span", { class: "log-seq", text: `#${ev.seq}` }),
    h("time", { class: "log-time", text: clock(parseTime(ev.timestamp)) }),
    h("span", { class: `log-type cat-${category(type)}${failed ? " is-failed" : ""}`, text: type }),
    h("span", { class: "log-summary", text: line }),
  );
  const li = h(
    "li",
    { class: "log-entry", "data-testid": "log-entry", "data-seq": ev.seq, "data-type": type },
    row,
  );
  li.hidden = !state.filter(type);
  row.addEventListener("click", () => toggleDetails(li, row, ev));
  ui.log.prepend(li);
  state.logTotal += 1;
  while (ui.log.children.length > LOG_MAX) {
    const last = ui.log.lastElementChild;
    if (last.classList.contains("log-entry")) state.logTotal -= 1;
    last.remove();
  }
  updateLogCount();
}

function logSeparator(message) {
  ui.log.prepend(
    h("li", { class: "log-sep", "data-testid": "log-separator", role: "separator", text: message }),
  );
}

function toggleDetails(li, row, ev) {
  const open = row.getAttribute("aria-expanded") === "true";
  row.setAttribute("aria-expanded", open ? "false" : "true");
  let pre = li.querySelector(".log-json");
  if (open) {
    pre?.remove();
    return;
  }
  pre = h("pre", { class: "log-json", "data-testid": "event-json", tabindex: "0" });
  pre.textContent = JSON.stringify(ev, null, 2);
  li.append(pre);
}

function applyFilter() {
  state.filterText = ui.filter.value;
  state.filter = compileFilter(state.filterText);
  for (const li of ui.log.querySelectorAll(".log-entry"))
    li.hidden = !state.filter(li.dataset.type);
  updateLogCount();
}

function updateLogCount() {
  let label = String(state.logTotal);
  if (state.filterText.trim()) {
    const shown = ui.log.querySelectorAll(".log-entry:not([hidden])").length;
    label = `${shown} of ${state.logTotal}`;
  }
  ui.logCount.textContent = label;
  ui.logEmpty.hidden = state.logTotal > 0;
}

function setLogPaused(paused) {
  state.logPaused = paused;
  ui.pause.setAttribute("aria-pressed", paused ? "true" : "false");
  if (!paused) {
    for (const [ev, line] of state.pausedBuffer.splice(0)) appendLog(ev, line);
  }
  updatePauseButton();
}

function updatePauseButton() {
  const n = state.pausedBuffer.length;
  ui.pause.textContent = state.logPaused ? (n ? `Resume (${n} new)` : "Resume") : "Pause";
}

// -- wiring -----------------------------------------------------------------------

function tick() {
  for (const rec of state.skills.values()) updateElapsed(rec);
  for (const rec of state.confirmations.values())
    if (rec.state === "pending" || rec.state === "answering") tickConfirmation(rec);
  updateRetryText();
}

function typing(target) {
  return (
    target instanceof HTMLElement &&
    (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))
  );
}

function init() {
  Object.assign(ui, {
    conn: $("conn-status"),
    version: $("version"),
    reconnectNow: $("reconnect-now"),
    seq: $("last-seq"),
    persona: $("persona"),
    tools: $("tools-count"),
    gap: $("gap-banner"),
    gapText: $("gap-text"),
    confirmations: $("confirmations"),
    skills: $("skills"),
    skillsCount: $("skills-count"),
    skillsEmpty: $("skills-empty"),
    history: $("history"),
    historyEmpty: $("history-empty"),
    log: $("event-log"),
    logCount: $("log-count"),
    logEmpty: $("log-empty"),
    filter: $("type-filter"),
    pause: $("log-pause"),
    clear: $("log-clear"),
    toasts: $("toasts"),
  });
  ui.filter.addEventListener("input", applyFilter);
  ui.pause.addEventListener("click", () => setLogPaused(!state.logPaused));
  ui.clear.addEventListener("click", () => {
    ui.log.replaceChildren();
    state.pausedBuffer.length = 0;
    state.logTotal = 0;
    updateLogCount();
    updatePauseButton();
  });
  $("gap-dismiss").addEventListener("click", () => {
    ui.gap.hidden = true;
  });
  ui.reconnectNow.addEventListener("click", () => {
    state.delays = null;
    connect();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    if (ev.key === "/") {
      ev.preventDefault();
      ui.filter.focus();
      ui.filter.select();
    } else if (ev.key === "p") {
      setLogPaused(!state.logPaused);
    }
  });
  setInterval(tick, 250);
  updateLogCount();
  updateSkillCounts();
  connect();
}

init();
