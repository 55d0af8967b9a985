"""Latency the OpenClaw plugin's automatic memory adds per turn, through the real bridge.

Auto-recall (before_prompt_build) waits for two bridge requests sent together, as the plugin
sends them (plugin/src/auto.ts): `memory_recall` {query, limit 5, include_graph false,
detail_level summary} and `message` {action get, unread_only, limit 10}, both with the agent's
instance as `caller`. The turn waits from the first request written to the last reply read; the
plugin's own work (filter by score, build the fenced block) is under 0.1 ms and not included.
Auto-capture (agent_end) runs after the reply, off the reply path: two `memory_set` calls (user
message and final answer) per turn, timed here for completeness.

Data: bench/recall_data.py's realistic memories bulk-loaded into SQLite (bench_recall.prepare),
queries embedded by the default local embedder inside the bridge (MiniLM int8 ONNX).

Usage:
  python bench/bench_auto_recall.py              # 10k memories, 150 turns, ~2 min
  python bench/bench_auto_recall.py --n 2000 --turns 50
Target (issue 16): auto-recall p95 <= 30 ms with the local embedder on 10k memories.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recall as br
import recall_data as rd

TARGET_P95_MS = 30.0
CALLER = "alice"


class Bridge(br.BridgeProcess):
    """The bench bridge, sending requests with a `caller` and several at once."""

    def send_all(self, requests: list[tuple[str, dict[str, Any]]]) -> tuple[float, list[Any]]:
        assert self.proc.stdin is not None
        ids = []
        lines = b""
        for method, params in requests:
            self._next += 1
            ids.append(self._next)
            lines += orjson.dumps(
                {"id": self._next, "method": method, "params": params, "caller": CALLER}
            )
            lines += b"\n"
        t = time.perf_counter()
        self.proc.stdin.write(lines)
        self.proc.stdin.flush()
        replies: dict[int, Any] = {}
        while len(replies) < len(ids):
            reply = self._read_until(lambda obj: obj.get("id") in ids)
            if "error" in reply:
                raise SystemExit(f"request {reply['id']} failed: {reply['error']}")
            replies[reply["id"]] = reply["result"]
        return (time.perf_counter() - t) * 1000, [replies[i] for i in ids]


def recall_requests(query: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "memory_recall",
            {"query": query, "limit": 5, "include_graph": False, "detail_level": "summary"},
        ),
        ("message", {"action": "get", "unread_only": True, "limit": 10}),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="memories (default 10k)")
    ap.add_argument("--turns", type=int, default=150, help="turns measured (default 150)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "memory-palace-bench"
    )
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mp-bench-auto-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from memory_palace.embeddings.local import LocalEmbedder

    embedder = LocalEmbedder()
    corpus = rd.make_corpus(args.n, br.SEED)
    queries = rd.make_queries(corpus, args.turns, seed=br.SEED + 1)
    notes: list[str] = []
    setup, _ = br.prepare(
        "sqlite", args.n, workdir, corpus, "words", args.cache_dir, None, embedder, notes
    )
    bridge = Bridge(setup.data_dir, workdir / "bridge.stderr")
    recall_ms: list[float] = []
    capture_ms: list[float] = []
    injected = 0
    try:
        bridge.send_all(recall_requests(queries[0].text))  # warm-up: model load, caches
        for q in queries:
            bridge.send_all(recall_requests(q.text))
        before = br.load_avg()
        for i, q in enumerate(queries):
            ms, (found, _) = bridge.send_all(recall_requests(q.text))
            recall_ms.append(ms)
            injected += any(m.get("score", 0) >= 0.3 for m in found["memories"])
            turn = [
                (
                    "memory_set",
                    {
                        "content": f"{q.text} (turn {i})",
                        "memory_type": "conversation",
                        "source_type": "conversation",
                        "visibility": "private",
                    },
                ),
                (
                    "memory_set",
                    {
                        "content": f"Noted: {q.text} (answer {i})",
                        "memory_type": "conversation",
                        "source_type": "conversation",
                        "visibility": "private",
                    },
                ),
            ]
            ms, _ = bridge.send_all(turn)
            capture_ms.append(ms)
        loads = f"load average (1/5/15 min) before {before}, after {br.load_avg()}"
    finally:
        bridge.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    p50, p95 = br.pct(recall_ms, 50), br.pct(recall_ms, 95)
    print(f"\n## automatic memory per turn, SQLite {args.n} memories, {len(queries)} turns")
    print(f"{'':24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"{'auto-recall (waits)':24} {p50:8.2f} {p95:8.2f} {max(recall_ms):8.2f}")
    print(
        f"{'auto-capture (after)':24} {br.pct(capture_ms, 50):8.2f} "
        f"{br.pct(capture_ms, 95):8.2f} {max(capture_ms):8.2f}"
    )
    print(f"turns with a hit >= minScore 0.3: {injected}/{len(queries)}; {loads}")
    for note in notes:
        print(f"note: {note}")
    ok = p95 <= TARGET_P95_MS
    print(f"{'PASS' if ok else 'FAIL'}: auto-recall p95 {p95:.2f} ms (target <= {TARGET_P95_MS})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
