// Shared helpers for the real-OpenClaw integration tests: an isolated OPENCLAW_HOME, helper
// processes that announce themselves on their first stdout line, the gateway, polling and a
// clean shutdown of everything the test started.
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const OPENCLAW = join(ROOT, "node_modules/.bin/openclaw");
export const PYTHON = process.env.MEMORY_PALACE_PYTHON;
export const SKIP = process.env.MEMORY_PALACE_SKIP_OPENCLAW === "1";

export function log(message) {
  console.log(`# ${message}`);
}

export async function freePort() {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function poll(what, fn, ms = 60_000, every = 100) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

/** A throwaway OpenClaw home plus the processes started in it; `stop()` ends them and cleans up. */
export function createHarness({ prefix, gatewayToken }) {
  const T = mkdtempSync(join(tmpdir(), prefix));
  const HOME = join(T, "home");
  mkdirSync(HOME, { recursive: true });
  const ENV = {
    ...process.env,
    HOME,
    OPENCLAW_HOME: HOME,
    OPENCLAW_DISABLE_BONJOUR: "1",
    OPENCLAW_GATEWAY_TOKEN: gatewayToken,
    MEMORY_PALACE_LOG_LEVEL: "INFO",
  };
  const children = [];

  /** Spawn a long-running helper and resolve with its first stdout line. */
  function startHelper(command, args, options = {}) {
    const child = spawn(command, args, { env: ENV, stdio: ["pipe", "pipe", "pipe"], ...options });
    children.push(child);
    const stderr = [];
    child.stderr.on("data", (d) => stderr.push(String(d)));
    return new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout });
      lines.once("line", (line) => resolve({ child, line, stderr }));
      child.once("exit", (code) => reject(new Error(`${command} ${args.join(" ")} exited (${code}) before its first line:\n${stderr.join("").slice(-2000)}`)));
    });
  }

  function run(command, args, options = {}) {
    return execFileSync(command, args, { env: ENV, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 180_000, ...options });
  }

  function openclaw(args) {
    try {
      return run(OPENCLAW, args, { cwd: T });
    } catch (error) {
      throw new Error(`openclaw ${args.join(" ")} failed:\n${error.stdout ?? ""}\n${error.stderr ?? ""}`);
    }
  }

  /** `openclaw gateway run` on loopback; its output goes to T/gateway.log and the returned log. */
  function startGateway(port) {
    const gateway = spawn(OPENCLAW, ["gateway", "run", "--allow-unconfigured", "--port", String(port), "--bind", "loopback", "--auth", "token", "--verbose"], { env: ENV, cwd: T, stdio: ["ignore", "pipe", "pipe"] });
    children.push(gateway);
    const out = { process: gateway, log: [], exit: undefined };
    const keep = (d) => {
      out.log.push(String(d));
      appendFileSync(join(T, "gateway.log"), d);
    };
    gateway.stdout.on("data", keep);
    gateway.stderr.on("data", keep);
    gateway.once("exit", (code) => (out.exit = code));
    return out;
  }

  /**
   * startGateway, then poll `ready()` until it answers truthy; fails at once, with the log's tail,
   * if the gateway exits first. Resolves with startGateway's handle.
   */
  async function startGatewayReady(port, what, ready, ms = 120_000, every = 250) {
    const gateway = startGateway(port);
    await poll(what, async () => {
      if (gateway.exit !== undefined) throw new Error(`gateway exited ${gateway.exit}:\n${gateway.log.join("").slice(-3000)}`);
      return ready();
    }, ms, every).catch((error) => {
      // poll() keeps only the last error; an exit is final, so say it rather than "timed out".
      if (gateway.exit !== undefined) throw new Error(`gateway exited ${gateway.exit}:\n${gateway.log.join("").slice(-3000)}`);
      throw error;
    });
    return gateway;
  }

  /**
   * Stop a gateway started by startGateway like an operator would (SIGTERM), and wait until it
   * and every process it started (the openclaw-gateway child, the Python bridge) have exited.
   */
  async function stopGateway(gateway, ms = 30_000) {
    const tree = descendants(gateway.process.pid);
    const exited = gateway.exit !== undefined ? Promise.resolve() : new Promise((r) => gateway.process.once("exit", r));
    gateway.process.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, ms))]);
    const end = Date.now() + ms;
    while (tree.some(alive) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    const left = tree.filter(alive);
    if (gateway.exit === undefined || left.length) {
      throw new Error(`the gateway did not stop within ${ms} ms (launcher exit ${gateway.exit}, still running: ${left.join(", ")})`);
    }
  }

  async function stop() {
    for (const child of children.reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once("exit", r));
      if (child.stdin) {
        child.stdin.end(); // helpers (pgserver, fake model) stop cleanly on EOF
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      }
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 8000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
    if (!process.env.MEMORY_PALACE_KEEP_IT_DIR) rmSync(T, { recursive: true, force: true });
    else log(`kept ${T}`);
  }

  return { T, HOME, ENV, children, startHelper, run, openclaw, startGateway, startGatewayReady, stopGateway, stop };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every live descendant of `pid` (from /proc: each process's parent). */
function descendants(pid) {
  const parent = new Map();
  for (const name of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      /* exited meanwhile */
    }
  }
  const out = [];
  const walk = (p) => {
    for (const [child, pp] of parent) if (pp === p) {
      out.push(child);
      walk(child);
    }
  };
  walk(pid);
  return out;
}

/** The fake OpenAI-compatible model as a `models.providers.fake` entry for openclaw.json. */
export function fakeModelConfig(modelPort) {
  return {
    mode: "merge",
    providers: {
      fake: {
        baseUrl: `http://127.0.0.1:${modelPort}/v1`,
        apiKey: "fake-local",
        api: "openai-completions",
        models: [{ id: "fake-model", name: "Fake", reasoning: false, input: ["text"], cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 }, contextWindow: 128000, maxTokens: 4096 }],
      },
    },
  };
}
