"""Synthetic memories and queries with realistic word statistics, for bench/bench_recall.py.

Text. The vocabulary is the first 5,000 whole English words of the embedder's own WordPiece
vocabulary (bridge/memory_palace/embeddings/data/tokenizer.json), whose order follows word
frequency in BERT's corpus ("the", "of", "and", ... "school" at 80, "mall" at 4,000). Words are
drawn Zipf-distributed over that order (s = 1.07), so a few words ("time", "new", "school") are in
thousands of memories and most are rare. Each memory also has one of 300 topics: a quarter of its
content words come from the topic's 12 mid-frequency words. A memory has a 2-5 word subject, 15-40
content words in sentences, 2-4 keywords, and sometimes identifiers shared with other memories:
ticket ids (OPS-4417, 15 %), hostnames (db-replica-18.fra.example.internal, 5 %), error codes
(E2881, 5 %). Row i is in project p10 when i % 10 == 0 and also in p1 when i % 100 == 0.

Queries are 4-10 words, four kinds:
  about   words of one memory's subject/content plus a question lead ("what did we decide about")
          -> both legs find that memory;
  topic   two or three topic words plus common words -> many keyword hits, a vector neighbourhood;
  ident   an identifier that memories hold, with a few words -> identifier matching, rare terms;
  common  only words from the 300 most frequent (after stop words) -> the keyword leg's worst
          case: every word is in thousands of memories.

Vectors. Embedding 100k memories with the local model takes ~40 min on 2 busy cores, so by default
a memory's vector is the normalised sum of the local model's vectors of its words (each word
embedded once, ~10k short texts, cached): vectors in the model's own space whose similarities
follow shared words and topics, so a real query embedding lands near the memories that hold its
words. `--doc-vectors model` embeds every memory with the model instead (cached on disk).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

VOCAB_SIZE = 5000
ZIPF_S = 1.07
TOPICS = 300
TOPIC_WORDS = 12
TOPIC_SHARE = 0.25
GENERATOR_VERSION = "1"
MEMORY_TYPES = ["fact", "decision", "event", "preference", "procedure"]
TYPE_P = [0.4, 0.15, 0.2, 0.1, 0.15]
TICKET_PREFIXES = ["OPS", "WEB", "INC", "DATA", "SEC", "API", "BILL", "INFRA"]
HOST_ROLES = ["db-replica", "cache", "api", "worker", "queue", "search", "gateway"]
DATACENTRES = ["fra", "ams", "iad", "sfo", "sin"]
LEADS = [
    "what did we decide about",
    "how do we",
    "when was",
    "where is the",
    "who owns",
    "status of",
    "why does",
    "notes on",
    "remind me about",
    "what is the",
]
QUERY_KINDS = {"about": 0.35, "topic": 0.2, "ident": 0.15, "common": 0.3}


def stop_words() -> frozenset[str]:
    from memory_palace.db.search_text import STOP_WORDS

    return STOP_WORDS


def vocabulary(size: int = VOCAB_SIZE) -> list[str]:
    """Whole lowercase words of the local model's vocabulary, most frequent first."""
    from memory_palace.embeddings.local import TOKENIZER_PATH

    vocab = orjson.loads(TOKENIZER_PATH.read_bytes())["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return [w for w in words if re.fullmatch(r"[a-z]{2,}", w)][:size]


def zipf_p(n: int, s: float = ZIPF_S) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


@dataclass
class Corpus:
    subjects: list[str]
    contents: list[str]
    keywords: list[list[str]]
    types: list[str]
    topic: np.ndarray
    idents: list[list[str]]  # identifiers each memory holds
    words: list[list[int]]  # vocabulary indexes of subject + content words (for vectors)
    vocab: list[str]
    pools: list[str]  # every identifier, in the order their vectors are stored

    def __len__(self) -> int:
        return len(self.contents)


def projects_of(i: int) -> list[str]:
    return ["p1", "p10"] if i % 100 == 0 else ["p10"] if i % 10 == 0 else ["main"]


def in_filter(project: str | None, n: int) -> np.ndarray:
    i = np.arange(n)
    if project is None:
        return np.ones(n, bool)
    return i % (10 if project == "p10" else 100) == 0


def _identifier_pools(rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    tickets = sorted(
        {f"{rng.choice(TICKET_PREFIXES)}-{rng.integers(1000, 10000)}" for _ in range(4200)}
    )[:4000]
    rng.shuffle(tickets)
    hosts = list(
        dict.fromkeys(
            f"{rng.choice(HOST_ROLES)}-{rng.integers(1, 40)}.{rng.choice(DATACENTRES)}"
            ".example.internal"
            for _ in range(600)
        )
    )[:400]
    errors = list(dict.fromkeys(f"E{rng.integers(1000, 10000)}" for _ in range(700)))[:600]
    return tickets, hosts, errors


def make_corpus(n: int, seed: int = 7) -> Corpus:
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    v = len(vocab)
    p = zipf_p(v)
    # Topic words: mid-frequency ranks (300-5000), so topics are specific but not unique.
    topic_words = rng.integers(300, v, size=(TOPICS, TOPIC_WORDS))
    tickets, hosts, errors = _identifier_pools(rng)
    pools = tickets + hosts + errors
    topic = rng.integers(0, TOPICS, n)
    lengths = rng.integers(15, 41, n)
    total = int(lengths.sum())
    general = rng.choice(v, size=total, p=p)
    from_topic = rng.random(total) < TOPIC_SHARE
    topical = topic_words[np.repeat(topic, lengths), rng.integers(0, TOPIC_WORDS, total)]
    tokens = np.where(from_topic, topical, general)
    subj_len = rng.integers(2, 6, n)
    subj_general = rng.choice(v, size=int(subj_len.sum()), p=p)
    kw_len = rng.integers(2, 5, n)
    ticket_p = zipf_p(len(tickets), 1.1)
    types = rng.choice(MEMORY_TYPES, size=n, p=TYPE_P).tolist()
    subjects, contents, keywords, idents, words = [], [], [], [], []
    pos = spos = 0
    for i in range(n):
        toks = tokens[pos : pos + lengths[i]].tolist()
        pos += lengths[i]
        t = topic[i]
        subj = [int(topic_words[t, rng.integers(0, TOPIC_WORDS)])]
        subj += subj_general[spos : spos + subj_len[i] - 1].tolist()
        spos += subj_len[i]
        ids: list[str] = []
        if rng.random() < 0.15:
            ids.append(tickets[int(rng.choice(len(tickets), p=ticket_p))])
        if rng.random() < 0.05:
            ids.append(hosts[int(rng.integers(0, len(hosts)))])
        if rng.random() < 0.05:
            ids.append(errors[int(rng.integers(0, len(errors)))])
        text_words = [vocab[w] for w in toks]
        for ident in ids:
            text_words.insert(int(rng.integers(0, len(text_words) + 1)), ident)
        # Sentences of 6-12 words, capitalised, with full stops.
        sentences, k = [], 0
        while k < len(text_words):
            step = int(rng.integers(6, 13))
            chunk = text_words[k : k + step]
            k += step
            sentences.append(chunk[0][:1].upper() + chunk[0][1:] + " " + " ".join(chunk[1:]))
        contents.append(". ".join(s.strip() for s in sentences) + ".")
        subjects.append(" ".join(vocab[w] for w in subj).capitalize())
        kws = [vocab[w] for w in rng.choice(topic_words[t], size=kw_len[i], replace=False)]
        keywords.append(kws + ids[:1])
        idents.append(ids)
        words.append(subj + toks)
    return Corpus(subjects, contents, keywords, types, topic, idents, words, vocab, pools)


@dataclass
class Query:
    text: str
    kind: str
    target: int | None  # the memory an "about"/"ident" query was made from


def make_queries(corpus: Corpus, count: int, seed: int) -> list[Query]:
    rng = np.random.default_rng(seed)
    stops = stop_words()
    vocab = corpus.vocab
    n = len(corpus)
    common = [w for w in vocab if w not in stops][:300]
    p_common = zipf_p(len(common))
    holders = [i for i in range(n) if corpus.idents[i]]
    kinds = rng.choice(list(QUERY_KINDS), size=count, p=list(QUERY_KINDS.values()))
    out = []
    for kind in kinds:
        length = int(rng.integers(4, 11))
        target = None
        if kind == "about" or (kind == "ident" and not holders):
            kind = "about"
            target = int(rng.integers(0, n))
            own = [
                w
                for w in (corpus.subjects[target] + " " + corpus.contents[target]).lower().split()
                if w.strip(".") not in stops
            ]
            lead = LEADS[int(rng.integers(0, len(LEADS)))].split()
            picked = [own[j].strip(".") for j in rng.choice(len(own), min(len(own), 5), False)]
            words = lead + picked
        elif kind == "topic":
            t = int(rng.integers(0, TOPICS))
            members = np.flatnonzero(corpus.topic == t)
            pick = corpus.keywords[int(rng.choice(members))] if len(members) else []
            words = list(pick[:3]) + list(rng.choice(common, 6, replace=False, p=p_common))
        elif kind == "ident":
            target = int(rng.choice(holders))
            ident = corpus.idents[target][0]
            lead = LEADS[int(rng.integers(0, len(LEADS)))].split()
            words = [*lead[:2], ident, *corpus.subjects[target].lower().split()[:2]]
        else:
            lead = LEADS[int(rng.integers(0, len(LEADS)))].split()
            words = lead + list(rng.choice(common, 8, replace=False, p=p_common))
        words = words[:length] if len(words) > length else words
        if kind == "ident" and corpus.idents[target][0] not in words:
            words[-1] = corpus.idents[target][0]
        out.append(Query(" ".join(words), str(kind), target))
    return out


# --- vectors ----------------------------------------------------------------------------------


def _signature(corpus: Corpus, *parts: Any) -> str:
    h = hashlib.sha256(GENERATOR_VERSION.encode())
    h.update(str((len(corpus), *parts)).encode())
    for i in range(0, len(corpus), max(1, len(corpus) // 50)):
        h.update(corpus.contents[i].encode())
    return h.hexdigest()[:16]


def word_vectors(embedder: Any, corpus: Corpus, cache: Path) -> np.ndarray:
    """The model's vector of every vocabulary word and identifier (rows: vocab, then pools)."""
    path = cache / f"words-{embedder.id.replace(':', '_')}-{GENERATOR_VERSION}.npy"
    texts = corpus.vocab + corpus.pools
    if path.exists():
        vecs = np.load(path)
        if len(vecs) == len(texts):
            return vecs
    vecs = embedder.embed_documents(texts).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def document_vectors(
    embedder: Any, corpus: Corpus, mode: str, cache: Path, log: Any = print
) -> np.ndarray:
    """float32 (n, dim) unit vectors for every memory; see the module docstring for `mode`."""
    if mode == "model":
        from memory_palace.services.memories import document_text

        path = cache / f"docs-{_signature(corpus, embedder.id)}.npy"
        if path.exists():
            return np.load(path)
        log(f"embedding {len(corpus)} memories with {embedder.id} (cached in {path}) ...")
        texts = [document_text(s, c) for s, c in zip(corpus.subjects, corpus.contents, strict=True)]
        out = np.empty((len(texts), embedder.dim), np.float32)
        for start in range(0, len(texts), 2048):
            out[start : start + 2048] = embedder.embed_documents(texts[start : start + 2048])
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
        return out
    wv = word_vectors(embedder, corpus, cache)
    base = len(corpus.vocab)
    pool_row = {ident: base + j for j, ident in enumerate(corpus.pools)}
    out = np.empty((len(corpus), wv.shape[1]), np.float32)
    for i, ws in enumerate(corpus.words):
        rows = ws + [pool_row[x] for x in corpus.idents[i]]
        out[i] = wv[rows].sum(axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def edges_for(corpus: Corpus, seed: int = 11) -> list[tuple[int, int, str, float, bool]]:
    """~1.5 edges per memory, between memories of one topic (what auto-linking makes), a
    quarter of them deliberate links. Rows are (source row, target row, type, strength, auto)."""
    rng = np.random.default_rng(seed)
    n = len(corpus)
    by_topic: dict[int, np.ndarray] = {
        int(t): np.flatnonzero(corpus.topic == t) for t in np.unique(corpus.topic)
    }
    out, seen = [], set()
    for i in range(n):
        members = by_topic[int(corpus.topic[i])]
        for _ in range(int(rng.poisson(1.5))):
            j = int(members[rng.integers(0, len(members))])
            if j == i or (i, j) in seen or (j, i) in seen:
                continue
            seen.add((i, j))
            auto = bool(rng.random() < 0.75)
            out.append(
                (i, j, "similar_to" if auto else "relates_to", float(rng.uniform(0.7, 1)), auto)
            )
    return out


# --- PostgreSQL binary COPY -------------------------------------------------------------------


def copy_binary(rows: Any, kinds: list[str]) -> io.BytesIO:
    """A COPY ... (FORMAT binary) stream; kinds: int8, int4, float8, bool, text, vector."""
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    nf = struct.pack(">h", len(kinds))
    for row in rows:
        parts.append(nf)
        for kind, value in zip(kinds, row, strict=True):
            if value is None:
                parts.append(b"\xff\xff\xff\xff")
            elif kind == "int8":
                parts.append(struct.pack(">iq", 8, value))
            elif kind == "int4":
                parts.append(struct.pack(">ii", 4, value))
            elif kind == "float8":
                parts.append(struct.pack(">id", 8, value))
            elif kind == "bool":
                parts.append(struct.pack(">i?", 1, value))
            elif kind == "text":
                b = value.encode()
                parts.append(struct.pack(">i", len(b)) + b)
            elif kind == "vector":
                b = np.asarray(value, ">f4").tobytes()
                parts.append(struct.pack(">ihh", 4 + len(b), len(value), 0) + b)
            else:
                raise ValueError(kind)
    parts.append(struct.pack(">h", -1))
    return io.BytesIO(b"".join(parts))
