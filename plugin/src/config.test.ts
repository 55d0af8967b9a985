// Config parsing and the bridge launch line: defaults, env passing, and errors that name the key.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { bridgeLaunch, DEFAULTS, parseConfig } from "./config.js";

const MANIFEST = JSON.parse(readFileSync(new URL("../../openclaw.plugin.json", import.meta.url), "utf8")) as {
  configSchema: { properties: Record<string, { default?: unknown; anyOf?: Array<{ properties?: Record<string, { default?: unknown }> }> }> };
};

describe("parseConfig", () => {
  it("applies the defaults", () => {
    const cfg = parseConfig(undefined);
    expect(cfg.bridgeCommand).toBe("memory-palace-bridge");
    expect(cfg.requestTimeoutMs).toBe(DEFAULTS.requestTimeoutMs);
    expect(cfg.llmRequestTimeoutMs).toBeGreaterThan(cfg.requestTimeoutMs);
    expect(cfg.instanceRoutes).toEqual({});
    expect(cfg).not.toHaveProperty("databaseManager");
  });

  it("normalises instance routes and names bad keys", () => {
    const cfg = parseConfig({ instanceRoutes: { a: "agent:main:a", ops: { sessionKey: "agent:ops:main", agentId: "ops" } } });
    expect(cfg.instanceRoutes).toEqual({ a: { sessionKey: "agent:main:a" }, ops: { sessionKey: "agent:ops:main", agentId: "ops" } });
    expect(() => parseConfig({ instanceRoutes: { a: 5 } })).toThrow(/instanceRoutes\.a must be a session key/);
    expect(() => parseConfig({ requestTimeoutMs: 5 })).toThrow(/requestTimeoutMs must be an integer number of milliseconds >= 1000/);
    expect(() => parseConfig({ pythonPath: 3 })).toThrow(/pythonPath must be a string/);
  });
});

describe("identity and automatic memory config", () => {
  it("parses agents, token, autoRecall and autoCapture with their defaults", () => {
    const cfg = parseConfig({ agents: { alice: "a" }, token: "mpt_x", autoRecall: false, autoCapture: { roles: ["user"], minChars: 5 } });
    expect(cfg.agents).toEqual({ alice: "a" });
    expect(cfg.token).toBe("mpt_x");
    expect(cfg.autoRecall).toEqual({ ...DEFAULTS.autoRecall, enabled: false });
    expect(cfg.autoCapture).toEqual({ ...DEFAULTS.autoCapture, roles: ["user"], minChars: 5 });
    expect(parseConfig({}).autoRecall.enabled).toBe(true);
    expect(() => parseConfig({ agents: { alice: "all" } })).toThrow(/agents\.alice must be an instance id/);
    expect(() => parseConfig({ autoRecall: { maxTokns: 5 } })).toThrow(/autoRecall has unknown key maxTokns/);
    expect(() => parseConfig({ autoRecall: { maxTokens: 10 } })).toThrow(/autoRecall\.maxTokens must be an integer from 150/);
    expect(() => parseConfig({ autoCapture: { roles: ["system"] } })).toThrow(/autoCapture\.roles must be a list of user \/ assistant/);
  });

  it("declares each key once, in the manifest, with the defaults parseConfig applies", () => {
    const props = MANIFEST.configSchema.properties;
    for (const key of Object.keys(props)) expect(() => parseConfig({ [key]: undefined })).not.toThrow();
    for (const [section, defaults] of [["autoRecall", DEFAULTS.autoRecall], ["autoCapture", DEFAULTS.autoCapture]] as const) {
      const schema = props[section]?.anyOf?.find((s) => s.properties)?.properties ?? {};
      expect(Object.keys(schema).sort()).toEqual(Object.keys(defaults).sort());
      for (const [key, value] of Object.entries(defaults)) expect(schema[key]?.default).toEqual(value);
    }
  });
});

describe("bridgeLaunch", () => {
  it("passes a configured token as MEMORY_PALACE_TOKEN and never in the command line", () => {
    const launch = bridgeLaunch(parseConfig({ pythonPath: "/venv/bin/python", token: "mpt_0123456789ab_secret" }));
    expect(launch.env.MEMORY_PALACE_TOKEN).toBe("mpt_0123456789ab_secret");
    expect([launch.command, ...launch.args, launch.installHint].join(" ")).not.toContain("secret");
  });

  it("runs bridgeCommand and passes instance, data dir and database URL as env", () => {
    const launch = bridgeLaunch(parseConfig({ instanceId: "prime", dataDir: "/data/mp", databaseUrl: "postgresql://u@h/db" }));
    expect(launch.command).toBe("memory-palace-bridge");
    expect(launch.args).toEqual([]);
    expect(launch.env).toEqual({
      PYTHONUNBUFFERED: "1",
      MEMORY_PALACE_INSTANCE_ID: "prime",
      MEMORY_PALACE_DATA_DIR: "/data/mp",
      MEMORY_PALACE_DATABASE_URL: "postgresql://u@h/db",
    });
    expect(launch.installHint).toContain("pip install memory-palace");
    expect(launch.installHint).toContain("pythonPath");
  });

  it("runs `<pythonPath> -u -m memory_palace.bridge` when pythonPath is set", () => {
    const launch = bridgeLaunch(parseConfig({ pythonPath: "/venv/bin/python", bridgeCommand: "ignored" }));
    expect([launch.command, ...launch.args]).toEqual(["/venv/bin/python", "-u", "-m", "memory_palace.bridge"]);
    expect(launch.installHint).toContain("/venv/bin/python -m pip install memory-palace");
  });
});
