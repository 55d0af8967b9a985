"""Memory filters as SQL for both backends, with the same semantics as the in-process vector index.

project: a string matches memories whose projects contain it; a list matches any overlap.
memory_type: exact, or a pattern where '*' is a wildcard. subject: case-insensitive substring.
Names are compared exactly: '_' and '%' in values never act as wildcards.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..db.engine import Database


@dataclass(frozen=True)
class Filters:
    instance_id: str | None = None
    projects: tuple[str, ...] | None = None  # any-of
    memory_type: str | None = None
    subject: str | None = None
    foundational_only: bool = False
    include_archived: bool = False

    @classmethod
    def make(
        cls,
        instance_id: str | None = None,
        project: str | list[str] | None = None,
        memory_type: str | None = None,
        subject: str | None = None,
        min_foundational: bool | None = None,
        include_archived: bool = False,
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
        )


def like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def type_pattern(memory_type: str) -> str | None:
    """LIKE pattern for a '*' wildcard type, or None for an exact type."""
    if "*" not in memory_type:
        return None
    return "%".join(like_escape(part) for part in memory_type.split("*"))


def glob_pattern(memory_type: str) -> str:
    """SQLite GLOB pattern for a '*' wildcard type. GLOB, unlike SQLite's LIKE, is
    case-sensitive, like PostgreSQL's LIKE and the vector index; '?' and '[' are literal."""
    special = {"?": "[?]", "[": "[[]"}
    return "*".join("".join(special.get(c, c) for c in part) for part in memory_type.split("*"))


def type_matcher(memory_type: str) -> Callable[[str], bool]:
    """In-process twin of the SQL type filter: only '*' is a wildcard, case-sensitive."""
    rx = re.compile(".*".join(re.escape(p) for p in memory_type.split("*")), re.DOTALL)
    return lambda value: rx.fullmatch(value) is not None


def projects_sql(
    db: Database, projects: tuple[str, ...], params: dict[str, Any], col: str = "memories.projects"
) -> str:
    if db.is_postgres:
        params["f_projects"] = list(projects)
        return f"{col} && CAST(:f_projects AS TEXT[])"
    names = []
    for i, value in enumerate(projects):
        params[f"f_project{i}"] = value
        names.append(f":f_project{i}")
    if not names:
        return "0 = 1"
    return f"EXISTS (SELECT 1 FROM json_each({col}) WHERE json_each.value IN ({', '.join(names)}))"


def where(db: Database, f: Filters, alias: str = "memories") -> tuple[str, dict[str, Any]]:
    """(SQL condition, bind params) for the filters on table alias `alias`."""
    params: dict[str, Any] = {}
    parts: list[str] = []
    if not f.include_archived:
        parts.append(f"{alias}.is_archived = :f_false")
        params["f_false"] = False
    if f.instance_id:
        parts.append(f"{alias}.instance_id = :f_instance")
        params["f_instance"] = f.instance_id
    if f.projects is not None:
        parts.append(projects_sql(db, f.projects, params, f"{alias}.projects"))
    if f.memory_type:
        pattern = type_pattern(f.memory_type)
        if pattern is None:
            parts.append(f"{alias}.memory_type = :f_type")
            params["f_type"] = f.memory_type
        elif db.is_postgres:
            parts.append(f"{alias}.memory_type LIKE :f_type ESCAPE '\\'")
            params["f_type"] = pattern
        else:
            parts.append(f"{alias}.memory_type GLOB :f_type")
            params["f_type"] = glob_pattern(f.memory_type)
    if f.subject:
        op = "ILIKE" if db.is_postgres else "LIKE"
        parts.append(f"{alias}.subject {op} :f_subject ESCAPE '\\'")
        params["f_subject"] = f"%{like_escape(f.subject)}%"
    if f.foundational_only:
        parts.append(f"{alias}.foundational = :f_true")
        params["f_true"] = True
    return (" AND ".join(parts) or "1 = 1"), params
