"""Keyword relevance: BM25 coverage over subject, content and keywords with statistics of the
memories a query is searched in (its filter), so a speaker's name that starts every turn of a
conversation is worth ~0, and exact matches of identifier-like tokens (OPS-4417, E2881,
db-replica-18.fra.example.internal, KW200).

Both backends score with the one formula in db/search_text.py (`bm25_coverage`): SQLite over
every filtered memory from in-process postings (db/sqlite_index.py), PostgreSQL over the GIN
index's best candidates (db/postgres.py). Identifiers are matched here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..db.search_text import memory_fields, terms

#: A span joined by -_.:/@# (hostnames, ticket ids, paths, dates) or a word with a digit.
ID_RE = re.compile(r"[A-Za-z0-9]+(?:[-_.:/@#][A-Za-z0-9]+)+|\w+")
JOINERS = "-_.:/@#"
__all__ = ["identifier_match", "identifiers", "memory_text", "terms"]


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


def memory_text(subject: str | None, content: str, keywords: Iterable[str] | None) -> str:
    """What identifier matching reads: subject, content and keywords."""
    return "\n".join(memory_fields(subject, content, keywords))
