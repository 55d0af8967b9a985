"""Relative dates in a recall query ("what did we decide last week"): a phrase becomes an event
time range [since, until) in UTC days, and leaves the query text. Only the phrases below are
understood; anything else is left alone.

    today, yesterday, N days ago, last|past N days|weeks, this|last week (Monday first),
    this|last month, this|last year, in|during <month> [<year>] (the latest one not in the future)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH = "|".join([*MONTHS, *(m[:3] for m in MONTHS if m != "may")])
_NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
_N = r"(\d{1,3}|" + "|".join(_NUMBER) + ")"
PATTERN = re.compile(
    r"\b(?:"
    r"(?P<today>today)|(?P<yesterday>yesterday)"
    rf"|(?P<ago>{_N})\s+days?\s+ago"
    rf"|(?:last|past)\s+(?P<span>{_N})\s+(?P<unit>days?|weeks?)"
    r"|(?P<rel>this|last)\s+(?P<period>week|month|year)"
    rf"|(?:in|during)\s+(?P<month>{_MONTH})\b\.?(?:\s+(?P<year>\d{{4}}))?"
    r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Span:
    phrase: str
    since: datetime
    until: datetime
    query: str  # the query without the phrase


def _count(text: str) -> int:
    return _NUMBER.get(text.lower()) or int(text)


def _month_start(year: int, month: int) -> datetime:
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)


def find(query: str, now: datetime) -> Span | None:
    """The first relative date phrase in `query` as a range, or None."""
    m = PATTERN.search(query)
    if m is None:
        return None
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    one = timedelta(days=1)
    g = m.groupdict()
    if g["today"]:
        since, until = day, day + one
    elif g["yesterday"]:
        since, until = day - one, day
    elif g["ago"]:
        since = day - _count(g["ago"]) * one
        until = since + one
    elif g["span"]:
        days = _count(g["span"]) * (7 if g["unit"].lower().startswith("week") else 1)
        since, until = day - days * one, day + one
    elif g["rel"]:
        last = g["rel"].lower() == "last"
        period = g["period"].lower()
        if period == "week":
            since = day - day.weekday() * one - (7 * one if last else timedelta(0))
            until = since + 7 * one
        elif period == "month":
            since = _month_start(day.year, day.month - (1 if last else 0))
            until = _month_start(since.year, since.month + 1)
        else:
            since = datetime(day.year - (1 if last else 0), 1, 1, tzinfo=UTC)
            until = datetime(since.year + 1, 1, 1, tzinfo=UTC)
    else:
        name = g["month"].lower()
        month = next(i for i, full in enumerate(MONTHS, 1) if full.startswith(name[:3]))
        year = int(g["year"]) if g["year"] else day.year - (1 if month > day.month else 0)
        since = _month_start(year, month)
        until = _month_start(year, month + 1)
    rest = " ".join((query[: m.start()] + " " + query[m.end() :]).split()).strip(" ?.,;:!")
    return Span(m.group(0), since, until, rest or query)


__all__ = ["Span", "find"]
