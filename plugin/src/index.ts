/**
 * OpenClaw entry for Memory Palace: parse config, create the bridge client, register the tools,
 * the before_tool_call hook, the bridge service, the memory prompt and memoryPalace.sessions.
 * register() runs more than once per gateway, so it never spawns anything: only service.start does.
 */
import { definePluginEntry, type OpenClawPluginApi } from "openclaw/plugin-sdk/plugin-entry";
import { BridgeClient } from "./bridge-client.js";
import { bridgeLaunch, parseConfig } from "./config.js";
import { memoryPromptLines } from "./prompt.js";
import { instanceChannel, MAIN_SESSION_KEY, SessionRegistry } from "./sessions.js";
import { createTools, toolNames } from "./tools.js";
import { Waker, type WakeRuntime } from "./wake.js";

export const PLUGIN_ID = "memory-palace";
export const SERVICE_ID = "memory-palace-bridge";

function register(api: OpenClawPluginApi): void {
  const config = parseConfig(api.pluginConfig);
  const registry = new SessionRegistry(config.instanceId);
  const runtime = (): WakeRuntime | undefined => api.runtime?.system as WakeRuntime | undefined;
  const waker = new Waker(registry, runtime, api.logger);

  const bridge: BridgeClient = new BridgeClient({
    launch: bridgeLaunch(config),
    readyTimeoutMs: config.readyTimeoutMs,
    logger: api.logger,
    onEvent: (event, data) => {
      if (event === "new_message") waker.handle(data);
      else if (event === "listener_status") api.logger.info(`memory-palace: listener ${JSON.stringify(data)}`);
    },
    onReady: () => {
      bridge.call("_get_instance_routes", {}, { timeoutMs: 10_000 })
        .then((routes) => seedBridgeRoutes(registry, routes))
        .catch((error: unknown) => api.logger.warn(`memory-palace: could not read instance routes: ${String(error)}`));
    },
  });

  // Auto-subscription on instance discovery: LISTEN on the new instance's channel.
  registry.onDiscover = (instance) => {
    bridge.subscribe(instanceChannel(instance)).catch((error: unknown) => {
      api.logger.warn(`memory-palace: could not LISTEN for ${instance}: ${String(error)}`);
    });
  };
  for (const [instance, route] of Object.entries(config.instanceRoutes)) {
    registry.learn(instance, route.sessionKey, route.agentId, "config");
  }
  if (config.instanceId) registry.learn(config.instanceId, MAIN_SESSION_KEY, "main", "instanceId");

  const deps = { bridge, registry, config };
  api.registerTool((ctx) => createTools(deps, { sessionKey: ctx.sessionKey, agentId: ctx.agentId }), {
    names: toolNames(config),
  });

  const ours = new Set(toolNames(config));
  api.on("before_tool_call", (event, ctx) => {
    // Must never throw: a throwing before_tool_call blocks every tool call in the gateway.
    try {
      if (ours.has(event.toolName) && event.params && typeof event.params === "object") {
        registry.noteToolCall(event.toolName, event.params, ctx.sessionKey, ctx.agentId);
      }
    } catch (error) {
      api.logger.warn(`memory-palace: before_tool_call bookkeeping failed: ${String(error)}`);
    }
    return undefined;
  });

  api.registerService({
    id: SERVICE_ID,
    start(ctx) {
      bridge.setHealth(ctx.serviceHealth);
      // Not awaited: a missing bridge is reported through serviceHealth and retried with backoff,
      // and must not roll back the plugin's activation.
      bridge.start().catch(() => undefined);
    },
    async stop() {
      waker.stop();
      await bridge.stop();
    },
  });

  api.registerGatewayMethod("memoryPalace.sessions", ({ respond }) => {
    respond(true, {
      ...registry.snapshot(),
      listening: bridge.subscribedChannels,
      bridge: { state: bridge.state, pid: bridge.pid ?? null, inFlight: bridge.inFlight },
      wakes: { recent: waker.recent, queued: waker.queued, unrouted: waker.unrouted },
    });
  });

  if (typeof api.registerMemoryCapability === "function") {
    api.registerMemoryCapability({ promptBuilder: ({ availableTools }) => memoryPromptLines(availableTools) });
  }
}

function seedBridgeRoutes(registry: SessionRegistry, routes: unknown): void {
  const table = (routes as { instance_routes?: Record<string, unknown> } | null)?.instance_routes ?? {};
  for (const [instance, route] of Object.entries(table)) {
    const r = route as { session?: unknown; sessionKey?: unknown; agentId?: unknown } | string;
    const sessionKey = typeof r === "string" ? r : (r?.sessionKey ?? r?.session);
    const agentId = typeof r === "object" && typeof r?.agentId === "string" ? r.agentId : undefined;
    if (typeof sessionKey === "string" && sessionKey) registry.learn(instance, sessionKey, agentId, "bridge");
  }
}

export default definePluginEntry({
  id: PLUGIN_ID,
  name: "Memory Palace",
  description: "Shared persistent memory and push messaging between agent instances.",
  register,
});
