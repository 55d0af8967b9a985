"""`memory-palace`: the command line for people. Human-readable output, `--json` for scripts.

Each command parses its flags, calls one tool through Palace.call (or one service function),
and formats the result. No business logic lives here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .config import load_settings
from .errors import InvalidParams, MemoryPalaceError
from .palace import Palace
from .services.maintenance import CHECKS

EPILOG = """examples:
  memory-palace init
  memory-palace remember "The staging deploy fails with ERR_CONN_RESET" -s "staging" -p ops
  memory-palace recall "why does the deploy break?"
  memory-palace recall ERR_CONN_RESET --project ops --json
  memory-palace stats --database work
  memory-palace reembed --missing-only --execute
  memory-palace doctor

Configuration lives in $MEMORY_PALACE_DATA_DIR/config.json (default ~/.memory-palace).
MEMORY_PALACE_DATABASE_URL overrides the default database's URL."""


def _palace(args: argparse.Namespace) -> Palace:
    return Palace(load_settings(args.data_dir))


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


def _card(m: dict[str, Any]) -> str:
    flags = []
    if m.get("foundational"):
        flags.append("foundational")
    if m.get("is_archived"):
        flags.append("archived")
    if m.get("found_by"):
        flags.append(f"{m['found_by']} {m.get('score', 0):.3f}")
    head = f"#{m['id']} [{m.get('memory_type')}] {m.get('subject') or ''}".rstrip()
    projects = ",".join(m.get("projects") or [])
    line = f"{head}  ({projects}{'; ' + '; '.join(flags) if flags else ''})"
    content = m.get("content")
    return line + (f"\n    {content}" if content else "")


def _show_memories(result: dict[str, Any]) -> None:
    memories = result.get("memories") or ([result["memory"]] if "memory" in result else [])
    if not memories:
        print("no memories found")
    for m in memories:
        print(_card(m))
    if result.get("not_found"):
        print(f"not found: {', '.join(map(str, result['not_found']))}")
    if result.get("total_available") is not None:
        print(f"({result['count']} of {result['total_available']})")
    ctx = result.get("graph_context")
    if ctx and ctx.get("nodes"):
        print("graph:")
        for node, label in ctx["nodes"].items():
            print(f"  #{node}: {label}")


def _show_set(r: dict[str, Any]) -> None:
    if r.get("duplicate_of"):
        print(f"already remembered as #{r['duplicate_of']} (nothing written)")
        return
    print(f"remembered #{r['id']}" + ("" if r.get("embedded") else " (no embedding)"))
    for key in ("warning", "instance_warning"):
        if r.get(key):
            print(f"warning: {r[key]}")
    for link in r.get("links_created", []):
        print(f"  linked -> #{link['target']} {link.get('target_subject') or ''} ({link['score']})")
    for s in r.get("suggested_links", []):
        print(f"  similar: #{s['target']} {s.get('target_subject') or ''} ({s['score']})")
    if r.get("superseded"):
        print(f"  supersedes #{r['superseded']} (archived)")
    for c in r.get("possible_conflicts", []):
        print(f"  possible conflict: #{c['id']} {c.get('subject') or ''} ({c['reason']})")
    if r.get("possible_conflicts"):
        print("  (replace one: --supersedes ID or --on-conflict supersede; or edit it)")


