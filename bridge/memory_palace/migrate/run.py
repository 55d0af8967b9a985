"""The migration, step by step: plan (what the source and the target hold, which vector
dimension rows must have), then either a dry run (check every row, write nothing) or a run:
check every row and refuse bad ones unless told to skip them, create the target, copy table by
table, build the vector index, move the id sequences, verify. Both return a report (a dict).
"""

from __future__ import annotations

import os
import sys
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from ..config import type_from_url
from ..db import schema
from ..db.engine import Database, get_database
from ..db.errors import translate_db_errors
from ..db.postgres import HNSW_INDEX, pg_connect
from ..db.tables import BY_NAME, EXPORTED, Table
from ..db.urls import mask_url, sqlite_path
from ..errors import BackendUnavailable, ConfigError, Conflict, InvalidParams
from . import target
from .copy import Moved, Stage, pipelined
from .layouts import LAYOUTS, Source
from .rows import TSV_CANDIDATE, BadRow, BadRows, BadRowsFound, Checks, read
from .verify import checksum, count_present

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


@dataclass
class TableCopy:
    table: Table
    source: int  # rows the source holds for it
    skipped: int = 0  # bad rows left out
    inserted: int = 0
    present: int = 0
    conflicts: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    keys: list[Any] = field(default_factory=list)  # of every row copied
    samples: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present == self.source - self.skipped and not self.conflicts


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


def make_plan(src: Source, target_url: str, dry_run: bool) -> Plan:
    counts = {t.name: src.count(t) for t in EXPORTED}
    report = _base_report(src, target_url, counts)
    report["dry_run"] = dry_run
    conn = state = None
    try:
        conn, exists = target.connect(target_url)
        state = target.read_state(conn, exists)
    except BackendUnavailable as exc:
        if not dry_run:
            raise
        report["target_state"] = f"unreachable: {exc.message}"
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


def _progress(total: int, enabled: bool | None, what: str) -> Any:
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total,
        desc=what,
        unit=" rows",
        unit_scale=True,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def scan(plan: Plan, checks: Checks, opts: Options) -> None:
    """Read and check every source row; bad ones go to `checks.bad`."""
    bar = _progress(sum(plan.counts.values()), opts.progress, "checking")
    try:
        for table in EXPORTED:
            for _rows, seen in read(plan.src, table, checks, opts.batch_size):
                bar.update(seen)
    finally:
        bar.close()


def _target_state(plan: Plan) -> str:
    state = plan.state
    if state is None:
        return str(plan.report.get("target_state"))
    if not state.exists:
        return "missing: it will be created"
    if plan.resuming:
        return "holds an interrupted run from this source: a run resumes it"
    return "has rows: --force is needed" if state.has_rows else "empty: ready"


def check_only(plan: Plan, opts: Options) -> dict[str, Any]:
    """Check every row and the target; write nothing."""
    bad = BadRows()
    checks = plan.checks(bad)
    scan(plan, checks, opts)
    report = plan.report
    report["target_state"] = _target_state(plan)
    if plan.state is not None and plan.state.exists:
        report["target_rows"] = plan.state.rows
    report["bad_rows"] = [b.to_dict() for b in bad.rows]
    report["skip_bad_rows"] = opts.skip_bad_rows
    if checks.unchecked_tsv:
        report["notes"].append(
            f"{checks.unchecked_tsv} memories hold more than {TSV_CANDIDATE} bytes of text; "
            "whether their keyword index fits PostgreSQL's limit is checked once the target "
            "server is reachable"
        )
    report["ok"] = plan.state is not None and (not bad.rows or opts.skip_bad_rows)
    return report


def _check_target_free(plan: Plan, force: bool) -> None:
    state = plan.state
    if state is not None and state.has_rows and not (force or plan.resuming):
        raise Conflict(
            f"the target {mask_url(plan.target_url)} already holds rows ({state.rows}). "
            "Re-run with --force to copy into it anyway: rows whose ids exist are kept, the "
            "rest are added."
        )


def _prepare_target(plan: Plan, default_dim: int) -> Database:
    db = get_database(plan.target_url)  # creates the database and enables pgvector when missing
    schema.migrate(db, plan.dim or default_dim)
    return db


