"""Keyword relevance computed here, identically for every backend: BM25 over subject, content
and keywords with IDF from the memories a query is searched in (its filter), and exact matches
of identifier-like tokens (OPS-4417, E2881, db-replica-18.fra.example.internal, KW200).

The backend's full-text index only finds the candidates (memories holding any query word);
scoring happens here, so SQLite and PostgreSQL rank the same way and the statistics are those
of the filtered set: a speaker's name that starts every turn of a conversation is worth ~0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

from ..db.search_text import STOP_WORDS, TOKEN_RE

#: A span joined by -_.:/@# (hostnames, ticket ids, paths, dates) or a word with a digit.
ID_RE = re.compile(r"[A-Za-z0-9]+(?:[-_.:/@#][A-Za-z0-9]+)+|\w+")
JOINERS = "-_.:/@#"
_STEMMER = Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _STEMMER.stemWord(word)


def terms(text: str) -> list[str]:
    """Lowercased, stemmed words without stop words (the BM25 vocabulary)."""
    return [stem(w) for w in (t.lower() for t in TOKEN_RE.findall(text)) if w not in STOP_WORDS]


def identifiers(query: str) -> list[str]:
    """Identifier-like spans of a query, lowercased: a word holding letters and digits
    (E2881, KW200) or a joined span holding a digit, an underscore or capitals (OPS-4417,
    ERR_CONN_RESET, cache-20.fra.example.internal). Plain words and numbers are not ids."""
    out = []
    for span in ID_RE.findall(query):
        letters = any(c.isalpha() for c in span)
        digits = any(c.isdigit() for c in span)
        joined = any(c in JOINERS for c in span)
        if (letters and digits) or (joined and (digits or "_" in span or span.isupper())):
            out.append(span.lower())
    return list(dict.fromkeys(out))


def identifier_match(ids: list[str], text: str) -> float:
    """Fraction of the query's identifiers found whole in `text` (OPS-4417 does not match
    OPS-44170 or WEB-4417; KW200 does not match KW2000)."""
    if not ids:
        return 0.0
    low = text.lower()
    found = sum(
        1 for i in ids if re.search(r"(?<![\w])" + re.escape(i) + r"(?![\w]|[-.][\w])", low)
    )
    return found / len(ids)


@dataclass(frozen=True)
class Document:
    """A memory as keyword search sees it: weighted term counts and length."""

    counts: Counter[str]
    length: float
    text: str  # subject, content and keywords, for identifier matching

    @classmethod
    def make(
        cls,
        subject: str | None,
        content: str,
        keywords: Iterable[str] | None,
        weights: tuple[float, float, float],
    ) -> Document:
        counts: Counter[str] = Counter()
        length = 0.0
        fields = (subject or "", content, " ".join(keywords or ()))
        for text, weight in zip(fields, weights, strict=True):
            toks = terms(text)
            length += weight * len(toks)
            for t in toks:
                counts[t] += weight
        return cls(counts, length, "\n".join(fields))


@dataclass(frozen=True)
class Bm25:
    """BM25 parameters (Robertson/Lucene form)."""

    k1: float = 1.2
    b: float = 0.4

    def score(
        self,
        query: list[str],
        docs: dict[int, Document],
        total: int,
        df: dict[str, int] | None = None,
    ) -> dict[int, float]:
        """Coverage in [0, 1] per document: its BM25 over the most any document could score
        for this query (every term, tf -> infinity), so scores mean the same across queries.

        `total` is the number of memories searched (the filter's size); document frequencies
        are counted in `docs`, which must hold every searched memory that has a query term,
        unless `df` gives them (when the candidates were capped).
        """
        unique = list(dict.fromkeys(query))
        if not docs or not unique:
            return {}
        avg = sum(d.length for d in docs.values()) / len(docs) or 1.0
        n = max(total, len(docs))
        idf = {}
        for t in unique:
            seen = sum(1 for d in docs.values() if t in d.counts)
            count = max(seen, (df or {}).get(t, 0))
            if seen:
                n = max(n, count)
                idf[t] = math.log(1 + (n - count + 0.5) / (count + 0.5))
        best = sum(idf.values()) * (self.k1 + 1)
        if best <= 0:
            return {}
        out = {}
        for mid, d in docs.items():
            norm = self.k1 * (1 - self.b + self.b * d.length / avg)
            s = sum(
                w * d.counts[t] * (self.k1 + 1) / (d.counts[t] + norm)
                for t, w in idf.items()
                if t in d.counts
            )
            if s > 0:
                out[mid] = s / best
        return out
