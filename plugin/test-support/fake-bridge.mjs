#!/usr/bin/env node
// A tiny stand-in for the Python bridge, for protocol edge cases only (the supervisor's restart
// and timeout behaviour is also tested against the real bridge). FAKE_BRIDGE_MODE selects:
//   normal | never-ready | stubborn (ignores _shutdown and SIGTERM) | junk (non-JSON on stdout)
// FAKE_BRIDGE_EXTENSIONS (comma-separated) is the ready line's `extensions`; FAKE_BRIDGE_FAIL_SUBSCRIBE=N
// fails the first N `_subscribe` calls of each process with BACKEND_UNAVAILABLE; FAKE_BRIDGE_LOG
// appends one line per start.
// Methods: any tool name (returns {method, params, caller}; memory_set adds a new `id`), echo (returns params), sleep {ms}, crash {code},
// fail (a NOT_FOUND refusal), emit {event, data}, _subscribe/_unsubscribe {instance, database?},
// _cancel, _shutdown, _get_instance_routes. `message` send emits new_message with `recipients`: the
// served instances it is for (direct, "all" minus the sender, a channel's served subscribers).
// Unlike the real bridge it serves ONLY its instance and what was announced with _subscribe (not
// callers' identities), so tests see whether the plugin announced them. Like the real bridge, a
// request's `caller` binds it: identity params (instance_id, from_instance) are filled from it and
// refused with PERMISSION_DENIED when they name another instance; _subscribe needs caller ==
// instance. Tool results echo {method, params, caller}. With MEMORY_PALACE_TOKEN set the ready
// line's identity is {instance: "token-owner", role: "writer", verified: true}.
import { appendFileSync } from "node:fs";
import { createInterface } from "node:readline";

