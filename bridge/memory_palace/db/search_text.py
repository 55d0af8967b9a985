"""Query text for keyword search: tokens, stop words and the FTS5 MATCH expression."""

from __future__ import annotations

import re

TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# PostgreSQL's 'english' configuration drops these; FTS5 has no stop words, so a question like
# "what does Alice like to drink" would otherwise match every memory containing "to".
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


def fts5_query(query: str) -> str | None:
    """An FTS5 MATCH expression: every word quoted (no operator injection), OR-ed."""
    tokens = list(dict.fromkeys(TOKEN_RE.findall(query)))
    content = [t for t in tokens if t.lower() not in STOP_WORDS] or tokens
    return " OR ".join(f'"{t}"' for t in content) or None
