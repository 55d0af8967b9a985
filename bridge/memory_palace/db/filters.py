"""Memory filters as SQL for either backend, with the same meaning as the in-process vector index.

project: a string matches memories whose projects contain it; a list matches any overlap.
memory_type: exact, or a pattern where '*' is a wildcard. subject: case-insensitive substring.
Names are compared exactly: '_' and '%' in values never act as wildcards.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .values import utcnow

if TYPE_CHECKING:
    from .engine import Database


SHARED, PRIVATE = "shared", "private"


@dataclass(frozen=True)
class Access:
    """Who is reading: they see shared memories, their own private ones, and those of the
    scopes they belong to."""

    viewer: str | None  # None: nobody's private memories (shared and `scopes` only)
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Filters:
    instance_id: str | None = None
    projects: tuple[str, ...] | None = None  # any-of
    memory_type: str | None = None
    subject: str | None = None
    foundational_only: bool = False
    include_archived: bool = False
    access: Access | None = None  # None: no visibility limit (maintenance on every row)
    include_expired: bool = False
    # Event time bounds on coalesce(occurred_at, created_at): since inclusive, until exclusive.
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def make(
        cls,
        instance_id: str | None = None,
        project: str | list[str] | None = None,
        memory_type: str | None = None,
        subject: str | None = None,
        min_foundational: bool | None = None,
        include_archived: bool = False,
        access: Access | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Filters:
        projects = None
        if project is not None:
            projects = (project,) if isinstance(project, str) else tuple(project)
        return cls(
            instance_id or None,
            projects,
            memory_type or None,
            subject or None,
            bool(min_foundational),
            bool(include_archived),
            access,
            since=since,
            until=until,
        )

    @property
    def selective(self) -> bool:
        """True when anything beyond 'not archived' restricts the rows."""
        return bool(
            self.instance_id
            or self.projects is not None
            or self.memory_type
            or self.subject
            or self.foundational_only
            or self.since is not None
            or self.until is not None
        )


def like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def type_matcher(memory_type: str) -> Callable[[str], bool]:
    """In-process twin of the SQL type filter: only '*' is a wildcard, case-sensitive."""
    rx = re.compile(".*".join(re.escape(p) for p in memory_type.split("*")), re.DOTALL)
    return lambda value: rx.fullmatch(value) is not None


def where(db: Database, f: Filters, alias: str = "memories") -> tuple[str, dict[str, Any]]:
    """(SQL condition, bind params) for the filters on table alias `alias`."""
    backend = db.backend
    params: dict[str, Any] = {}
    parts: list[str] = []
    if not f.include_archived:
        parts.append(f"{alias}.is_archived = :f_false")
        params["f_false"] = False
    if f.instance_id:
        parts.append(f"{alias}.instance_id = :f_instance")
        params["f_instance"] = f.instance_id
    if f.projects is not None:
        parts.append(
            backend.strings_any(f"{alias}.projects", list(f.projects), params, "f_project")
        )
    if f.memory_type:
        if "*" in f.memory_type:
            parts.append(
                backend.type_pattern(f"{alias}.memory_type", f.memory_type, params, "f_type")
            )
        else:
            parts.append(f"{alias}.memory_type = :f_type")
            params["f_type"] = f.memory_type
    if f.subject:
        parts.append(backend.contains_folded(f"{alias}.subject", "f_subject"))
        params["f_subject"] = f"%{like_escape(f.subject)}%"
    if f.foundational_only:
        parts.append(f"{alias}.foundational = :f_true")
        params["f_true"] = True
    if f.access is not None:
        parts.append(visible(f.access, params, alias))
    if f.since is not None:
        parts.append(f"coalesce({alias}.occurred_at, {alias}.created_at) >= :f_since")
        params["f_since"] = backend.encode("time", f.since)
    if f.until is not None:
        parts.append(f"coalesce({alias}.occurred_at, {alias}.created_at) < :f_until")
        params["f_until"] = backend.encode("time", f.until)
    if not f.include_expired:
        parts.append(f"({alias}.expires_at IS NULL OR {alias}.expires_at > :f_now)")
        params["f_now"] = backend.encode("time", utcnow())
    return (" AND ".join(parts) or "1 = 1"), params


def visible(access: Access, params: dict[str, Any], alias: str = "memories") -> str:
    """SQL: the memory is visible to `access` (shared, the viewer's own private, or one of
    the viewer's scopes)."""
    cond = f"({alias}.visibility = '{SHARED}'"
    if access.viewer is not None:
        params["f_viewer"] = access.viewer
        cond += f" OR ({alias}.visibility = '{PRIVATE}' AND {alias}.instance_id = :f_viewer)"
    names = []
    for i, scope in enumerate(access.scopes):
        params[f"f_scope{i}"] = scope
        names.append(f":f_scope{i}")
    if names:
        cond += f" OR {alias}.visibility IN ({', '.join(names)})"
    return cond + ")"
