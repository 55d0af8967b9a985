#!/usr/bin/env node
// A tiny stand-in for the Python bridge, for protocol edge cases only (the supervisor's restart
// and timeout behaviour is also tested against the real bridge). FAKE_BRIDGE_MODE selects:
//   normal | never-ready | stubborn (ignores _shutdown and SIGTERM) | junk (non-JSON on stdout)
// Methods: any tool name (returns {method, params}; message send also emits new_message), echo (returns params), sleep {ms}, crash {code}, _subscribe/_unsubscribe, _cancel,
// _shutdown, _get_instance_routes, emit {event, data}. FAKE_BRIDGE_LOG appends one line per start.
import { appendFileSync } from "node:fs";
import { createInterface } from "node:readline";

const mode = process.env.FAKE_BRIDGE_MODE ?? "normal";
const send = (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`);
if (process.env.FAKE_BRIDGE_LOG) appendFileSync(process.env.FAKE_BRIDGE_LOG, `${process.pid}\n`);
process.stderr.write(`fake bridge ${process.pid} starting in mode ${mode}\n`);
if (mode === "stubborn") process.on("SIGTERM", () => process.stderr.write("WARNING ignoring SIGTERM\n"));
if (mode === "junk") process.stdout.write("this is not json\n");
const channels = new Set();
const timers = new Map();
let nextMessage = 1;
if (mode !== "never-ready") send({ ready: true, version: "fake", tools: 0 });
if (mode === "never-ready" || mode === "stubborn") setInterval(() => {}, 1000);

createInterface({ input: process.stdin }).on("line", (line) => {
  const { id, method, params = {} } = JSON.parse(line);
  switch (method) {
    case "echo":
      return send({ id, result: params });
    case "sleep":
      timers.set(id, setTimeout(() => { timers.delete(id); send({ id, result: { slept: params.ms } }); }, params.ms));
      return;
    case "fail":
      return send({ id, error: { code: "TOOL_ERROR", message: "it refused; do something else" } });
    case "crash":
      process.stderr.write("ERROR crashing on request\n");
      return process.exit(params.code ?? 3);
    case "_subscribe":
      channels.add(params.channel);
      send({ event: "subscribed", data: { channel: params.channel, pid: process.pid } });
      return send({ id, result: { channel: params.channel, listening: true } });
    case "_unsubscribe":
      channels.delete(params.channel);
      return send({ id, result: { channel: params.channel, listening: false } });
    case "_cancel": {
      const timer = timers.get(params.id);
      if (timer) clearTimeout(timer);
      timers.delete(params.id);
      send({ event: "cancelled", data: { id: params.id, found: !!timer } });
      return send({ id, result: { cancelled: !!timer } });
    }
    case "_get_instance_routes":
      return send({ id, result: { instances: ["a"], instance_routes: {} } });
    case "emit":
      send({ event: params.event, data: params.data });
      return send({ id, result: true });
    case "_shutdown":
      if (mode === "stubborn") return;
      send({ id, result: { shutting_down: true } });
      return process.exit(0);
    case "message":
      if (params.action === "send") {
        const messageId = nextMessage++;
        send({ id, result: { success: true, id: messageId } });
        const { from_instance, to_instance, message_type, subject, channel, priority } = params;
        return send({ event: "new_message", data: { message_id: messageId, from_instance, to_instance, message_type, subject, channel, priority } });
      }
      return send({ id, result: { method, params } });
    default:
      if (method.startsWith("_")) return send({ id, error: { code: "METHOD_NOT_FOUND", message: `unknown method ${method}` } });
      return send({ id, result: { method, params } });
  }
}).on("close", () => { if (mode !== "stubborn") process.exit(0); });