def _claim(conn: Any, plan: Plan) -> None:
    """Mark the target as being filled from this source (a re-run resumes without --force)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO palace_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (target.STATE_KEY, str(plan.src.path)),
        )
        cur.execute("SELECT count(*) FROM memories")
        if cur.fetchone()[0] == 0 and plan.counts["memories"]:
            # Building the HNSW index once after the copy is far faster than per row.
            cur.execute("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
    conn.commit()


def _sample_positions(count: int, sample: int) -> list[int]:
    """Positions, among the rows copied, of the rows whose checksum is compared."""
    if count <= 0 or sample <= 0:
        return []
    if count <= sample:
        return list(range(count))
    step = count / sample
    return sorted({int(i * step) for i in range(sample)})


def _copy_table(
    conn: Any, plan: Plan, table: Table, checks: Checks, opts: Options, bar: Any
) -> TableCopy:
    copy = TableCopy(table, source=plan.counts[table.name])
    wanted = _sample_positions(copy.source, opts.sample)
    key_of = itemgetter(*(table.names.index(k) for k in table.key))
    stage = Stage(conn, table)
    stage.prepare()
    started = time.perf_counter()
    for rows, payload, seen in pipelined(read(plan.src, table, checks, opts.batch_size), table):
        moved = stage.move(rows, payload) if rows else Moved()
        if moved.refused:
            for row, why in moved.refused:
                key = key_of(row)
                checks.bad.add(BadRow(table.name, key, f"PostgreSQL refused it: {why}"), key)
            refused = {id(row) for row, _ in moved.refused}
            rows = [row for row in rows if id(row) not in refused]
        start = len(copy.keys)
        copy.keys.extend(map(key_of, rows))
        first, last = bisect_left(wanted, start), bisect_left(wanted, len(copy.keys))
        copy.samples.extend(rows[p - start] for p in wanted[first:last])
        copy.inserted += moved.inserted
        copy.conflicts += moved.conflicts
        bar.update(seen)
    copy.skipped = checks.bad.count(table.name)
    copy.seconds = time.perf_counter() - started
    return copy


def copy_tables(conn: Any, plan: Plan, checks: Checks, opts: Options) -> list[TableCopy]:
    bar = _progress(sum(plan.counts.values()), opts.progress, "copying")
    try:
        copies = []
        for table in EXPORTED:
            bar.set_description(table.name)
            copies.append(_copy_table(conn, plan, table, checks, opts, bar))
        return copies
    finally:
        bar.close()


def finish(conn: Any, db: Database) -> float:
    """Build the vector index and move the id sequences past the copied ids; seconds taken."""
    started = time.perf_counter()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'")
        # pgvector >= 0.6 builds HNSW in parallel; the setting is ignored where unsupported.
        cur.execute(
            "SET max_parallel_maintenance_workers = %s",
            (max(1, min(4, (os.cpu_count() or 2) - 1)),),
        )
        cur.execute(HNSW_INDEX)
    with db.write() as c:
        db.backend.reset_sequences(c, [t.name for t in EXPORTED if t.serial])
    return time.perf_counter() - started


def verify(conn: Any, copies: list[TableCopy]) -> dict[str, dict[str, Any]]:
    """Count the copied rows in the target and compare the samples; on success the target is
    no longer marked as being filled."""
    with conn.cursor() as cur:
        for copy in copies:
            copy.present = count_present(cur, copy.table, copy.keys)
        checks = {c.table.name: checksum(cur, c.table, c.samples) for c in copies}
        if all(c.ok for c in copies) and all(c["ok"] for c in checks.values()):
            cur.execute("DELETE FROM palace_meta WHERE key = %s", (target.STATE_KEY,))
    return checks


@contextmanager
def bad_rows_file(plan: Plan, opts: Options) -> Iterator[tuple[IO[bytes] | None, Path | None]]:
    """The JSONL report of skipped rows (only with --skip-bad-rows); removed when empty."""
    if not opts.skip_bad_rows:
        yield None, None
        return
    path = opts.bad_rows_file or plan.src.path.with_name(f"{plan.src.path.stem}-bad-rows.jsonl")
    try:
        fh = open(path, "wb")  # noqa: SIM115 - held open while rows are found
    except OSError as exc:
        raise InvalidParams(
            f"cannot write the bad-row report {path}: {exc.strerror}; pass --bad-rows-file "
            "with a writable path"
        ) from exc
    try:
        yield fh, path
    finally:
        fh.close()
        if path.stat().st_size == 0:
            path.unlink()


def _run_report(
    plan: Plan,
    copies: list[TableCopy],
    checks: dict[str, dict[str, Any]],
    bad: BadRows,
    seconds: dict[str, float],
) -> dict[str, Any]:
    memories = next(c for c in copies if c.table.name == "memories")
    copied = sum(c.source - c.skipped for c in copies)
    tables = {
        c.table.name: {
            "source": c.source,
            "skipped": c.skipped,
            "inserted": c.inserted,
            "present": c.present,
            "conflicts": c.conflicts,
            "ok": c.ok,
            "rows_per_s": round(c.source / c.seconds) if c.seconds else None,
        }
        for c in copies
    }
    ok = all(c.ok for c in copies) and all(c["ok"] for c in checks.values())
    copy_s = seconds["copy_seconds"]
    return {
        **plan.report,
        "tables": tables,
        "checksums": checks,
        "bad_rows": [b.to_dict() for b in bad.rows],
        "ok": ok,
        **{k: round(v, 3) for k, v in seconds.items()},
        "rows_per_s": round(copied / copy_s) if copy_s else None,
        "memories_per_s": round(memories.source / memories.seconds) if memories.seconds else None,
    }


def run(plan: Plan, opts: Options) -> dict[str, Any]:
    """Check, copy, index, verify. Raises BadRowsFound before writing anything when the source
    holds bad rows and opts.skip_bad_rows is off."""
    started = time.perf_counter()
    _check_target_free(plan, opts.force)
    if not opts.skip_bad_rows:
        found = BadRows()
        scan(plan, plan.checks(found), opts)
        if found.rows:
            raise BadRowsFound.before_copy(found.rows)
    check_seconds = time.perf_counter() - started
    db = _prepare_target(plan, opts.default_dim)
    with bad_rows_file(plan, opts) as (out, path):
        bad = BadRows(out, strict=not opts.skip_bad_rows)
        conn = pg_connect(plan.target_url, autocommit=False)
        try:
            _claim(conn, plan)
            copy_started = time.perf_counter()
            copies = copy_tables(conn, plan, plan.checks(bad), opts)
            copy_seconds = time.perf_counter() - copy_started
            index_seconds = finish(conn, db)
            checks = verify(conn, copies)
        finally:
            conn.close()
    seconds = {
        "check_seconds": check_seconds,
        "copy_seconds": copy_seconds,
        "index_seconds": index_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    report = _run_report(plan, copies, checks, bad, seconds)
    report.update(resumed=plan.resuming, forced=opts.force)
    report["bad_rows_file"] = str(path) if bad.rows and path else None
    return report


def migrate(
    source_url: str,
    target_url: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    force: bool = False,
    dry_run: bool = False,
    embedding_model: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    progress: bool | None = None,
    default_dim: int = 384,
    skip_bad_rows: bool = False,
    bad_rows_file: Path | None = None,
) -> dict[str, Any]:
    """Copy `source_url` (SQLite) into `target_url` (PostgreSQL) and verify. Returns a report;
    report["ok"] is True only when every copied row is present and the sample matches.

    Raises MemoryPalaceError subclasses only: InvalidParams (bad arguments or source,
    BadRowsFound), Conflict (dimensions, a target holding rows), BackendUnavailable,
    PermissionDenied, DatabaseMissing.
    """
    opts = Options(batch_size, force, sample, progress, default_dim, skip_bad_rows, bad_rows_file)
    path = check_urls(source_url, target_url, batch_size)
    src = Source(path, embedding_model)
    try:
        with translate_db_errors():
            plan = make_plan(src, target_url, dry_run)
            try:
                return check_only(plan, opts) if dry_run else run(plan, opts)
            finally:
                if plan.conn is not None:
                    plan.conn.close()
    finally:
        src.close()


def source_rows(src: Source, table: str, batch_size: int = DEFAULT_BATCH) -> Iterator[list[Any]]:
    """Decoded rows of a target table (in its column order), bad ones left out; no target
    needed (e.g. for a row-by-row baseline)."""
    checks = Checks(BadRows(), dim=None, tsv=None)
    for rows, _ in read(src, BY_NAME[table], checks, batch_size):
        yield rows
