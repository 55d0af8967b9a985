"""The migration, step by step, from a plan (plan.py): either a dry run (check every row,
write nothing) or a run: check every row and refuse bad ones unless told to skip them, create
the target, copy table by table, build the vector index, move the id sequences, verify. Both
return a report (a dict).
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

from ..db import schema
from ..db.engine import Database, get_database
from ..db.errors import translate_db_errors
from ..db.postgres import HNSW_INDEX, pg_connect
from ..db.tables import BY_NAME, EXPORTED, Table
from ..db.urls import mask_url
from ..errors import Conflict, InvalidParams
from ..services.messages import FLOOR_KEY
from . import target
from .copy import Moved, Stage, pipelined
from .layouts import Source
from .plan import DEFAULT_BATCH, DEFAULT_SAMPLE, Options, Plan, check_urls, make_plan
from .rows import TSV_CANDIDATE, BadRow, BadRows, BadRowsFound, Checks, read
from .verify import checksum, count_present


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
        floor = plan.src.meta(FLOOR_KEY)
        if floor is not None:  # as transfer's import: the copied deliveries do not wake again
            cur.execute(
                "INSERT INTO palace_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (FLOOR_KEY, floor),
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

    Expected failures raise MemoryPalaceError subclasses (driver errors are mapped at the
    db/errors.py boundary): InvalidParams (arguments, the source file, BadRowsFound), Conflict
    (embedding dimensions, a target that holds rows), BackendUnavailable, PermissionDenied.
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
