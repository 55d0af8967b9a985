// A fake OpenAI-compatible chat-completions server (SSE streaming) for the OpenClaw integration
// test. When the prompt holds a Memory Palace wake event it answers with the tool call the event
// names (palace_message get); once that tool result is in the conversation it answers NO_REPLY.
// A user turn whose last user message holds `FAKE_REPLY: <text>` is answered with <text>.
// Prints {"port"} on its first stdout line; GET /requests returns what it saw (with timestamps and
// the text of the non-system messages as `prompt`).
import { createServer } from "node:http";

const WAKE = /Memory Palace: new [^\n"]*? message #(\d+)/g;
const CALL = /palace_message tool with (\{\\?"action\\?":\\?"get\\?",\\?"instance_id\\?":\\?"[^"\\]+\\?"(?:,\\?"database\\?":\\?"[^"\\]+\\?")?\})/g;
const seen = [];
const answered = new Set(); // wakes (id + call) already answered with a tool call: one get per wake

function text(message) {
  const c = message?.content;
  if (typeof c === "string") return c;
  if (Array.isArray(c)) return c.map((p) => (typeof p === "string" ? p : p?.text ?? "")).join("\n");
  return "";
}

function decide(body) {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const all = messages.map(text).join("\n");
  const tools = (body.tools ?? []).map((t) => t.function?.name ?? t.name);
  const wake = [...all.matchAll(WAKE)].at(-1); // the newest event; older ones stay in history
  const toolResults = messages.filter((m) => m.role === "tool").map(text);
  const record = {
    at: Date.now(),
    wakeMessageId: wake ? Number(wake[1]) : null,
    tools,
    toolResults,
    prompt: messages.filter((m) => m.role !== "system").map(text).join("\n"),
  };
  seen.push(record);
  const call = wake ? [...all.matchAll(CALL)].at(-1) : undefined;
  const args = call ? call[1].replaceAll('\\"', '"') : null;
  // Message ids are per database: the call (which names the database) tells two #1s apart.
  const key = wake && args ? `${wake[1]} ${args}` : null;
  if (key && !answered.has(key)) {
    answered.add(key);
    const direct = tools.includes("palace_message");
    record.answer = direct ? "palace_message" : "tool_call";
    const fn = direct
      ? { name: "palace_message", arguments: args }
      : { name: "tool_call", arguments: JSON.stringify({ name: "palace_message", arguments: JSON.parse(args) }) };
    return { toolCall: { id: `call_${seen.length}`, type: "function", function: fn } };
  }
  // OpenClaw may add its own user-role context after the prompt: take the newest FAKE_REPLY unless
  // a wake came after it (a wake turn answers NO_REPLY).
  const texts = messages.map((m) => (m.role === "user" ? text(m) : ""));
  const replyAt = texts.findLastIndex((t) => t.includes("FAKE_REPLY: "));
  const wakeAt = texts.findLastIndex((t) => new RegExp(WAKE.source).test(t));
  const scripted = replyAt >= 0 && replyAt > wakeAt ? /FAKE_REPLY: ([^\n]+)/.exec(texts[replyAt]) : null;
  record.answer = scripted ? scripted[1].trim() : "NO_REPLY";
  return { content: record.answer };
}

function chunk(res, model, delta, finish = null) {
  const payload = { id: "chatcmpl-fake", object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model, choices: [{ index: 0, delta, finish_reason: finish }] };
  res.write(`data: ${JSON.stringify(payload)}\n\n`);
}

const server = createServer((req, res) => {
  if (req.method === "GET" && req.url === "/requests") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(seen));
    return;
  }
  let raw = "";
  req.on("data", (d) => (raw += d));
  req.on("end", () => {
    if (!req.url?.endsWith("/chat/completions")) {
      res.writeHead(404).end();
      return;
    }
    const body = JSON.parse(raw || "{}");
    const answer = decide(body);
    const model = body.model ?? "fake-model";
    if (body.stream === false) {
      const message = answer.toolCall ? { role: "assistant", content: null, tool_calls: [answer.toolCall] } : { role: "assistant", content: answer.content };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion", model, choices: [{ index: 0, message, finish_reason: answer.toolCall ? "tool_calls" : "stop" }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
    if (answer.toolCall) {
      chunk(res, model, { role: "assistant", tool_calls: [{ index: 0, ...answer.toolCall }] });
      chunk(res, model, {}, "tool_calls");
    } else {
      chunk(res, model, { role: "assistant", content: answer.content });
      chunk(res, model, {}, "stop");
    }
    res.write(`data: ${JSON.stringify({ id: "chatcmpl-fake", object: "chat.completion.chunk", model, choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } })}\n\n`);
    res.end("data: [DONE]\n\n");
  });
});

// Node closes an idle keep-alive connection after 5 s. A test that blocks its event loop longer
// (execFileSync of the openclaw CLI on a busy machine) then reuses the closed socket and its next
// fetch fails with "other side closed"; keep idle connections for longer than any such block.
server.keepAliveTimeout = 120_000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