const mode = process.env.FAKE_BRIDGE_MODE ?? "normal";
const extensions = (process.env.FAKE_BRIDGE_EXTENSIONS ?? "").split(",").filter(Boolean);
let failSubscribe = Number(process.env.FAKE_BRIDGE_FAIL_SUBSCRIBE ?? 0);
const instanceId = process.env.MEMORY_PALACE_INSTANCE_ID || null;
const send = (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`);
if (process.env.FAKE_BRIDGE_LOG) appendFileSync(process.env.FAKE_BRIDGE_LOG, `${process.pid}\n`);
process.stderr.write(`fake bridge ${process.pid} starting in mode ${mode}\n`);
if (mode === "stubborn") process.on("SIGTERM", () => process.stderr.write("WARNING ignoring SIGTERM\n"));
if (mode === "junk") process.stdout.write("this is not json\n");
const served = new Set(instanceId ? [instanceId] : []);
const channelSubscribers = new Map(); // channel -> instances (message action subscribe)
const timers = new Map();
let nextMessage = 1;
let nextMemory = 1;
const TOOLS = ["memory_set", "memory_recall", "memory_get", "memory_recent", "memory_archive", "memory_link", "memory_unlink", "memory_stats", "memory_audit", "memory_reembed", "message"];
const DB_MANAGER = ["memory_list_databases", "memory_register_database", "memory_set_default_database", "memory_current_database"];
const tools = [...TOOLS, ...(extensions.includes("db_manager") ? DB_MANAGER : [])];
const identity = process.env.MEMORY_PALACE_TOKEN
  ? { instance: "token-owner", role: "writer", verified: true }
  : { instance: instanceId, role: "admin", verified: false };
if (mode !== "never-ready") send({ ready: true, version: "fake", tools, extensions, instance_id: instanceId, database: "default", identity });
if (mode === "never-ready" || mode === "stubborn") setInterval(() => {}, 1000);

const IDENTITY = { memory_set: ["instance_id"], message: ["instance_id", "from_instance"] };

function refuse(id, code, message) {
  send({ id, error: { code, message, data: { kind: code } } });
}

function recipients({ from_instance, to_instance, channel }) {
  const out = new Set();
  if (served.has(to_instance)) out.add(to_instance);
  if (to_instance === "all") for (const i of served) if (i !== from_instance) out.add(i);
  if (channel) for (const i of channelSubscribers.get(channel) ?? []) if (served.has(i)) out.add(i);
  return [...out].sort();
}

function serveParams(id, method, params) {
  const unknown = Object.keys(params).filter((k) => k !== "instance" && k !== "database");
  if (unknown.length) return refuse(id, "INVALID_PARAMS", `${method}: unknown parameter '${unknown[0]}'; expected instance, database`);
  if (typeof params.instance !== "string" || !params.instance) return refuse(id, "INVALID_PARAMS", `${method}: missing required parameter 'instance'`);
  return true;
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const { id, method, params = {}, caller } = JSON.parse(line);
  if (caller && IDENTITY[method]) {
    for (const key of IDENTITY[method]) {
      if (params[key] === undefined) params[key] = caller;
      else if (params[key] !== caller) return refuse(id, "PERMISSION_DENIED", `${method}: ${key}='${params[key]}' names another instance; you are '${caller}' (bound by the gateway)`);
    }
  }
  switch (method) {
    case "echo":
      return send({ id, result: params });
    case "sleep":
      timers.set(id, setTimeout(() => { timers.delete(id); send({ id, result: { slept: params.ms } }); }, params.ms));
      return;
    case "fail":
      return send({ id, error: { code: "NOT_FOUND", message: "memory 999 does not exist; find ids with memory_recall", data: { kind: "NOT_FOUND", id: 999 } } });
    case "crash":
      process.stderr.write("ERROR crashing on request\n");
      return process.exit(params.code ?? 3);
    case "_subscribe": {
      if (serveParams(id, method, params) !== true) return;
      if (caller && caller !== params.instance) return refuse(id, "PERMISSION_DENIED", `_subscribe: you are '${caller}' and may not receive '${params.instance}'s messages`);
      if (failSubscribe > 0) {
        failSubscribe--;
        return refuse(id, "BACKEND_UNAVAILABLE", "the database is down; start it and retry");
      }
      served.add(params.instance);
      const database = params.database ?? "default";
      send({ event: "subscribed", data: { instance: params.instance, database, pid: process.pid } });
      return send({ id, result: { success: true, instance: params.instance, database, mode: "poll", state: "polling", served: [...served].sort() } });
    }
    case "_unsubscribe":
      if (serveParams(id, method, params) !== true) return;
      served.delete(params.instance);
      return send({ id, result: { success: true, instance: params.instance, database: params.database ?? "default", mode: "poll", served: [...served].sort() } });
    case "_cancel": {
      const timer = timers.get(params.id);
      if (timer) clearTimeout(timer);
      timers.delete(params.id);
      send({ event: "cancelled", data: { id: params.id, found: !!timer } });
      return send({ id, result: { cancelled: !!timer } });
    }
    case "_get_instance_routes":
      return send({ id, result: { instances: ["a"], instance_routes: {}, instance_id: instanceId } });
    case "emit":
      send({ event: params.event, data: params.data });
      return send({ id, result: true });
    case "_shutdown":
      if (mode === "stubborn") return;
      send({ id, result: { shutting_down: true } });
      return process.exit(0);
    case "message":
      if (params.action === "subscribe" && params.channel) {
        const members = channelSubscribers.get(params.channel) ?? new Set();
        members.add(params.instance_id ?? instanceId);
        channelSubscribers.set(params.channel, members);
        return send({ id, result: { success: true, channel: params.channel } });
      }
      if (params.action === "send") {
        const messageId = nextMessage++;
        send({ id, result: { success: true, id: messageId } });
        const { from_instance, to_instance, message_type, subject, channel, priority } = params;
        const data = { message_id: messageId, from_instance, to_instance, message_type, subject, channel, priority };
        const to = recipients(data);
        if (to.length) send({ event: "new_message", data: { ...data, database: params.database ?? "default", recipients: to } });
        return;
      }
      return send({ id, result: { method, params, caller } });
    default:
      if (method.startsWith("_")) return send({ id, error: { code: "METHOD_NOT_FOUND", message: `unknown method ${method}` } });
      if (method === "memory_set") return send({ id, result: { method, params, caller, id: nextMemory++ } });
      return send({ id, result: { method, params, caller } });
  }
}).on("close", () => { if (mode !== "stubborn") process.exit(0); });
