"""Tool parameter annotations. A tool is a service function: its keyword-only parameters, their
types, defaults and `Annotated[..., P(...)]` descriptions are the tool's schema (`tools.py`
derives the JSON Schema from them), so each parameter is declared exactly once.

    def recent(db: Database, *, limit: Annotated[int, P("How many.", minimum=1)] = 20): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

MAX_INT64 = 2**63 - 1


@dataclass(frozen=True)
class P:
    """Description and bounds of one tool parameter (JSON Schema keywords)."""

    description: str
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description}
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
        ):
            if value is not None:
                out[key] = value
        return out


# Parameters several tools share, declared once.
Project = Annotated[
    str | list[str] | None,
    P(
        "Project filter: a string matches memories in that project; a list matches memories in "
        "any of them."
    ),
]
MemoryType = Annotated[str | None, P("Only this type; '*' is a wildcard, e.g. 'code*'.")]
ByInstance = Annotated[str | None, P("Only memories written by this instance.")]
IncludeArchived = Annotated[bool, P("Include archived memories.")]
GraphMode = Annotated[Literal["summary", "full"], P("Graph context format.")]
Direction = Annotated[Literal["outgoing", "incoming", "both"], P("Edge direction for traversal.")]
DetailLevel = Annotated[Literal["summary", "verbose"], P("Memory detail.")]
DryRun = Annotated[bool, P("Only report what would change.")]
OccurredAt = Annotated[
    str | None,
    P("When it happened (ISO 8601, e.g. 2026-03-14 or 2026-03-14T15:09Z); default: when stored."),
]
MAX_TTL_SECONDS = 100 * 365 * 86400
TtlSeconds = Annotated[
    int | None, P("Expire this many seconds from now.", minimum=1, maximum=MAX_TTL_SECONDS)
]
ExpiresAt = Annotated[str | None, P("Expire at this time (ISO 8601).")]
Since = Annotated[
    str | None,
    P("Only memories that happened at or after this time (ISO 8601; occurred_at, else stored)."),
]
Until = Annotated[str | None, P("Only memories that happened before this time (ISO 8601).")]

__all__ = [
    "MAX_INT64",
    "MAX_TTL_SECONDS",
    "ByInstance",
    "DetailLevel",
    "Direction",
    "DryRun",
    "ExpiresAt",
    "GraphMode",
    "IncludeArchived",
    "MemoryType",
    "OccurredAt",
    "P",
    "Project",
    "Since",
    "TtlSeconds",
    "Until",
]