def _show_dict(r: dict[str, Any], indent: str = "") -> None:
    for key, value in r.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _show_dict(value, indent + "  ")
        elif isinstance(value, list):
            print(
                f"{indent}{key}: {len(value)}"
                if value and isinstance(value[0], dict)
                else f"{indent}{key}: {', '.join(map(str, value)) or '-'}"
            )
            for item in value if value and isinstance(value[0], dict) else []:
                print(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(f"{indent}{key}: {value}")


def _tool(
    name: str,
    params: Callable[[argparse.Namespace], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        p = {k: v for k, v in params(args).items() if v is not None}
        if args.database:
            p["database"] = args.database
        result = _palace(args).call(name, p)
        _print_json(result) if args.json else show(result)
        return 0

    return run


def _reembed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="mem", file=sys.stderr, disable=not sys.stderr.isatty())
        bar.update(done - bar.n)

    params = {
        "older_than_days": args.older_than_days,
        "memory_ids": args.ids,
        "project": args.project,
        "all_memories": args.all,
        "missing_only": args.missing_only,
        "batch_size": args.batch_size,
        "dry_run": not args.execute,
        "database": args.database,
    }
    result = _palace(args).call(
        "memory_reembed", {k: v for k, v in params.items() if v is not None}, progress=progress
    )
    if bar is not None:
        bar.close()
    _print_json(result) if args.json else _show_dict(result)
    return 0


def _init(args: argparse.Namespace) -> int:
    settings = load_settings(args.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.config_path.exists():
        settings.config_path.write_bytes(orjson.dumps({}) + b"\n")
    palace = Palace(settings)
    db = palace.database(args.database)
    result = {
        "data_dir": str(settings.data_dir),
        "config": str(settings.config_path),
        "database": db.masked_url,
        "backend": db.kind,
        "embedder": palace.embedder.id,
    }
    if args.json:
        _print_json(result)
    else:
        print(
            f"Memory Palace is ready.\n  data dir: {result['data_dir']}\n"
            f"  config:   {result['config']}\n  database: {result['database']} ({db.kind})\n"
            f"  embedder: {result['embedder']}"
        )
    return 0


def _config(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .db.urls import mask_url

    settings = load_settings(args.data_dir)  # raises ConfigError naming file and key
    if args.action == "check":
        where = settings.config_path if settings.config_path.exists() else "built-in defaults"
        print(f"config OK: {where}")
        return 0
    shown = asdict(settings)
    shown["databases"] = {
        n: {"type": d.type, "url": mask_url(d.url)} for n, d in settings.databases.items()
    }
    shown["instance_routes"] = {
        n: {**r, "token": "***"} if "token" in r else r for n, r in settings.instance_routes.items()
    }
    shown["auto_link"] = settings.auto_link.model_dump()
    _print_json({k: str(v) if isinstance(v, Path) else v for k, v in shown.items()})
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(
        load_settings(args.data_dir),
        database=args.database,
        expected_processes=args.processes,
        as_json=args.json,
    )


def _export(args: argparse.Namespace) -> int:
    from .transfer import export_jsonl

    result = export_jsonl(_palace(args), args.database, args.file)
    if args.file == "-":  # stdout carries the JSONL: the summary goes to stderr
        print(orjson.dumps(result).decode(), file=sys.stderr)
    else:
        _print_json(result) if args.json else _show_dict(result)
    return 0


def _import(args: argparse.Namespace) -> int:
    from .transfer import import_jsonl

    result = import_jsonl(_palace(args), args.database, args.file, force=args.force)
    _print_json(result) if args.json else _show_dict(result)
    return 0


def _call(args: argparse.Namespace) -> int:
    try:
        params = orjson.loads(args.params)
    except orjson.JSONDecodeError as exc:
        raise InvalidParams(
            f'PARAMS is not valid JSON ({exc}); pass an object such as \'{{"query": "deploy"}}\''
        ) from None
    if not isinstance(params, dict):
        raise InvalidParams("PARAMS must be a JSON object, e.g. '{\"limit\": 5}'")
    for item in args.param or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidParams(f"--param {item!r} must look like KEY=VALUE")
        try:
            params[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            params[key] = raw  # not JSON: the text itself
    if args.database:
        params["database"] = args.database
    _print_json(_palace(args).call(args.tool, params))
    return 0


def _tools(args: argparse.Namespace) -> int:
    tools = _palace(args).registry.for_surface("cli")
    if args.json:
        _print_json(
            [
                {"name": t.name, "description": t.description, "parameters": t.schema()}
                for t in tools
            ]
        )
        return 0
    width = max(len(t.name) for t in tools)
    for t in tools:
        print(f"{t.name.ljust(width)}  {t.description}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from .services import access

    if args.database:
        raise InvalidParams(
            "tokens live in the default database (the one servers check them against); "
            "drop --database"
        )
    palace = _palace(args)
    db, caller = palace.database(), palace.caller
    if args.action == "create":
        result: Any = access.create_token(db, caller, args.instance, args.role, args.acts_as)
    elif args.action == "list":
        result = access.list_tokens(db, caller)
    else:
        result = access.revoke_token(db, caller, args.token_id)
    if args.json:
        _print_json(result)
    elif args.action == "create":
        print(result["token"])  # alone on stdout, so $(memory-palace token create x) works
        print(
            f"token {result['token_id']} for {result['instance']} ({result['role']}"
            + (f", may act as {', '.join(result['acts_as'])}" if result["acts_as"] else "")
            + f"): {result['note']}. Use it as MEMORY_PALACE_TOKEN.",
            file=sys.stderr,
        )
    elif args.action == "list":
        if not result:
            print("no tokens (identities are unverified: anyone may name any instance)")
        for t in result:
            state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "active"
            extra = f" acts as {','.join(t['acts_as'])}" if t["acts_as"] else ""
            print(
                f"{t['token_id']}  {t['instance']} ({t['role']}{extra})  {state}, "
                f"created {t['created_at']}, last used {t['last_used_at'] or 'never'}"
            )
    else:
        print(f"revoked token {result['revoked']}")
    return 0


def _projects(values: list[str] | None) -> str | list[str] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# -- remember and the lifecycle commands (edit, history, forget, unarchive) ------------------

Cmd = Callable[[str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]


def _read_text(path: str) -> str:
    """A file's text ('-': stdin), or InvalidParams naming the file."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParams(
            f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _content(a: argparse.Namespace, required: bool) -> str | None:
    if a.file:
        return _read_text(a.file)
    if a.content == "-":
        return _read_text("-")
    if a.content is None and required:
        raise InvalidParams(
            "remember: give the memory text, '-' to read it from stdin, --file PATH or --jsonl"
        )
    return a.content


def _set_params(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "subject": a.subject,
        "memory_type": a.type,
        "project": _projects(a.project),
        "keywords": a.keyword,
        "tags": a.tag,
        "foundational": a.foundational or None,
        "instance_id": a.instance,
        "supersedes_id": a.supersedes,
        "visibility": a.visibility,
        "ttl_seconds": a.ttl,
        "expires_at": a.expires_at,
        "occurred_at": a.occurred_at,
        "on_conflict": a.on_conflict,
    }


def _remember(args: argparse.Namespace) -> int:
    if args.jsonl:
        return _remember_jsonl(args)
    run = _tool("memory_set", lambda a: {**_set_params(a), "content": _content(a, True)}, _show_set)
    return run(args)


def _remember_jsonl(args: argparse.Namespace) -> int:
    """One memory_set per line of a JSON-lines file (each line: memory_set parameters; the
    command's flags fill what a line leaves out), with a progress bar on a terminal."""
    from tqdm import tqdm

    lines = [ln for ln in _read_text(args.jsonl).splitlines() if ln.strip()]
    defaults = {k: v for k, v in _set_params(args).items() if v is not None}
    if args.database:
        defaults["database"] = args.database
    palace = _palace(args)
    summary: dict[str, Any] = {"stored": 0, "duplicates": 0, "failed": [], "ids": []}
    with tqdm(
        total=len(lines), unit="mem", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        for lineno, line in enumerate(lines, start=1):
            try:
                item = orjson.loads(line)
                if not isinstance(item, dict):
                    raise InvalidParams("not a JSON object of memory_set parameters")
                result = palace.call("memory_set", {**defaults, **item})
            except (orjson.JSONDecodeError, MemoryPalaceError) as exc:
                message = exc.message if isinstance(exc, MemoryPalaceError) else str(exc)
                summary["failed"].append({"line": lineno, "error": message})
            else:
                summary["duplicates" if result.get("duplicate_of") else "stored"] += 1
                summary["ids"].append(result["id"])
            bar.update(1)
    if args.json:
        _print_json(summary)
    else:
        print(
            f"stored {summary['stored']}, duplicates {summary['duplicates']}, "
            f"failed {len(summary['failed'])} (of {len(lines)} lines)"
        )
        for f in summary["failed"]:
            print(f"  line {f['line']}: {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _add_remember(cmd: Cmd) -> None:
    p = cmd(
        "remember", "Store a memory (text, '-' for stdin, --file, or --jsonl for many).", _remember
    )
    p.add_argument("content", nargs="?", help="the memory text; '-' reads it from stdin")
    p.add_argument("--file", "-f", metavar="PATH", help="read the memory text from a file")
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help="store one memory per line: JSON objects of memory_set parameters ('-': stdin)",
    )
    p.add_argument("--subject", "-s", help="short title")
    p.add_argument("--type", "-t", help="memory type (default: fact)")
    p.add_argument("--project", "-p", action="append", help="project (repeat for several)")
    p.add_argument("--keyword", "-k", action="append", help="keyword (repeatable)")
    p.add_argument("--tag", action="append", help="tag (repeatable)")
    p.add_argument("--foundational", action="store_true", help="never archived, never stale")
    p.add_argument("--instance", help="writer instance id")
    p.add_argument("--supersedes", type=int, metavar="ID", help="archive this memory, link it")
    p.add_argument("--visibility", help="shared, private or a scope name")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="expire after this many seconds")
    p.add_argument("--expires-at", metavar="TIME", help="expire at this ISO 8601 time")
    p.add_argument("--occurred-at", metavar="TIME", help="when it happened (ISO 8601)")
    p.add_argument(
        "--on-conflict",
        choices=["report", "supersede"],
        help="supersede: replace the memory it contradicts (default: report it)",
    )


def _add_time_bounds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="happened at or after (ISO 8601)")
    p.add_argument("--until", metavar="TIME", help="happened before (ISO 8601)")


def _show_history(r: dict[str, Any]) -> None:
    for v in r["versions"]:
        changed = f" changed {', '.join(v['changed'])}" if v["changed"] else " created"
        why = f" ({v['reason']})" if v.get("reason") else ""
        print(f"v{v['version']} {v['at']} by {v['by']}:{changed}{why}")
        print(f"    [{v['memory_type']}] {v['subject'] or ''}: {v['content']}")
    for label, key in (("replaces", "replaces"), ("replaced by", "replaced_by")):
        for m in r[key]:
            print(f"{label} #{m['id']} {m['subject'] or ''}")


def _edit_params(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "memory_id": a.id,
        "content": _content(a, False),
        "subject": a.subject,
        "memory_type": a.type,
        "project": _projects(a.project),
        "keywords": a.keyword,
        "tags": a.tag,
        "foundational": a.foundational,
        "visibility": a.visibility,
        "ttl_seconds": a.ttl,
        "expires_at": a.expires_at,
        "occurred_at": a.occurred_at,
        "reason": a.reason,
    }


def _add_lifecycle_commands(cmd: Cmd) -> None:
    p = cmd(
        "edit",
        "Change a memory in place (re-embedded; the old values stay in its history).",
        _tool("memory_update", _edit_params, _show_dict),
    )
    p.add_argument("id", type=int, metavar="ID", help="the memory to change")
    p.add_argument("content", nargs="?", help="new text; '-' reads it from stdin")
    p.add_argument("--file", "-f", metavar="PATH", help="read the new text from a file")
    p.add_argument("--subject", "-s", help="new title ('' removes it)")
    p.add_argument("--type", "-t", help="new memory type")
    p.add_argument("--project", "-p", action="append", help="new projects (repeatable)")
    p.add_argument("--keyword", "-k", action="append", help="new keywords (repeatable)")
    p.add_argument("--tag", action="append", help="new tags (repeatable)")
    p.add_argument("--foundational", action=argparse.BooleanOptionalAction, help="mark or unmark")
    p.add_argument("--visibility", help="shared, private or a scope name")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="expire after N seconds (0: never)")
    p.add_argument("--expires-at", metavar="TIME", help="expire at this time ('': never)")
    p.add_argument("--occurred-at", metavar="TIME", help="when it happened (ISO 8601)")
    p.add_argument("--reason", help="why; kept in the history")

    p = cmd(
        "history",
        "Show a memory's versions and what it replaced or was replaced by.",
        _tool("memory_history", lambda a: {"memory_id": a.id}, _show_history),
    )
    p.add_argument("id", type=int, metavar="ID", help="the memory")

    p = cmd(
        "forget",
        "Delete memories for good, by ids or filters (dry run unless --execute).",
        _tool(
            "memory_forget",
            lambda a: {
                "memory_ids": a.ids or None,
                "instance_id": a.instance,
                "project": _projects(a.project),
                "memory_type": a.type,
                "older_than_days": a.older_than_days,
                "dry_run": not a.execute,
            },
            _show_dict,
        ),
    )
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="memories to delete")
    p.add_argument("--instance", help="only memories written by this instance")
    p.add_argument("--project", "-p", action="append", help="project filter (repeat: any of)")
    p.add_argument("--type", "-t", help="memory type filter")
    p.add_argument("--older-than-days", type=int, help="only memories older than this")
    p.add_argument("--execute", action="store_true", help="really delete (default: dry run)")

    p = cmd(
        "unarchive",
        "Restore archived memories.",
        _tool("memory_unarchive", lambda a: {"memory_ids": a.ids}, _show_dict),
    )
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="memories to restore")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default, unless the text already says it or there is
    none worth showing (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def _global_flags(p: argparse.ArgumentParser, *, before: bool) -> None:
    """The flags every command takes, accepted before the command (`before`, with real
    defaults) and after it (defaults suppressed, so they never reset a value given before)."""

    def default(value: Any) -> Any:
        return value if before else argparse.SUPPRESS

    p.add_argument(
        "--database",
        "-d",
        metavar="NAME",
        default=default(None),
        help="named database (memory domain); default: config default_database",
    )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default(None),
        help="config/data directory (default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log to stderr"
    )


def _add_reading_commands(cmd: Cmd) -> None:
    """recall, get, recent, stats."""
    p = cmd(
        "recall",
        "Search memories by meaning and exact words.",
        _tool(
            "memory_recall",
            lambda a: {
                "query": a.query,
                "project": _projects(a.project),
                "memory_type": a.type,
                "instance_id": a.instance,
                "limit": a.limit,
                "include_archived": a.include_archived or None,
                "include_graph": not a.no_graph,
                "since": a.since,
                "until": a.until,
                "dates": a.dates or None,
            },
            _show_memories,
        ),
    )
    _add_time_bounds(p)
    p.add_argument(
        "--dates", action="store_true", help="read 'yesterday', 'last week', 'in March' as dates"
    )
    p.add_argument("query", help="what to look for")
    p.add_argument("--project", "-p", action="append", help="project filter (repeat: any of)")
    p.add_argument("--type", "-t", help="memory type ('*' wildcard)")
    p.add_argument("--instance", help="only memories of this instance")
    p.add_argument("--limit", "-n", type=int, default=10, help="max results (default 10)")
    p.add_argument("--include-archived", action="store_true", help="also search archived memories")
    p.add_argument("--no-graph", action="store_true", help="skip graph context")

    p = cmd(
        "get",
        "Show memories by id.",
        _tool(
            "memory_get",
            lambda a: {
                "memory_ids": a.ids[0] if len(a.ids) == 1 else a.ids,
                "traverse": a.traverse or None,
                "graph_depth": a.depth,
            },
            _show_memories,
        ),
    )
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids")
    p.add_argument("--traverse", action="store_true", help="walk the graph from each id")
    p.add_argument("--depth", type=int, default=1, help="graph depth (default 1)")

    p = cmd(
        "recent",
        "List the newest memories.",
        _tool(
            "memory_recent",
            lambda a: {
                "limit": a.limit,
                "project": _projects(a.project),
                "memory_type": a.type,
                "verbose": a.verbose_cards or None,
                "since": a.since,
                "until": a.until,
            },
            _show_memories,
        ),
    )
    _add_time_bounds(p)
    p.add_argument("--limit", "-n", type=int, default=20, help="how many memories")
    p.add_argument("--project", "-p", action="append", help="project filter (repeat: any of)")
    p.add_argument("--type", "-t", help="memory type ('*' wildcard)")
    p.add_argument("--full", dest="verbose_cards", action="store_true", help="full memories")

    cmd(
        "stats",
        "Counts by type, instance and project.",
        _tool("memory_stats", lambda a: {}, _show_dict),
    )


def _add_maintenance_commands(cmd: Cmd) -> None:
    """archive, audit, reembed, doctor, call, tools, token, export, import."""
    p = cmd(
        "archive",
        "Archive memories (dry run unless --execute).",
        _tool(
            "memory_archive",
            lambda a: {
                "memory_ids": a.ids or None,
                "older_than_days": a.older_than_days,
                "max_access_count": a.max_access,
                "memory_type": a.type,
                "project": _projects(a.project),
                "reason": a.reason,
                "dry_run": not a.execute,
            },
            _show_dict,
        ),
    )
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="memory ids to archive")
    p.add_argument(
        "--older-than-days", type=int, metavar="N", help="only memories created over N days ago"
    )
    p.add_argument("--max-access", type=int, help="only memories accessed at most N times")
    p.add_argument("--type", "-t", help="only this memory type ('*' wildcard)")
    p.add_argument("--project", "-p", action="append", help="only these projects (repeatable)")
    p.add_argument("--reason", help="why (kept with each archived memory)")
    p.add_argument("--execute", action="store_true", help="really archive (default: dry run)")

    p = cmd(
        "audit",
        "Find duplicates, stale memories, orphan edges and more.",
        _tool(
            "memory_audit",
            lambda a: {"checks": a.check, "project": a.project, "limit_per_category": a.limit},
            _show_dict,
        ),
    )
    p.add_argument(
        "--check",
        action="append",
        choices=CHECKS,
        metavar="CHECK",
        help=f"run only this check (repeatable; default: all): {', '.join(CHECKS)}",
    )
    p.add_argument("--project", "-p", help="only this project")
    p.add_argument("--limit", type=int, default=20, help="findings per check")

    p = cmd(
        "reembed",
        "Re-embed memories with the configured embedder (dry run unless --execute).",
        _reembed,
    )
    p.add_argument("--all", action="store_true", help="every memory (to change embedder)")
    p.add_argument(
        "--missing-only",
        action="store_true",
        help="only memories without a vector from the current embedder",
    )
    p.add_argument("--ids", type=int, nargs="+", metavar="ID", help="only these memories")
    p.add_argument("--project", "-p", help="only this project")
    p.add_argument(
        "--older-than-days", type=int, metavar="N", help="only memories created over N days ago"
    )
    p.add_argument("--batch-size", type=int, default=50, help="memories embedded per batch")
    p.add_argument("--execute", action="store_true", help="really re-embed (default: dry run)")

    p = cmd("doctor", "Check the database setup and print fixes (exit 1 on failure).", _doctor)
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="processes expected to share the server, for the max_connections check "
        "(default: configured instances, at least 2)",
    )

    p = cmd("call", "Call any tool by name with JSON parameters; prints its JSON result.", _call)
    p.add_argument("tool", help="tool name (see `memory-palace tools`)")
    p.add_argument(
        "params", nargs="?", default="{}", help="the parameters as one JSON object (default: {})"
    )
    p.add_argument(
        "--param",
        "-P",
        action="append",
        metavar="KEY=VALUE",
        help="one parameter; VALUE is read as JSON when it parses, else as text (repeatable)",
    )
    cmd("tools", "List every tool with its description (--json: with parameter schemas).", _tools)

    p = cmd("export", "Write memories, edges and messages to a JSONL file.", _export)
    p.add_argument("file", help="output .jsonl path ('-' for stdout)")
    p = cmd("import", "Load a JSONL export into a database.", _import)
    p.add_argument("file", help="input .jsonl path ('-' for stdin)")
    p.add_argument("--force", action="store_true", help="import even if the target has rows")


def _add_graph_commands(cmd: Cmd) -> None:
    """link, unlink: typed edges between memories."""
    p = cmd(
        "link",
        "Link two memories with a typed edge (supersedes, relates_to, refines, ...).",
        _tool(
            "memory_link",
            lambda a: {
                "source_id": a.source,
                "target_id": a.target,
                "relation_type": a.relation,
                "strength": a.strength,
                "bidirectional": a.both_ways or None,
                "archive_old": a.archive_old or None,
            },
            _show_dict,
        ),
    )
    p.add_argument("source", type=int, metavar="SOURCE_ID", help="the memory the edge starts at")
    p.add_argument("relation", metavar="TYPE", help="edge type, e.g. relates_to or supersedes")
    p.add_argument("target", type=int, metavar="TARGET_ID", help="the memory the edge ends at")
    p.add_argument("--strength", type=float, default=1.0, help="0-1")
    p.add_argument("--both-ways", action="store_true", help="the edge holds in both directions")
    p.add_argument("--archive-old", action="store_true", help="with supersedes: archive the target")
    p = cmd(
        "unlink",
        "Remove the edges from one memory to another (all types, or --type).",
        _tool(
            "memory_unlink",
            lambda a: {"source_id": a.source, "target_id": a.target, "relation_type": a.type},
            _show_dict,
        ),
    )
    p.add_argument("source", type=int, metavar="SOURCE_ID", help="the memory the edges start at")
    p.add_argument("target", type=int, metavar="TARGET_ID", help="the memory the edges end at")
    p.add_argument("--type", "-t", help="only edges of this type")


def _add_token_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """token create | list | revoke (a command with actions, each taking the common flags)."""
    help_ = (
        "Create, list or revoke the tokens that bind an agent to its instance (admin; they "
        "live in the default database)."
    )
    p = sub.add_parser("token", help=help_, description=help_, formatter_class=HelpFormatter)
    p.set_defaults(func=_token)
    token = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = token.add_parser(
        "create",
        parents=[common],
        formatter_class=HelpFormatter,
        help="a new token for INSTANCE, printed once",
        description="Create a token for INSTANCE; it is printed once and stored only as a "
        "salted scrypt hash. Servers given it (MEMORY_PALACE_TOKEN) act as INSTANCE.",
    )
    t.add_argument("instance", help="the instance the token stands for")
    t.add_argument(
        "--role",
        choices=["reader", "writer", "admin"],
        default="writer",
        help="reader: read its scopes; writer: also write; admin: also tokens, scopes and "
        "database tools (default: writer)",
    )
    t.add_argument(
        "--acts-as",
        action="append",
        metavar="INSTANCE",
        help="another instance this token may act for (a gateway serving several agents; "
        "repeatable)",
    )
    token.add_parser(
        "list",
        parents=[common],
        help="every token (never the secrets)",
        description="List tokens.",
        formatter_class=HelpFormatter,
    )
    t = token.add_parser(
        "revoke",
        parents=[common],
        help="stop a token working",
        description="Revoke a token.",
        formatter_class=HelpFormatter,
    )
    t.add_argument("token_id", help="the token's id (see `token list`)")


# -- message: send, read and follow messages (self-contained: parser and printing) ---------

MESSAGE_ACTIONS = {  # subcommand -> the message tool's action
    "send": "send",
    "get": "get",
    "read": "mark_read",
    "ack": "ack",
    "status": "status",
    "thread": "thread",
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
}


def _message_params(args: argparse.Namespace) -> dict[str, Any]:
    action = MESSAGE_ACTIONS[args.action]
    p: dict[str, Any] = {"action": action, "instance_id": args.instance}
    if args.action == "send":
        p.update(
            from_instance=args.instance,
            instance_id=None,
            to_instance=args.to if args.to != "-" else None,
            content=args.content,
            subject=args.subject,
            message_type=args.type,
            channel=args.channel,
            priority=args.priority,
            ttl_seconds=args.ttl,
            reply_to=args.reply_to,
            thread_id=args.thread,
            ack_required=args.ack or None,
            ack_within_s=args.ack_within,
            await_reply_s=args.await_reply,
        )
    elif args.action == "get":
        p.update(unread_only=not args.all, channel=args.channel, limit=args.limit)
    elif args.action in ("read", "ack", "thread"):
        p["message_id"] = args.id
    elif args.action == "status":
        p.update(message_id=args.id, thread_id=args.thread)
    else:
        p.update(
            channel=args.channel,
            project=args.project,
            memory_type=args.memory_type,
            keywords=args.keyword,
        )
    if args.database:
        p["database"] = args.database
    return {k: v for k, v in p.items() if v is not None}


def _message_line(m: dict[str, Any]) -> str:
    flags = [] if m.get("read", True) or m.get("mine") else ["unread"]
    if m.get("reply_to"):
        flags.append(f"reply to #{m['reply_to']}")
    if m.get("thread_id"):
        flags.append(f"thread #{m['thread_id']}")
    if m.get("ack_required"):
        flags.append(f"ack by {m['ack_due_at']}" if m.get("ack_due_at") else "ack required")
    to = m["to_instance"] + (f" #{m['channel']}" if m.get("channel") else "")
    head = f"#{m['id']} {m['created_at'][:19]} {m['from_instance']} -> {to} [{m['message_type']}]"
    subject = f" {m['subject']!r}" if m.get("subject") else ""
    tail = f"  ({'; '.join(flags)})" if flags else ""
    return f"{head}{subject}{tail}\n    {m['content']}"


def _show_message(action: str, r: dict[str, Any]) -> None:
    if action in ("get", "thread"):
        if not r["messages"]:
            print("no messages")
        for m in r["messages"]:
            print(_message_line(m))
    elif action == "send":
        extra = f" in thread #{r['thread_id']}" if r.get("thread_id") else ""
        print(f"sent #{r['id']} to {r['to_instance']}{extra} ({r['delivery_status']})")
        if r.get("instance_warning"):
            print(f"warning: {r['instance_warning']}")
        if r.get("timed_out"):
            print(f"no reply within {r['waited_s']} s")
        elif r.get("reply"):
            print("reply:\n" + _message_line(r["reply"]))
    elif action == "status":
        for m in r["messages"]:
            due = f", ack due {m['ack_due_at']}" if m.get("ack_due_at") else ""
            print(f"#{m['message_id']} to {m['to_instance']}: {m['delivery_status']}{due}")
            for who in m["recipients"]:
                parts = [
                    f"{k} {who[k + '_at']}"
                    for k in ("delivered", "read", "acked")
                    if who.get(k + "_at")
                ]
                late = "  OVERDUE" if who.get("overdue") else ""
                print(f"  {who['instance']}: {', '.join(parts) or 'pending'}{late}")
    else:
        _show_dict(r)


def _message(args: argparse.Namespace) -> int:
    result = _palace(args).call("message", _message_params(args))
    _print_json(result) if args.json else _show_message(MESSAGE_ACTIONS[args.action], result)
    return 0


def _add_message_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    help_ = "Send, read, acknowledge and follow messages between agent instances."
    p = sub.add_parser("message", help=help_, description=help_)
    p.set_defaults(func=_message)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    me = argparse.ArgumentParser(add_help=False)
    me.add_argument(
        "--instance", "-i", help="act as this instance (default: the configured instance_id)"
    )

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, parents=[common, me], help=help_, description=help_, formatter_class=HelpFormatter
        )

    a = action("send", "Send a message (to an instance, 'all', or '-' with --channel).")
    a.add_argument("to", help="recipient instance, 'all', or '-' for a channel-only message")
    a.add_argument("content", help="the message text")
    a.add_argument("--subject", "-s", help="short subject (shown in the wake; never the text)")
    a.add_argument("--type", "-t", default="message", help="handoff, status, question, fyi, ...")
    a.add_argument("--channel", "-c", help="post on this channel too")
    a.add_argument("--priority", type=int, default=0, help="0-10")
    a.add_argument("--ttl", type=int, metavar="S", help="expire after S seconds")
    a.add_argument("--reply-to", type=int, metavar="ID", help="answer message ID (its thread)")
    a.add_argument("--thread", type=int, metavar="ID", help="post in the thread of message ID")
    a.add_argument("--ack", action="store_true", help="recipients should acknowledge")
    a.add_argument("--ack-within", type=int, metavar="S", help="acknowledge within S seconds")
    a.add_argument(
        "--await-reply", type=int, metavar="S", help="wait up to S seconds for the first reply"
    )
    a = action("get", "List your messages (unread unless --all), highest priority first.")
    a.add_argument("--all", action="store_true", help="read ones too")
    a.add_argument("--channel", "-c", help="only this channel")
    a.add_argument("--limit", "-n", type=int, default=50, help="how many messages")
    for name, what in (
        ("read", "Mark a message read."),
        ("ack", "Acknowledge a message (marks it read)."),
        ("thread", "Show the thread of a message, oldest first."),
    ):
        action(name, what).add_argument("id", type=int, metavar="ID", help="the message")
    a = action("status", "Delivered, read and acked times of a message you sent (or a thread).")
    a.add_argument("id", type=int, nargs="?", metavar="ID", help="the message")
    a.add_argument("--thread", type=int, metavar="ID", help="every message you sent in a thread")
    for name, what in (
        ("subscribe", "Receive a channel's messages, or be woken by matching new memories."),
        ("unsubscribe", "Stop receiving a channel's messages, or drop a memory subscription."),
    ):
        a = action(name, what)
        a.add_argument("channel", nargs="?", help="the channel name (or give a memory filter)")
        a.add_argument(
            "--project", "-p", action="append", help="memory filter: this project (repeatable)"
        )
        a.add_argument("--memory-type", help="memory filter: this type ('*' wildcards)")
        a.add_argument(
            "--keyword", "-k", action="append", help="memory filter: any of these (repeatable)"
        )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, before=False)
    parser = argparse.ArgumentParser(
        prog="memory-palace",
        description="Shared, persistent memory for AI agents.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memory-palace {__version__}")
    _global_flags(parser, before=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(
        name: str, help_: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, parents=[common], help=help_, description=help_, formatter_class=HelpFormatter
        )
        p.set_defaults(func=func)
        return p

    cmd("init", "Create the data directory, config.json and the database schema.", _init)
    p = cmd(
        "config",
        "Check config.json against its schema, or show the effective settings "
        "(passwords and tokens masked).",
        _config,
    )
    p.add_argument(
        "action",
        choices=["check", "show"],
        help="check: validate; show: print the effective settings as JSON",
    )

    _add_remember(cmd)

    _add_reading_commands(cmd)
    _add_lifecycle_commands(cmd)
    _add_graph_commands(cmd)
    _add_maintenance_commands(cmd)
    _add_token_command(sub, common)
    _add_message_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return args.func(args)
    except MemoryPalaceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: quiet, the shell's convention for SIGINT
        return 130


if __name__ == "__main__":
    sys.exit(main())
