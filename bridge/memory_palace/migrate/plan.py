"""What a migration starts from: the options, the checked URLs, and the plan: what the source
and the target hold (read without writing anything) and the vector dimension every embedding
must have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import type_from_url
from ..db.tables import EXPORTED
from ..db.urls import mask_url, sqlite_path
from ..errors import BackendUnavailable, ConfigError, Conflict, InvalidParams
from . import target
from .layouts import LAYOUTS, Source
from .rows import BadRows, Checks

DEFAULT_BATCH = 5000
DEFAULT_SAMPLE = 500


@dataclass(frozen=True)
class Options:
    batch_size: int = DEFAULT_BATCH
    force: bool = False
    sample: int = DEFAULT_SAMPLE
    progress: bool | None = None  # None: when stderr is a terminal
    default_dim: int = 384  # the vector column's size when no embedding says otherwise
    skip_bad_rows: bool = False
    bad_rows_file: Path | None = None  # default: next to the source


@dataclass
class Plan:
    src: Source
    target_url: str
    counts: dict[str, int]  # source rows per target table
    state: target.TargetState | None  # None: unreachable (a dry run goes on)
    conn: Any  # autocommit connection for checks (None when unreachable)
    dim: int | None  # the vector dimension embeddings must have
    report: dict[str, Any]

    def checks(self, bad: BadRows) -> Checks:
        tsv = target.KeywordIndexCheck(self.conn) if self.conn is not None else None
        return Checks(bad, self.dim, tsv)

    @property
    def resuming(self) -> bool:
        return self.state is not None and self.state.in_progress == str(self.src.path)


def _kind(url: str) -> str | None:
    try:
        return type_from_url(url)
    except ConfigError:
        return None


def check_urls(source_url: str, target_url: str, batch_size: int) -> Path:
    """The source file, once both URLs and the batch size are usable."""
    if _kind(source_url) != "sqlite":
        raise InvalidParams(
            "--source must be a SQLite file or URL (sqlite:///path/memories.db), got "
            f"{mask_url(source_url)}"
        )
    if _kind(target_url) != "postgres":
        raise InvalidParams(
            "--target must be a PostgreSQL URL (postgresql://user:pass@host:5432/memory_palace)"
            f", got {mask_url(target_url)}"
        )
    if batch_size < 1:
        raise InvalidParams("--batch-size must be at least 1")
    return sqlite_path(source_url).resolve()


def expected_dim(dims: dict[int, int], stored: int | None, target_name: str) -> int | None:
    """The dimension embeddings must have: the target's, else the source's most common one.
    Embeddings of another dimension are bad rows; with no basis to choose, a Conflict."""
    listed = ", ".join(f"{d}-d ({n} memories)" for d, n in sorted(dims.items()))
    if stored is not None:
        if dims and stored not in dims:
            raise Conflict(
                f"the source's embeddings are {listed} but the target {target_name} stores "
                f"{stored}-d vectors. Migrate into a new database (--target "
                ".../memory_palace_new), or re-embed the source with the target's model first."
            )
        return stored
    top = max(dims.values(), default=0)
    leaders = [d for d, n in dims.items() if n == top]
    if len(leaders) > 1:
        raise Conflict(
            f"the source holds embeddings of several dimensions: {listed}. pgvector needs "
            "one dimension per column. Re-embed the source with one model first "
            "(memory-palace reembed --all --execute on the SQLite database), then migrate."
        )
    return leaders[0] if leaders else None


def _base_report(src: Source, target_url: str, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "source": str(src.path),
        "target": mask_url(target_url),
        "layout": src.layout,
        "layout_description": LAYOUTS[src.layout],
        "source_rows": counts,
        "skipped_orphans": src.orphans(),
        "notes": [],
    }


def _embedding_note(src: Source, report: dict[str, Any]) -> None:
    if src.layout != "memory-palace" and report["dimension"]:
        model = src.embedding_model or "unknown"
        report["embedding_model"] = model
        report["notes"].append(
            f"embeddings from the original carry embedding_model={model!r}. If that is not the "
            "embedder configured here, run `memory-palace reembed --all --execute` (tool "
            "memory_reembed with all_memories=true, dry_run=false) against the target."
        )


def _open_target(url: str, dry_run: bool, report: dict[str, Any]) -> tuple[Any, Any]:
    """(check connection, TargetState); (None, None) when a dry run cannot reach the server."""
    try:
        conn, exists = target.connect(url)
    except BackendUnavailable as exc:
        if not dry_run:
            raise
        report["target_state"] = f"unreachable: {exc.message}"
        return None, None
    try:
        return conn, target.read_state(conn, exists)
    except BaseException:
        conn.close()
        raise


def make_plan(src: Source, target_url: str, dry_run: bool) -> Plan:
    counts = {t.name: src.count(t) for t in EXPORTED}
    report = _base_report(src, target_url, counts)
    report["dry_run"] = dry_run
    conn, state = _open_target(target_url, dry_run, report)
    try:
        stored = state.stored_dim if state else None
        dim = expected_dim(src.dims(), stored, mask_url(target_url))
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    report["dimension"] = dim
    _embedding_note(src, report)
    return Plan(src, target_url, counts, state, conn, dim, report)
