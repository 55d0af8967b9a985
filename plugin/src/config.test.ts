// Config parsing and the bridge launch line: defaults, env passing, and errors that name the key.
import { describe, expect, it } from "vitest";
import { bridgeLaunch, DEFAULTS, parseConfig } from "./config.js";

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

describe("bridgeLaunch", () => {
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
