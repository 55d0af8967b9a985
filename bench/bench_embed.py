"""Embedder benchmark: load to first vector, texts/s over 1,000 texts, single-query p50, quality.

Each embedder runs in a fresh process so load time includes imports. Usage:
    python bench/bench_embed.py [local] [hash] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

START = time.perf_counter()

SUBJECTS = [
    "the deploy script",
    "our Postgres cluster",
    "the billing service",
    "Anna's laptop",
    "the nightly backup",
    "the OpenClaw plugin",
    "the staging VPN",
    "the search index",
]
EVENTS = [
    "failed after the certificate expired",
    "got slower once the cache was disabled",
    "was moved to a new host in Frankfurt",
    "needs a restart every Monday morning",
    "lost data when the disk filled up",
    "now reads its settings from the environment",
]
FOLLOW = [
    "We agreed to add an alert and to document the fix in the runbook.",
    "Nobody noticed for two days, so the team wants a weekly check.",
    "The workaround is in the wiki, but it should become a proper script soon.",
    "Ask Ben before changing it again, he knows the history of this part.",
]

TRIPLES = [  # (sentence, paraphrase, unrelated)
    (
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly revenue grew by eight percent.",
    ),
    (
        "How do I reset my password?",
        "I forgot my login password and need a new one.",
        "The train to Berlin leaves at noon.",
    ),
    (
        "The database connection was refused.",
        "Could not connect to the Postgres server.",
        "She planted tomatoes in the garden.",
    ),
    (
        "We deploy every Friday afternoon.",
        "Releases go out at the end of each week.",
        "Penguins live in the southern hemisphere.",
    ),
    (
        "The meeting was moved to Tuesday.",
        "We rescheduled the call for Tuesday.",
        "This soup needs more salt.",
    ),
]


def corpus(n: int = 1000) -> list[str]:
    """n templated texts of about 25-30 words."""
    return [
        f"Note {i}: {SUBJECTS[i % len(SUBJECTS)]} {EVENTS[(i // 8) % len(EVENTS)]}. "
        f"{FOLLOW[(i // 48) % len(FOLLOW)]} Ticket {1000 + i}."
        for i in range(n)
    ]


def make(name: str):
    if name == "local":
        from memory_palace.embeddings.local import LocalEmbedder

        return LocalEmbedder()
    from memory_palace.embeddings import HashingEmbedder

    return HashingEmbedder(384)


def run_one(name: str) -> dict[str, float | str | int]:
    emb = make(name)
    emb.embed_query("warm-up: the first vector")
    load = time.perf_counter() - START
    texts = corpus()
    t0 = time.perf_counter()
    emb.embed_documents(texts)
    throughput = len(texts) / (time.perf_counter() - t0)
    lat = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        emb.embed_query(text)
        lat.append((time.perf_counter() - t0) * 1000)
    para, unrel = [], []
    for a, b, c in TRIPLES:
        va, vb, vc = emb.embed_documents([a, b, c])
        para.append(float(va @ vb))
        unrel.append(float(va @ vc))
    return {
        "embedder": emb.id,
        "dim": emb.dim,
        "load_s": load,
        "texts_per_s": throughput,
        "p50_ms": statistics.median(lat),
        "p95_ms": statistics.quantiles(lat, n=20)[18],
        "cos_paraphrase": statistics.mean(para),
        "cos_unrelated": statistics.mean(unrel),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "embedders", nargs="*", default=["local", "hash"], help="local and/or hash (default: both)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.embedders) - {"local", "hash"}
    if unknown:
        parser.error(f"unknown embedder {', '.join(sorted(unknown))}; use local or hash")
    if args.child:
        print(json.dumps(run_one(args.child)))
        return
    rows = []
    for name in args.embedders:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name], check=True, capture_output=True, text=True
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(
        f"{'embedder':32} {'dim':>4} {'load→1st vec':>12} {'texts/s (1k)':>12} "
        f"{'1 text p50':>10} {'p95':>8} {'cos para':>8} {'cos unrel':>9} {'RSS MB':>7}"
    )
    for r in rows:
        print(
            f"{r['embedder']:32} {r['dim']:>4} {r['load_s']:>11.2f}s {r['texts_per_s']:>12.0f} "
            f"{r['p50_ms']:>8.2f}ms {r['p95_ms']:>6.2f}ms {r['cos_paraphrase']:>8.3f} "
            f"{r['cos_unrelated']:>9.3f} {r['rss_mb']:>7.0f}"
        )


if __name__ == "__main__":
    main()
