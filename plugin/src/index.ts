/**
 * OpenClaw entry for Memory Palace: parse config, attach to the process-wide host (bridge client,
 * session registry, waker), register the tools, the before_tool_call hook, auto-recall
 * (before_prompt_build) and auto-capture (agent_end), the bridge service, the memory prompt and
 * memoryPalace.sessions. register() runs more than once per gateway, so it never spawns anything:
 * the service's start() does (tool calls may also start the shared bridge).
 */
import { definePluginEntry, type OpenClawPluginApi } from "openclaw/plugin-sdk/plugin-entry";
import { parseConfig } from "./config.js";
import { autoCapture, autoRecall, type AutoDeps } from "./auto.js";
import { acquireHost, persistRegistry, releaseHost } from "./host.js";
import { memoryPromptLines } from "./prompt.js";
import { createMemoryRuntime } from "./memory-runtime.js";
import { createTools, toolNames } from "./tools.js";
import { registerOperatorMethods, registerPalaceCli } from "./cli.js";
import type { WakeRuntime } from "./wake.js";

export const PLUGIN_ID = "memory-palace";
export const SERVICE_ID = "memory-palace-bridge";

function register(api: OpenClawPluginApi): void {
  // `openclaw memory-palace status|search`. In "cli-metadata" loads (root help, command routing)
  // OpenClaw's runtime is unavailable (touching it throws): register the CLI only.
  registerPalaceCli(api);
  if (api.registrationMode === "cli-metadata") return;
  const config = parseConfig(api.pluginConfig);
  const runtime = api.runtime?.system as WakeRuntime | undefined;
  // Learned routes are restored before anything can start the bridge: a tool call may start it
  // before the service does (a gateway restart with a request already waiting), and the bridge
  // replays missed messages at once, which must wake the sessions learned before the restart.
  const stateDir = stateDirOf(api);
  const attach = (serviceStarted = false) => {
    const h = acquireHost(config, api.logger, runtime);
    if (serviceStarted) h.serviceStarted = true; // a host replaced under a running service
    if (stateDir) persistRegistry(h, stateDir, api.logger);
    return h;
  };
  let host = attach();
  const current = () => (host.bridge.state === "stopped" ? (host = attach(host.serviceStarted)) : host);

  api.registerTool(
    (ctx) => {
      const { bridge, registry } = current();
      return createTools({ bridge, registry, config }, { sessionKey: ctx.sessionKey, agentId: ctx.agentId });
    },
    { names: toolNames() },
  );

  const ours = new Set(toolNames());
  api.on("before_tool_call", (event, ctx) => {
    // Must never throw: a throwing before_tool_call blocks every tool call in the gateway.
    try {
      if (ours.has(event.toolName) && event.params && typeof event.params === "object") {
        current().registry.noteToolCall(event.params, ctx.sessionKey, ctx.agentId);
      }
    } catch (error) {
      api.logger.warn(`memory-palace: before_tool_call bookkeeping failed: ${String(error)}`);
    }
    return undefined;
  });

  // Conversation hooks: OpenClaw runs them only with plugins.entries.memory-palace.hooks.allowConversationAccess.
  const autoDeps = (): AutoDeps => {
    const { bridge, registry, auto } = current();
    return { bridge, registry, auto, config, logger: api.logger };
  };
  // Neither hook may fail a turn: autoRecall/autoCapture never reject, and setup errors are logged.
  if (config.autoRecall.enabled) {
    api.on("before_prompt_build", async (event, ctx) => {
      try {
        return await autoRecall(autoDeps(), event, ctx);
      } catch (error) {
        api.logger.warn(`memory-palace: auto-recall skipped: ${String(error)}`);
        return undefined;
      }
    });
  }
  if (config.autoCapture.enabled) {
    api.on("agent_end", (event, ctx) => {
      // Off the reply path: the capture runs after the hook returned.
      try {
        void autoCapture(autoDeps(), event, ctx);
      } catch (error) {
        api.logger.warn(`memory-palace: auto-capture skipped: ${String(error)}`);
      }
    });
  }

  api.registerService({
    id: SERVICE_ID,
    start(ctx) {
      const live = current();
      live.serviceStarted = true;
      persistRegistry(live, ctx.stateDir, api.logger);
      live.bridge.setHealth(ctx.serviceHealth);
      // Not awaited: a missing bridge is reported through serviceHealth and retried with backoff,
      // and must not roll back the plugin's activation.
      live.bridge.start().catch(() => undefined);
      // A bridge a tool call started before this service did delivers nothing yet: now it may.
      void live.bridge.resumeDelivery();
    },
    async stop() {
      host.serviceStarted = false;
      await releaseHost(host, api.logger);
    },
  });

  api.registerGatewayMethod("memoryPalace.sessions", ({ respond }) => {
    const { bridge, registry, waker, auto } = current();
    respond(true, {
      ...registry.snapshot(),
      agents: config.agents,
      served: bridge.served,
      bridge: {
        state: bridge.state, pid: bridge.pid ?? null, inFlight: bridge.inFlight,
        extensions: bridge.extensions, unannounced: bridge.unannounced,
        identity: bridge.identity ?? null, identityError: bridge.identityError ?? null,
        tokenConfigured: !!config.token,
      },
      wakes: { recent: waker.recent, queued: waker.queued, unrouted: waker.unrouted, refused: waker.refused },
      auto: {
        recall: { enabled: config.autoRecall.enabled, minScore: config.autoRecall.minScore, maxTokens: config.autoRecall.maxTokens },
        capture: { enabled: config.autoCapture.enabled, visibility: config.autoCapture.visibility },
        ...auto.snapshot(),
      },
    });
  });

  // What the CLI commands ask the running gateway: forwarded to its bridge as the agent's instance.
  registerOperatorMethods(api, () => ({
    config,
    bridge: () => current().bridge,
    openclawAgents: () => openclawAgentIds(api.config),
  }));

  // The memory slot's capability: the prompt guidance, and the search runtime behind OpenClaw's
  // memory surfaces (gateway memory.search, `openclaw status`), answered by memory_recall/memory_stats.
  if (typeof api.registerMemoryCapability === "function") {
    api.registerMemoryCapability({
      promptBuilder: ({ availableTools }) => memoryPromptLines(availableTools),
      runtime: createMemoryRuntime({
        config,
        bridge: () => current().bridge,
        serviceRunning: () => current().serviceStarted === true,
        release: () => releaseHost(current(), api.logger),
      }),
    });
  }
}

/** OpenClaw's state directory (the services' ctx.stateDir), when the runtime offers it. */
function stateDirOf(api: OpenClawPluginApi): string | undefined {
  try {
    const dir = api.runtime?.state?.resolveStateDir?.();
    return typeof dir === "string" && dir ? dir : undefined;
  } catch {
    return undefined; // no runtime in this load: the service's start() restores them
  }
}

/** Agent ids in OpenClaw's own config (agents.entries keys, agents.list ids), for the status listing. */
function openclawAgentIds(config: unknown): string[] {
  const agents = (config as { agents?: { entries?: unknown; list?: unknown } } | undefined)?.agents;
  const ids = new Set<string>();
  if (agents?.entries && typeof agents.entries === "object") for (const id of Object.keys(agents.entries)) ids.add(id);
  if (Array.isArray(agents?.list)) for (const a of agents.list) if (typeof (a as { id?: unknown })?.id === "string") ids.add((a as { id: string }).id);
  return [...ids];
}

export default definePluginEntry({
  id: PLUGIN_ID,
  name: "Memory Palace",
  description: "Shared persistent memory and push messaging between agent instances.",
  register,
});
