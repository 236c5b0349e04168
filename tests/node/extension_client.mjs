// A stand-in for the VS Code extension's connection to aaeventd, driven by
// tests/test_vscode_compat.py.
//
// It talks to the daemon the way the extension does today: the Node `ws` package,
// `new WebSocket(url)` with no Origin header and no token, frames routed by `type`,
// the fields the extension reads, a `heartbeat` every HEARTBEAT_MS (30 s, as in the
// extension), answers as {"type":"confirmation_response","id","response","remember"},
// and pause_timer / resume_timer.
//
// Protocol with the test (JSON lines):
//   argv[2]            the URL, e.g. ws://localhost:9876
//   stdin  commands    {"cmd":"answer","id":..,"response":..,"remember":..}
//                      {"cmd":"pause","id":..} {"cmd":"resume","id":..}
//                      {"cmd":"heartbeat"} {"cmd":"state"}
//                      {"cmd":"disconnect"} {"cmd":"connect"} {"cmd":"exit"}
//   stdout reports     {"event":"open"} {"event":"close","code":..,"reason":..}
//                      {"event":"frame","frame":{...}} for every frame, after routing
//                      {"event":"state","state":{...}} the view the extension shows
//                      {"event":"error","message":..}
import { createInterface } from "node:readline";
import WebSocket from "ws";

const url = process.argv[2];
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 30000);

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// The extension's view: what its tree view and dialogs show.
function emptyState() {
  return {
    connected: false,
    server: null, // {version, epoch, seq} from `connected`
    skills: {}, // skill_id -> {skill_name, total_steps, current_step, status, steps, heals}
    finished: [], // skills that ended: {skill_id, status}
    dialogs: {}, // confirmation id -> what the dialog shows
    closedDialogs: [], // {id, why, response, answered_by}
    heartbeatAcks: 0,
    unhandled: [], // frame types it does not route
  };
}

let state = emptyState();
let ws = null;
let heartbeat = null;

function skillOf(frame) {
  const id = frame.skill_id ?? frame.skill_name;
  if (!(id in state.skills)) {
    state.skills[id] = {
      skill_name: frame.skill_name ?? null,
      total_steps: frame.total_steps ?? null,
      current_step: null,
      status: "running",
      steps: {},
      heals: [],
    };
  }
  return state.skills[id];
}

function route(frame) {
  switch (frame.type) {
    case "connected": {
      // A (re)connect rebuilds the view from the snapshot.
      state.server = { version: frame.version, epoch: frame.epoch, seq: frame.seq };
      state.skills = {};
      for (const s of frame.running_skills || []) {
        state.skills[s.skill_id ?? s.skill_name] = {
          skill_name: s.skill_name,
          total_steps: s.total_steps,
          current_step: s.current_step,
          status: s.status,
          steps: {},
          heals: [],
        };
      }
      state.dialogs = {};
      for (const c of frame.pending_confirmations || []) {
        state.dialogs[c.id] = dialog(c);
      }
      break;
    }
    case "skill_started":
      delete state.skills[frame.skill_id];
      skillOf(frame);
      break;
    case "step_started": {
      const skill = skillOf(frame);
      skill.current_step = frame.step_index;
      if (frame.total_steps !== undefined) skill.total_steps = frame.total_steps;
      skill.steps[frame.step_index] = { name: frame.step_name, status: "running" };
      break;
    }
    case "step_completed":
      skillOf(frame).steps[frame.step_index] = {
        name: frame.step_name,
        status: "completed",
        duration_ms: frame.duration_ms,
      };
      break;
    case "step_failed":
      skillOf(frame).steps[frame.step_index] = {
        name: frame.step_name,
        status: "failed",
        error: frame.error ?? null,
      };
      break;
    case "skill_completed":
    case "skill_failed": {
      const id = frame.skill_id ?? frame.skill_name;
      state.finished.push({
        skill_id: id,
        status: frame.type === "skill_completed" ? "completed" : "failed",
        steps: state.skills[id] ? state.skills[id].steps : {},
        heals: state.skills[id] ? state.skills[id].heals : [],
      });
      delete state.skills[id];
      break;
    }
    case "auto_heal_triggered":
      skillOf(frame).heals.push({
        step_index: frame.step_index,
        tool_name: frame.tool_name,
        status: "healing",
      });
      break;
    case "auto_heal_completed": {
      const heals = skillOf(frame).heals;
      const heal = heals.find((h) => h.step_index === frame.step_index && h.status === "healing");
      if (heal) heal.status = frame.success ? "healed" : "not healed";
      break;
    }
    case "confirmation_required":
      state.dialogs[frame.id] = dialog(frame);
      break;
    case "confirmation_answered":
    case "confirmation_expired":
      delete state.dialogs[frame.id];
      state.closedDialogs.push({
        id: frame.id,
        why: frame.type === "confirmation_answered" ? "answered" : frame.reason,
        response: frame.response ?? null,
        answered_by: frame.answered_by ?? null,
      });
      break;
    case "heartbeat_ack":
      state.heartbeatAcks += 1;
      break;
    default:
      state.unhandled.push(frame.type);
  }
}

function dialog(c) {
  return {
    prompt: c.prompt,
    options: c.options,
    claude_suggestion: c.claude_suggestion ?? null,
    timeout_seconds: c.timeout_seconds,
    created_at: c.created_at,
    skill_id: c.skill_id ?? null,
  };
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(obj));
  } else {
    report({ event: "error", message: "not connected" });
  }
}

function connect() {
  ws = new WebSocket(url);
  ws.on("open", () => {
    state.connected = true;
    heartbeat = setInterval(() => send({ type: "heartbeat" }), HEARTBEAT_MS);
    report({ event: "open" });
  });
  ws.on("message", (data) => {
    let frame;
    try {
      frame = JSON.parse(data.toString());
    } catch (err) {
      report({ event: "error", message: `not JSON: ${err}` });
      return;
    }
    route(frame);
    report({ event: "frame", frame });
  });
  ws.on("close", (code, reason) => {
    state.connected = false;
    clearInterval(heartbeat);
    report({ event: "close", code, reason: reason.toString() });
  });
  ws.on("error", (err) => report({ event: "error", message: String(err) }));
}

const commands = {
  answer: (c) =>
    send({ type: "confirmation_response", id: c.id, response: c.response, remember: c.remember }),
  pause: (c) => send({ type: "pause_timer", id: c.id }),
  resume: (c) => send({ type: "resume_timer", id: c.id }),
  heartbeat: () => send({ type: "heartbeat" }),
  state: () => report({ event: "state", state }),
  // A drop and the extension's reconnect, in two steps so that the test decides
  // what happens meanwhile; the view is rebuilt from the next `connected` frame.
  disconnect: () => ws.close(1000),
  connect: () => connect(),
  exit: () => {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.once("close", () => process.exit(0));
      ws.close(1000);
    } else {
      process.exit(0);
    }
  },
};

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  const handler = commands[cmd.cmd];
  if (handler) handler(cmd);
  else report({ event: "error", message: `unknown command ${cmd.cmd}` });
});
lines.on("close", () => commands.exit());

connect();
