"""Keyword search text: tokens, stop words, stems, the fields a memory is searched by, and the
one BM25 formula both backends score with (SQLite over its in-process postings, PostgreSQL over
the GIN index's candidates)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import Stemmer

TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# PostgreSQL's 'english' configuration drops these; without them a question like "what does
# Alice like to drink" would match every memory containing "to".
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "do",
        "does",
        "did",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


_STEMMER = Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _STEMMER.stemWord(word)


def terms(text: str) -> list[str]:
    """Lowercased, stemmed words without stop words (the BM25 vocabulary)."""
    return [stem(w) for w in TOKEN_RE.findall(text.lower()) if w not in STOP_WORDS]


def memory_fields(
    subject: str | None, content: str, keywords: Iterable[str] | None
) -> tuple[str, str, str]:
    """The fields keyword search reads, in the order of recall.field_weights' `fields`."""
    return (subject or "", content or "", " ".join(keywords or ()))


def weighted_terms(
    fields: tuple[str, ...], weights: tuple[float, ...]
) -> tuple[Counter[str], float]:
    """A document's term counts and length (as `terms` counts them), each field's terms
    counted `weight` times."""
    counts: Counter[str] = Counter()
    length = 0.0
    for text, weight in zip(fields, weights, strict=True):
        for word, n in Counter(TOKEN_RE.findall(text.lower())).items():
            if word not in STOP_WORDS:
                counts[stem(word)] += weight * n
                length += weight * n
    return counts, length


def inverse_frequency(n: float, df: float) -> float:
    """BM25's (Lucene's) IDF of a term that `df` of `n` documents hold."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def tf_weight(tf: float, k1: float) -> float:
    """BM25's weight of `tf` occurrences in a document of average length (one weighs 1)."""
    return tf * (k1 + 1) / (tf + k1)


def bm25_coverage(
    k1: float,
    b: float,
    total: int,
    avg_length: float,
    lengths: np.ndarray,
    postings: list[tuple[np.ndarray, np.ndarray, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 (Robertson/Lucene form) as coverage in [0, 1]: each document's score over the
    most any document could score for the query (every term, tf -> infinity), so a keyword
    match counts the same in every query.

    `postings` holds, per query term, (documents, weighted term frequencies, document
    frequency) among the `total` documents searched; `lengths[d]` is document d's weighted
    length. A term no searched document holds is left out (it neither scores nor lowers
    coverage). Returns (documents, coverage) for every document with a positive score.
    """
    held = [(rows, tf, df) for rows, tf, df in postings if df > 0 and len(rows)]
    if not held:
        return np.zeros(0, np.int64), np.zeros(0)
    n = max([total] + [df for _, _, df in held])
    idf = [inverse_frequency(n, df) for _, _, df in held]
    best = sum(idf) * (k1 + 1)
    if best <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    avg = avg_length or 1.0
    rows = np.concatenate([r for r, _, _ in held]).astype(np.int64, copy=False)
    tf = np.concatenate([t for _, t, _ in held]).astype(np.float64, copy=False)
    weight = np.concatenate([np.full(len(r), w) for (r, _, _), w in zip(held, idf, strict=True)])
    norm = k1 * (1 - b + b * lengths[rows] / avg)
    part = weight * tf * (k1 + 1) / (tf + norm)
    docs, where = np.unique(rows, return_inverse=True)
    score = np.bincount(where, weights=part, minlength=len(docs))
    keep = score > 0
    return docs[keep], score[keep] / best
