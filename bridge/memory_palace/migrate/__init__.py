"""memory-palace-sqlite-to-pg: copy a SQLite palace (this project's layout or the original
Memory Palace's v2/v3 layouts) into PostgreSQL with batched binary COPY, then verify it.

    layouts.py  the source: detect the layout, read it as parts of the target tables
    rows.py     decode values by column kind, apply defaults, find bad rows
    target.py   the target before writing: its state, the exact keyword-index check
    copy.py     binary COPY by column kind; staging table and batches
    verify.py   counts and sample checksums after the copy
    plan.py     options, URL checks, what the source and target hold, the vector dimension
    run.py      dry run, run (named steps), report
    cli.py      the command line

The tables, their columns, kinds, keys and defaults come from `db/tables.py`.
"""

from .cli import main
from .copy import ENCODERS, encode_copy
from .layouts import LAYOUTS, Source
from .plan import DEFAULT_BATCH
from .rows import BadRow, BadRowsFound
from .run import migrate, source_rows

__all__ = [
    "DEFAULT_BATCH",
    "ENCODERS",
    "LAYOUTS",
    "BadRow",
    "BadRowsFound",
    "Source",
    "encode_copy",
    "main",
    "migrate",
    "source_rows",
]
